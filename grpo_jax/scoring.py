"""CORE: the one function that scores completions for training (GRPO's policy, old and reference
log-probs, and SFT's targets).

For left-padded prompts [N, P] and completions [N, T], one full forward over concat(prompt,
completion) with mask concat(prompt_mask, ones):

    logits_t = LM head(hidden state at index P + t - 1)        (index i predicts token i + 1)
    logp_t   = log softmax(logits_t / temperature)[completion_t]     (losses.token_logps)
or, with `truncation` (truncation.for_scoring(config): sampling.top_k / top_p / min_p truncating and
sampling.truncated_logps), the log-prob under the truncated, renormalised distribution the sampler drew
from, its kept set K recomputed from these logits (truncation.truncated_token_logps):
    logp_t   = s_t[completion_t] - logsumexp over K(s_t) u {completion_t} of s_t,  s_t = logits_t / temperature
The trainer passes it for the policy and old log-probs (the ratio), not the reference's: the KL stays
on the full tempered distribution, and its policy side is the "full_logps" stat (`full_logps=True`:
the same chunk's log-softmax over all V, with gradient), not the truncated logps: k3 of truncated
policy vs full reference log-probs would be log(kept mass) != 0 even at pi = pi_ref. The entropy
and argmax stats are always of the full tempered distribution.
Cost, per chunk: top-k is lax.top_k and a few V-wide reductions; top-p without top-k sorts the
chunk's [N, Tc, V] logits (a second buffer of that size; with top-k on only the k largest are sorted).

The same positions as the sampler's KV-cache path (positions = cumsum(mask) - 1), and the same
distribution as the log-probs the sampler draws from and reports (sampling's log-prob contract), so
at mu = 1 the importance ratio is exactly 1 by construction. Completion positions after a row's
first EOS are attended to but never scored (the loss masks them), so all-ones keeps positions
contiguous. The hidden states are sliced to the T scored positions before the V-wide LM head matmul.

No [N, T, V]: the final norm + LM head + tempered log-softmax run over chunks of token rows
(`lax.scan` over blocks of the T positions, every chunk holding all N rows, so a chunk stays spread
over the devices that shard N), each chunk under `jax.checkpoint`: the forward keeps one chunk's
logits [N, Tc, V] at a time and the backward recomputes them chunk by chunk (the idea of Liger's
fused linear cross-entropy and of MaxText's vocabulary tiling, by rematerialisation instead of a
hand-written VJP). Peak logits memory is O(chunk x V) instead of O(N x T x V), for one extra LM head
matmul in the backward. When everything fits in one chunk (the default budget at a small vocabulary)
there is no scan and no recompute: the same program as the full-logits path. The per-token entropy
and greedy argmax (metrics, never differentiated) come out of the same chunk loop.
Shared prefix (`group_size` G > 1; train.shared_prefix): GRPO's G completions of a prompt are
consecutive rows with the same prompt, so the prompt half of the forward is the same G times over.
`model.grouped_hidden_states` encodes each prompt once and lets its G completions attend to its keys;
index P-1 (the last prompt position) comes from the prompt stream, P .. P+T-2 from the completions'.
The prompt's share of the layer matmuls, (G-1)/G * P/(P+T), is skipped, for the same numbers.
`completion_logits` (the full [N, T, V]) stays for tests, notebooks and protocol models (an NNX
graphdef has no hidden-state / LM-head split: those are scored from their full logits).
Not jitted: these run inside the trainer's jitted step.
"""
import math

import chex
import jax
import jax.numpy as jnp

from grpo_jax import model as model_lib
from grpo_jax.losses import token_logps
from grpo_jax.truncation import Truncation, truncated_token_logps

# Default chunk: as many token rows as keep one chunk's f32 logits at 2**25 elements (128 MiB):
# 65,536 rows (one chunk, no recompute) at V = 512, 1,024 rows at V = 32,768, 220 at Qwen's 151,936.
LOGITS_BUDGET = 2 ** 25


def _concat(prompt_tokens, prompt_mask, completion_tokens):
    # Shapes only (trace time, nothing in the compiled program).
    chex.assert_rank([prompt_tokens, completion_tokens], 2,
                     custom_message="completion_logits: prompt_tokens [N, P] and completion_tokens [N, T]")
    chex.assert_equal_shape([prompt_tokens, prompt_mask],
                            custom_message="completion_logits: prompt_tokens and prompt_mask must both be [N, P]")
    chex.assert_equal_shape_prefix([prompt_tokens, completion_tokens], 1,
                                   custom_message="completion_logits: prompts and completions need the same N")
    tokens = jnp.concatenate([prompt_tokens, completion_tokens.astype(prompt_tokens.dtype)], axis=1)  # [N, P+T]
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones(completion_tokens.shape, jnp.int32)],
                           axis=1)
    return tokens, mask


def _scored_hidden(config, params, prompt_tokens, prompt_mask, completion_tokens, group_size: int = 1):
    """Hidden states [N, T, D] (before the final norm) at the T positions that predict the completion.
    group_size > 1: the shared-prefix forward (module docstring)."""
    tokens, mask = _concat(prompt_tokens, prompt_mask, completion_tokens)
    n, p = prompt_tokens.shape
    if group_size > 1:
        if n % group_size:
            raise ValueError(f"completion_scores: {n} rows are not whole groups of group_size={group_size}")
        g = group_size
        # Rows are group-major and every row of a group carries the same prompt: keep the first.
        prompt_hidden, completion_hidden = model_lib.grouped_hidden_states(
            config, params, prompt_tokens.reshape(n // g, g, p)[:, 0], prompt_mask.reshape(n // g, g, p)[:, 0],
            completion_tokens, g)
        # Index P-1 (the last prompt position, predicting completion token 0) is the prompt's, the
        # same for the G rows of a group; indices P .. P+T-2 are the completion's own.
        return jnp.concatenate([jnp.repeat(prompt_hidden[:, -1:], g, axis=0), completion_hidden[:, :-1]], axis=1)
    hidden = model_lib.hidden_states(config, params, tokens, attention_mask=mask)  # [N, P+T, D]
    # Off-by-one: the output at index i predicts token i+1, so completion token t (index P+t) is
    # predicted at index P+t-1; indices P-1 .. P+T-2 give all T completion tokens. Slice before the
    # LM head so the V-wide matmul runs on T positions only.
    return hidden[:, p - 1: -1]


def completion_logits(config, params, prompt_tokens: jax.Array,
                      prompt_mask: jax.Array, completion_tokens: jax.Array) -> jax.Array:
    """f32[N, T, V]: the logits that score each completion token i32[N, T] (module docstring).
    The full [N, T, V]: training uses the chunked `completion_logps` / `completion_scores`."""
    if model_lib.is_module_model(config):  # a protocol NNX model: its full logits, then the same slice
        tokens, mask = _concat(prompt_tokens, prompt_mask, completion_tokens)
        p = prompt_tokens.shape[1]
        return model_lib.module_logits(config, params, tokens, attention_mask=mask)[:, p - 1: -1]
    hidden = _scored_hidden(config, params, prompt_tokens, prompt_mask, completion_tokens)
    return model_lib.lm_head(config, params, hidden)  # [N, T, V]


def _stats(logits, tokens, temperature, entropy: bool, argmax: bool, truncation: Truncation | None = None,
           full_logps: bool = False):
    """One chunk: logits f32[..., V] -> (logps f32[...], {"entropy": f32[...], "argmax": i32[...],
    "full_logps": f32[...]}). logps: of the truncated distribution when `truncation` is active, else
    losses.token_logps's."""
    truncated = truncation is not None and truncation.active
    logps = truncated_token_logps(logits, tokens, temperature=temperature, trunc=truncation)
    stats = {}
    if full_logps:  # the full tempered distribution's, with gradient (the KL's policy side)
        stats["full_logps"] = token_logps(logits, tokens, temperature=temperature) if truncated else logps
    if entropy:  # of the tempered distribution; a metric (no gradient) unless entropy == "grad" (a bonus)
        logp = jax.nn.log_softmax((logits if entropy == "grad" else jax.lax.stop_gradient(logits))
                                  / jnp.where(temperature > 0, temperature, 1.0))
        stats["entropy"] = -(jnp.exp(logp) * logp).sum(-1)
    if argmax:  # greedy token (SFT's token accuracy)
        stats["argmax"] = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1).astype(jnp.int32)
    return logps, stats


def chunked_head_logps(config: model_lib.ModelConfig, params, hidden: jax.Array, tokens: jax.Array, *,
                       temperature=1.0, chunk_size: int | None = None, entropy: bool = False,
                       argmax: bool = False, truncation: Truncation | None = None, full_logps: bool = False):
    """Final norm + LM head + tempered log-softmax of hidden [N, T, D] at tokens i32[N, T], in chunks
    of about `chunk_size` token rows (default LOGITS_BUDGET // V; at least N: a chunk is all N rows
    times a block of T positions). Returns (logps f32[N, T], stats) as `completion_scores`
    (`truncation`, `full_logps` too)."""
    n, t = tokens.shape
    v = config.vocab_size
    chunk_size = max(1, LOGITS_BUDGET // v) if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    block = max(1, min(t, chunk_size // max(n, 1)))  # T positions per chunk
    num_chunks = math.ceil(t / block)
    head = {k: params[k] for k in ("norm", "embed_tokens", "lm_head") if k in params}

    def chunk_fn(h, tok):  # [N, Tc, D], [N, Tc] -> logps [N, Tc], stats
        return _stats(model_lib.lm_head(config, head, h), tok, temperature, entropy, argmax, truncation, full_logps)

    if num_chunks == 1:  # all in one chunk: no scan, nothing recomputed
        return chunk_fn(hidden, tokens)
    pad = num_chunks * block - t  # the last chunk padded with zero rows (norm(0) = 0: finite), cut after
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
    # [N, C*Tc, ...] -> [C, N, Tc, ...]: chunk c holds positions c*Tc .. c*Tc+Tc-1 of every row.
    hs = jnp.moveaxis(hidden.reshape(n, num_chunks, block, hidden.shape[-1]), 1, 0)
    ts = jnp.moveaxis(tokens.reshape(n, num_chunks, block), 1, 0)
    # checkpoint: only the chunk's inputs are saved; its logits are rebuilt in the backward.
    _, (logps, stats) = jax.lax.scan(lambda _, x: (None, jax.checkpoint(chunk_fn)(*x)), None, (hs, ts))

    def unchunk(x):  # [C, N, Tc] -> [N, T]
        return jnp.moveaxis(x, 0, 1).reshape(n, num_chunks * block)[:, :t]

    return unchunk(logps), {k: unchunk(x) for k, x in stats.items()}


def completion_scores(config, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                      completion_tokens: jax.Array, *, temperature=1.0, chunk_size: int | None = None,
                      entropy: bool = False, argmax: bool = False, group_size: int = 1,
                      truncation: Truncation | None = None, full_logps: bool = False):
    """(logps f32[N, T], stats) of completion_tokens i32[N, T] given left-padded prompts, without
    the [N, T, V] logits (module docstring). `stats` holds, when asked, "entropy" f32[N, T] (of the
    tempered distribution) and "argmax" i32[N, T] (the greedy token); both carry no gradient, except
    the entropy with `entropy="grad"` (grpo.entropy_coef's bonus differentiates it).
    `chunk_size`: token rows per LM-head chunk (default LOGITS_BUDGET // V).
    `group_size` G > 1: the rows are N / G groups of G consecutive rows sharing one prompt (GRPO's
    group-major layout; only each group's first prompt row is read, the others are assumed equal to
    it and not checked), and each prompt is encoded once for its G completions
    (`model.grouped_hidden_states`): the same numbers to round-off, less work. Ignored for protocol
    (NNX graphdef) models, which are scored from their full forward.
    `truncation` (static; truncation.for_scoring(config)): when given and active, logps are those of
    the truncated, renormalised distribution the sampler drew from (module docstring); the stats stay
    of the full tempered distribution. None: the full tempered distribution (the reference's).
    `full_logps` (static): also stats["full_logps"] f32[N, T], the full tempered distribution's
    log-probs WITH gradient (= logps without truncation): the policy side of the KL to the reference."""
    if model_lib.is_module_model(config):  # no hidden / LM-head split: from the full logits
        logits = completion_logits(config, params, prompt_tokens, prompt_mask, completion_tokens)
        return _stats(logits, completion_tokens, temperature, entropy, argmax, truncation, full_logps)
    hidden = _scored_hidden(config, params, prompt_tokens, prompt_mask, completion_tokens, group_size)
    return chunked_head_logps(config, params, hidden, completion_tokens, temperature=temperature,
                              chunk_size=chunk_size, entropy=entropy, argmax=argmax, truncation=truncation,
                              full_logps=full_logps)


def completion_logps(config: model_lib.ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                     completion_tokens: jax.Array, *, temperature=1.0, chunk_size: int | None = None,
                     truncation: Truncation | None = None) -> jax.Array:
    """Training-side log-probs of completion_tokens i32[N, T] given left-padded prompts -> f32[N, T]
    (chunked LM head: no [N, T, V]; `completion_scores`, `truncation` too)."""
    return completion_scores(config, params, prompt_tokens, prompt_mask, completion_tokens,
                             temperature=temperature, chunk_size=chunk_size, truncation=truncation)[0]
