"""The GRPO objective: token log-probs, the k3 KL estimator, the clipped surrogate, aggregation.

Per completion token t of row i (N = B*G rows, T tokens, mask m_{i,t}):

    rho_{i,t} = exp(logp_{i,t} - old_logp_{i,t})                      importance ratio
    o_{i,t}   = min(rho * A_i, clip(rho, 1 - eps, 1 + eps_high) * A_i) - beta * k3_{i,t}
    k3_{i,t}  = exp(ref - logp) - (ref - logp) - 1   >= 0, == 0 iff logp == ref  (Schulman 2020)

and loss = -aggregate(o). The switches and the papers they reproduce:

    loss_type="grpo"     mean_i ( sum_t m*o / sum_t m )          DeepSeekMath (Shao et al. 2024)
    loss_type="bnpo"     sum_{i,t} m*o / sum_{i,t} m             DAPO token-level (Yu et al. 2025)
    loss_type="dr_grpo"  sum_{i,t} m*o / (N * max_completion_length)   Dr. GRPO (Liu et al. 2025)
    epsilon_high > epsilon                                        DAPO clip-higher
    importance_level="sequence": one ratio per row,
        rho_i = exp( sum_t m*(logp - old_logp) / sum_t m )       GSPO (Zheng et al. 2025)

"grpo" weighs every completion equally, so tokens of long completions count less (the length bias
Dr. GRPO points out); "bnpo" weighs every token equally within the batch; "dr_grpo" divides by a
constant, so the gradient scale no longer depends on the batch's lengths at all.

Which rows count (`row_mask`): N above is the number of rows that carry a loss. Rows outside
`row_mask` (DAPO dynamic sampling's static-shape fill rows: no group with signal was found for
them) count nowhere, so a short batch updates as much per kept group as a full one. A row that is in
`row_mask` but whose tokens are all masked (a truncated completion under
`grpo.mask_truncated_completions`) still counts in the "grpo" and "dr_grpo" row counts, with
objective 0: TRL's convention (its `mask_truncated_completions` zeroes the completion mask, and its
"grpo" mean and "dr_grpo" divisor still run over every row).

At mu = 1 (one update per sample) old_logps equal logps in value, rho = 1, nothing is clipped and
the surrogate's gradient is the policy gradient A * grad logp.
"""

import chex
import jax
import jax.numpy as jnp

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo")
IMPORTANCE_LEVELS = ("token", "sequence")


def token_logps(logits: jax.Array, tokens: jax.Array, *, temperature=1.0) -> jax.Array:
    """log softmax(logits / temperature)[tokens]: f32[..., V], i32[...] -> f32[...].

    THE one log-prob function: the sampler, old/ref log-probs and the trained policy all use it on
    the same tempered, untruncated distribution, so the importance ratio at mu = 1 is exactly 1.
    temperature 0 (greedy sampling) is scored as temperature 1.
    """
    # Shapes only (trace time, nothing in the compiled program): logits = tokens' shape + (V,).
    msg = "token_logps: logits must have the tokens' shape + (V,)"
    chex.assert_rank(logits, tokens.ndim + 1, custom_message=msg)
    chex.assert_equal_shape_prefix([logits, tokens], tokens.ndim, custom_message=msg)
    temperature = jnp.where(temperature > 0, temperature, 1.0)
    logits = logits.astype(jnp.float32) / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - logz


def k3_kl(logps: jax.Array, ref_logps: jax.Array) -> jax.Array:
    """Per-token k3 estimator of KL(pi || pi_ref), unbiased under samples from pi, always >= 0."""
    delta = ref_logps - logps
    # expm1(d) - d instead of exp(d) - d - 1: no cancellation when logps ~ ref (the common case).
    return jnp.expm1(delta) - delta


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _check_loss_inputs(logps, old_logps, ref_logps, advantages, mask):
    """Shapes and dtypes only: runs while tracing, adds nothing to the compiled program."""
    log_probs = [logps, old_logps] + ([] if ref_logps is None else [ref_logps])
    names = "logps, old_logps" + ("" if ref_logps is None else ", ref_logps")
    chex.assert_rank(logps, 2, custom_message="grpo_loss: logps must be [N, T]")
    # A wrong T would broadcast or misalign silently; so would advantages [N, 1] instead of [N].
    chex.assert_equal_shape([*log_probs, mask], custom_message=f"grpo_loss: {names}, mask must all be [N, T]")
    chex.assert_shape(advantages, (logps.shape[0],),
                      custom_message=f"grpo_loss: advantages must be [N] with N = {logps.shape[0]} rows of logps")
    chex.assert_type([*log_probs, advantages], float,  # the mask may be bool, int or float
                     custom_message=f"grpo_loss: {names}, advantages must be floating point")


def grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, epsilon=0.2, epsilon_high=None,
              beta=0.04, loss_type="grpo", importance_level="token", max_completion_length=None,
              row_mask=None, per_row=False):
    """Clipped-surrogate + k3 KL loss -> (scalar loss, dict of scalar metrics).

    logps, old_logps, ref_logps: f32[N, T] (ref_logps None: no KL term); advantages f32[N];
    mask [N, T], 1 on completion tokens. epsilon, epsilon_high, beta may be traced scalars;
    loss_type and importance_level are static. `row_mask` f32[N] (None: every row): the rows that
    carry a loss; the others count in no sum and no denominator (module docstring). `per_row`: the
    metrics also hold "clipped_tokens" f32[N], each row's count of clipped tokens (the one non-scalar:
    per-group clip rates, groups.jsonl).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_level must be one of {IMPORTANCE_LEVELS}, got {importance_level!r}")
    _check_loss_inputs(logps, old_logps, ref_logps, advantages, mask)
    n, t = logps.shape
    mask = mask.astype(jnp.float32)
    if row_mask is not None:
        chex.assert_shape(row_mask, (n,), custom_message=f"grpo_loss: row_mask must be [N] with N = {n}")
        row_mask = row_mask.astype(jnp.float32)
        mask = mask * row_mask[:, None]  # a row outside counts in no token sum either
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    advantages = advantages.astype(jnp.float32)[:, None]  # [N, 1], broadcast over tokens
    row_tokens = jnp.maximum(mask.sum(axis=1), 1.0)  # [N]; an all-masked row divides by 1, not 0

    log_ratio = logps - old_logps  # [N, T]
    if importance_level == "sequence":
        # GSPO: the length-normalised sequence likelihood ratio, one per row.
        log_ratio = ((log_ratio * mask).sum(axis=1) / row_tokens)[:, None]  # [N, 1]
    ratio = jnp.broadcast_to(jnp.exp(log_ratio), (n, t))  # [N, T]
    clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
    surrogate = jnp.minimum(ratio * advantages, clipped * advantages)  # [N, T]
    objective = surrogate
    kl = jnp.zeros((n, t), jnp.float32)
    if ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        objective = objective - beta * kl

    # Rows that count in the "grpo" / "dr_grpo" row count: all N, or those in row_mask (at least 1,
    # so a chunk holding only fill rows gives 0, not NaN).
    rows = n if row_mask is None else jnp.maximum(row_mask.sum(), 1.0)
    if loss_type == "grpo":
        row_means = (objective * mask).sum(axis=1) / row_tokens  # [N]; 0 on rows outside row_mask
        aggregate = row_means.mean() if row_mask is None else row_means.sum() / rows
    elif loss_type == "bnpo":
        aggregate = _masked_mean(objective, mask)
    else:  # dr_grpo
        length = t if max_completion_length is None else max_completion_length
        aggregate = (objective * mask).sum() / (rows * length)
    loss = -aggregate

    # Clipping changed the objective exactly where the min picked the clipped term and it differs:
    # rho below 1 - eps with A < 0, or above 1 + eps_high with A > 0.
    low = (ratio < 1.0 - epsilon) & (advantages < 0)
    high = (ratio > 1.0 + epsilon_high) & (advantages > 0)
    metrics = {
        "loss": loss,
        "kl": _masked_mean(kl, mask),
        "clip_fraction": _masked_mean((low | high).astype(jnp.float32), mask),
        "clip_fraction_low": _masked_mean(low.astype(jnp.float32), mask),
        "clip_fraction_high": _masked_mean(high.astype(jnp.float32), mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_max": jnp.max(jnp.where(mask > 0, ratio, -jnp.inf), initial=0.0),
    }
    if per_row:
        metrics["clipped_tokens"] = ((low | high).astype(jnp.float32) * mask).sum(axis=1)
    return loss, metrics
