"""Length buckets (config key train.length_buckets): cut a batch's padding to a few static widths.

Prompts are left-padded to sampling.max_prompt_length (P) and completions come back from the
sampler padded to sampling.max_new_tokens (T), however short the batch's prompts are and however
early decoding stopped. With buckets on,

    the sampler gets the prompts cut to the batch's longest prompt       (`trim_prompts`)
    the update gets the prompts cut the same way, and the completions cut to the batch's longest
    loss-masked completion                                               (`trim_completions`)

each width rounded UP to one of `bucket_lengths(maximum)`, so the jitted sampler and train step
compile once per bucket (a handful of shapes), not once per batch. The sampler's KV cache holds
P + T slots: a shorter P makes the prefill and every decode step cheaper; the update's forward
and backward run over P + T positions.

Bucket set: ceil(maximum * j / 4) for j = 1..4, each rounded up to a multiple of 8 and capped at
`maximum` (P = 16: {8, 16}; T = 32: {8, 16, 24, 32}; 256: {64, 128, 192, 256}; 1024: {256, 512,
768, 1024}). Why this set:
  - at most 4 widths per axis: at most 4 sampler programs and 4 x 4 train-step programs, in
    practice two or three of each (a batch's longest prompt / completion varies little);
  - rounding up wastes less than a quarter of the maximum (+ 7 for the alignment). Powers of two
    would waste up to half just past a power (a longest completion of 513 of 1024 padded to 1024)
    and add widths (1, 2, 4, ...) too small to be worth a compile;
  - multiples of 8: sequence lengths that tile on accelerators (TPU sublanes, tensor-core shapes);
  - the maximum is always a bucket, so no real token is ever cut.

Exactness: nothing the update computes depends on the cut columns. Prompt positions are
cumsum(mask) - 1 and padded keys are masked out of attention, so dropping left padding changes
neither; a completion column after the last loss-masked column is only ever attended to by later
(masked) columns (causal attention), and every loss and metric reads the mask. Dr. GRPO divides by
`max_completion_length`, passed statically from sampling.max_new_tokens, never by the array's T.
Trimmed and untrimmed updates agree to float round-off (tests/test_buckets.py); the sampler's logits
too, so it draws the same tokens unless round-off flips a near tie (12 quick-start steps at P = T =
64, on vs off: identical completions, losses within 6e-9). Lengths the program
logs or rewards (completion_length, the DAPO overlong penalty, `ended` for
grpo.mask_truncated_completions) are read from the untrimmed sampler output.

Multi-host: every process holds the same host batch (a pure function of the step, rewards
broadcast), so every process picks the same bucket and the global arrays agree in shape.
"""
from __future__ import annotations

import numpy as np

BUCKET_FRACTIONS = 4  # widths ceil(maximum * j / 4), j = 1..4
BUCKET_MULTIPLE = 8  # each rounded up to a multiple of this (then capped at the maximum)


def bucket_lengths(maximum: int) -> tuple[int, ...]:
    """The static widths for an axis of at most `maximum` columns, ascending; the last is `maximum`."""
    if maximum < 1:
        raise ValueError(f"bucket_lengths: maximum must be >= 1, got {maximum}")
    def round_up(x, k):
        return -(-x // k) * k

    widths = {min(maximum, round_up(round_up(maximum * j, BUCKET_FRACTIONS) // BUCKET_FRACTIONS, BUCKET_MULTIPLE))
              for j in range(1, BUCKET_FRACTIONS + 1)}
    return tuple(sorted(widths))


def bucket_length(n: int, maximum: int) -> int:
    """The smallest bucket width >= n (n = 0, an all-padding batch, gets the smallest bucket)."""
    if not 0 <= n <= maximum:
        raise ValueError(f"bucket_length: need 0 <= n <= maximum, got n={n}, maximum={maximum}")
    return next(w for w in bucket_lengths(maximum) if w >= n)


def trim_prompts(tokens: np.ndarray, mask: np.ndarray, maximum: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [N, W] cut to their rightmost bucket_length(longest, maximum) columns
    (`maximum`: the configured P, default W; W itself must be a bucket of it or P, so that the result
    is one of P's buckets even when the input was cut already).

    `longest` counts from the leftmost column where any row has a real token, so no real token is
    cut even if a row were not cleanly left-padded."""
    width = tokens.shape[1]
    used = np.flatnonzero(np.asarray(mask).any(axis=0))
    keep = bucket_length(width - int(used[0]) if used.size else 0, width if maximum is None else maximum)
    return tokens[:, width - keep:], mask[:, width - keep:]


def left_pad(x: np.ndarray, width: int) -> np.ndarray:
    """[N, W] -> [N, width >= W] with zero columns added on the left (prompt tokens: any id will do,
    the mask hides it; prompt mask: 0)."""
    return np.pad(x, ((0, 0), (width - x.shape[1], 0)))


def trim_completions(tokens: np.ndarray, mask: np.ndarray, maximum: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded completions [N, W] cut to their leftmost bucket_length(longest, maximum) columns
    (`maximum`: the configured T, default W), `longest` = 1 + the last column where any row's `mask`
    is nonzero. Pass the mask the update reads (the loss mask): a column after it changes no loss,
    gradient or metric."""
    width = tokens.shape[1]
    used = np.flatnonzero(np.asarray(mask).any(axis=0))
    keep = bucket_length(int(used[-1]) + 1 if used.size else 0, width if maximum is None else maximum)
    return tokens[:, :keep], mask[:, :keep]
