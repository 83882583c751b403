"""The GRPO objective and the variants the field compares: token log-probs, KL estimators, the
surrogates, aggregation.

Per completion token t of row i (N = B*G rows, T tokens, mask m_{i,t}, advantage A_i):

    rho_{i,t} = exp(logp_{i,t} - old_logp_{i,t})                      importance ratio
    rho_i     = exp( sum_t m*(logp - old_logp) / sum_t m )            importance_level="sequence" (GSPO,
                                                                       Zheng et al. 2025): one ratio per row
    o_{i,t}   = s_{i,t} * e_{i,t} - beta * kl_{i,t}                   the per-token objective, maximised

with e_{i,t} = 1, or with top_entropy_quantile = q < 1 ("Beyond the 80/20 rule", Wang et al. 2025)
e = 1 only on the tokens whose entropy is >= the (1 - q) quantile of the masked tokens' entropies
(torch.quantile's linear interpolation, as TRL), and the surrogate s of `loss_type`:

    clipped (grpo, bnpo, dr_grpo, dapo, luspo)   s = min(rho' * A, clip(rho, 1 - eps, 1 + eps_high) * A)
        rho' = rho, or min(rho, delta) with INTELLECT-2's two-sided clip (`delta`, Prime Intellect 2025):
        a negative-advantage token whose ratio explodes is otherwise unbounded.
    cispo  (MiniMax-M1, 2025; ScaleRL)           s = sg(min(rho, eps_max)) * A * logp
        the clipped IS weight is a stop-gradient coefficient: every token keeps a gradient
        (eps_max = cispo_max_weight, TRL's epsilon_high for cispo).
    sapo   (Soft Adaptive Policy Opt., 2025)     s = sigmoid(tau * (rho - 1)) * 4 / tau * A
        tau = tau_pos if A > 0 else tau_neg: a smooth gate in place of the hard clip; at rho = 1 its
        gradient is A * grad logp, like the others.
    vespo  (VESPO, 2026)                         s = sg(phi(w_i)) * A * logp
        w_i = exp(clamp(sum_t m * clamp(logp - old_logp, -20, 20), log 1e-8, 20)) (the sequence
        ratio, not its length-normalised mean), phi(w) = e^lam * w^k * e^(-lam * w) (phi(1) = 1),
        (k, lam) = (k_pos, lam_pos) for A >= 0 else (k_neg, lam_neg).

and the KL to the reference, `kl_estimator` (Schulman 2020; verl's names), with d = logp - ref:

    k1 = d                 unbiased, any sign           k2 = d^2 / 2      biased, >= 0
    k3 = exp(-d) + d - 1   unbiased, >= 0, == 0 iff logp == ref (the default; DeepSeekMath)

The KL term is not masked by e (TRL's order). loss = -aggregate(o) - entropy_coef * H, where H is the
mean token entropy over the tokens the policy term uses (mask * e), a bonus whose scale does not
depend on loss_type (TRL 1.16). The aggregations and the papers they reproduce:

    loss_type="grpo", "sapo"   mean_i ( sum_t m*o / sum_t m )         DeepSeekMath (Shao et al. 2024)
    loss_type="bnpo"           sum_{i,t} m*o / sum_{i,t} m            token mean of each optimizer step
    loss_type="dr_grpo"        sum_{i,t} m*o / (N * max_completion_length)   Dr. GRPO (Liu et al. 2025)
    loss_type="dapo", "cispo", "vespo"
                               sum_{i,t} m*o / (tokens of the whole generation batch / K)   DAPO (Yu et al.
                               2025): every token of the rollout weighs the same in each of its K updates
    loss_type="luspo"          mean_i ( sum_t m*o )                   LUSPO (2026): GSPO's row mean of the
                               clipped sequence surrogate times the row's length, so long rows are not
                               down-weighted; meant for importance_level="sequence"
    epsilon_high > epsilon                                            DAPO clip-higher

"grpo" weighs every completion equally, so tokens of long completions count less (the length bias
Dr. GRPO points out); "bnpo" and "dapo" weigh every token equally; "dr_grpo" divides by a constant,
so the gradient scale no longer depends on the batch's lengths at all. On one batch (no accumulation,
K = 1) "bnpo" and "dapo" are the same number; they differ in how the train step accumulates chunks
(`accumulation_weights`): "bnpo" normalises each optimizer step by its own tokens, "dapo" by the
rollout's tokens / K (TRL's num_items_in_batch).

Which rows count (`row_mask`): N above is the number of rows that carry a loss. Rows outside
`row_mask` (DAPO dynamic sampling's static-shape fill rows: no group with signal was found for
them) count nowhere, so a short batch updates as much per kept group as a full one. A row that is in
`row_mask` but whose tokens are all masked (a truncated completion under
`grpo.mask_truncated_completions`) still counts in the row-mean types' row counts, with
objective 0: TRL's convention (its `mask_truncated_completions` zeroes the completion mask, and its
"grpo" mean and "dr_grpo" divisor still run over every row).

At mu = 1 (one update per sample) old_logps equal logps in value, rho = 1, nothing is clipped and
every surrogate's gradient is the policy gradient A * grad logp (sapo's and cispo's included;
vespo's is phi(1) = 1 only when w = 1, i.e. at the first update).
"""

import math

import chex
import jax
import jax.numpy as jnp

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo")
CLIPPED_LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # PPO's clipped surrogate (delta applies)
IMPORTANCE_LEVELS = ("token", "sequence")
KL_ESTIMATORS = ("k3", "k1", "k2")
TOKEN_SUM_LOSS_TYPES = ("dapo", "cispo", "vespo")  # normalised by the rollout's tokens (DAPO, TRL)


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


def kl_estimate(logps: jax.Array, ref_logps: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (module docstring): k1, k2 or k3."""
    if estimator == "k3":
        return k3_kl(logps, ref_logps)
    d = logps - ref_logps
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def high_entropy_mask(entropies: jax.Array, mask: jax.Array, quantile: float) -> jax.Array:
    """bool[N, T]: the masked tokens whose entropy is >= the (1 - quantile) quantile of the masked
    tokens' entropies ("Beyond the 80/20 rule": quantile = the top share kept, 0.2 in the paper).

    The quantile interpolates linearly between order statistics, as torch.quantile (TRL 1.16's
    `get_high_entropy_mask`): at position (1 - quantile) * (n - 1) of the n sorted masked values.
    quantile 1 keeps every masked token, 0 only those at the maximum. No gradient.
    """
    e = jax.lax.stop_gradient(entropies).astype(jnp.float32)
    m = mask > 0
    n = m.sum()
    ordered = jnp.sort(jnp.where(m, e, jnp.inf).ravel())  # the n masked values first
    pos = (1.0 - quantile) * jnp.maximum(n - 1, 0).astype(jnp.float32)
    lo = jnp.floor(pos).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    frac = pos - lo
    threshold = ordered[lo] + frac * (ordered[hi] - ordered[lo])
    threshold = jnp.where(frac > 0, threshold, ordered[lo])  # no inf * 0 when lo is the last value
    return (jnp.where(m, e, 0.0) >= threshold) & m & (n > 0)


def vespo_weights(log_ratio: jax.Array, mask: jax.Array, advantages: jax.Array,
                  params=(2.0, 3.0, 3.0, 2.0)) -> jax.Array:
    """f32[N, 1]: VESPO's Gamma weight phi(w_i) of each row's sequence ratio (module docstring), no
    gradient. log_ratio f32[N, T] per token, mask [N, T], advantages f32[N, 1];
    params = (k_pos, lambda_pos, k_neg, lambda_neg)."""
    k_pos, lam_pos, k_neg, lam_neg = params
    log_ratio = jax.lax.stop_gradient(log_ratio)
    seq = (jnp.clip(log_ratio, -20.0, 20.0) * mask).sum(axis=1, keepdims=True)  # [N, 1]
    log_w = jnp.clip(seq, math.log(1e-8), 20.0)
    nonneg = advantages >= 0
    k = jnp.where(nonneg, k_pos, k_neg)
    lam = jnp.maximum(jnp.where(nonneg, lam_pos, lam_neg), 1e-4)
    phi = jnp.exp(lam + k * log_w - lam * jnp.exp(log_w))
    return jnp.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)


def accumulation_weights(loss_type: str, tokens: jax.Array, rows: jax.Array):
    """How the train step sums chunk losses: (loss_weights f32[K, M], token_shares f32[K, M]).

    tokens / rows f32[K, M]: the masked completion tokens and the rows that count of chunk m of
    optimizer update k (each chunk's `grpo_loss` aggregates over its own rows). Update k's gradient is
    sum_m loss_weights[k, m] * grad grpo_loss(chunk k, m), which equals the gradient of the loss_type's
    aggregate over update k's rows:
      row means (grpo, sapo, luspo, dr_grpo): the chunk's share of the update's rows (1/M when all
        rows count; TRL divides by its gradient-accumulation steps, the same);
      bnpo: the chunk's share of the update's tokens (the update's token mean, whatever M is; TRL's
        bnpo averages micro-batch token means instead, which moves with M);
      dapo, cispo, vespo: chunk tokens * K / the tokens of all K updates (TRL's num_items_in_batch
        over the generation batch, rescaled to one update).
    token_shares (the chunk's share of its update's tokens) weigh token means: the entropy bonus and
    the metrics. So M (gradient accumulation) changes nothing but memory for every loss type, with
    one exception: top_entropy_quantile < 1 takes its entropy quantile over each chunk's tokens (as
    TRL over each micro-batch), so which tokens carry the loss can move with M.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    k = tokens.shape[0]
    token_shares = tokens / jnp.maximum(tokens.sum(axis=1, keepdims=True), 1.0)
    if loss_type == "bnpo":
        weights = token_shares
    elif loss_type in TOKEN_SUM_LOSS_TYPES:
        weights = tokens * k / jnp.maximum(tokens.sum(), 1.0)
    else:
        weights = rows / jnp.maximum(rows.sum(axis=1, keepdims=True), 1.0)
    return weights, token_shares


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
              row_mask=None, per_row=False, delta=None, kl_estimator="k3", cispo_max_weight=5.0,
              sapo_temperatures=(1.0, 1.05), vespo_params=(2.0, 3.0, 3.0, 2.0), entropies=None,
              entropy_coef=0.0, top_entropy_quantile=1.0, kl_logps=None):
    """The policy loss of `loss_type` + beta * KL - entropy bonus -> (scalar loss, dict of scalar metrics).

    logps, old_logps, ref_logps: f32[N, T] (ref_logps None: no KL term); advantages f32[N];
    mask [N, T], 1 on completion tokens. epsilon, epsilon_high, beta, entropy_coef may be traced
    scalars; the rest is static. `row_mask` f32[N] (None: every row): the rows that carry a loss; the
    others count in no sum and no denominator (module docstring). `per_row`: the metrics also hold
    "clipped_tokens" f32[N], each row's count of clipped tokens (the one non-scalar: per-group clip
    rates, groups.jsonl). `delta`: INTELLECT-2's cap (None = off; clipped types only).
    `kl_estimator`: k1 | k2 | k3. cispo_max_weight: cispo's eps_max. sapo_temperatures = (tau_pos,
    tau_neg). vespo_params = (k_pos, lambda_pos, k_neg, lambda_neg). `entropies` f32[N, T] (needed
    for top_entropy_quantile < 1 and for a nonzero entropy_coef; differentiable for the bonus's
    gradient). `kl_logps` f32[N, T]: the policy's log-probs for the KL term when they differ from
    `logps` (truncated sampling: the ratio uses the truncated distribution's, the KL the full one's;
    None = logps). Formulas and papers: module docstring.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if importance_level not in IMPORTANCE_LEVELS:
        raise ValueError(f"importance_level must be one of {IMPORTANCE_LEVELS}, got {importance_level!r}")
    if delta is not None and loss_type not in CLIPPED_LOSS_TYPES:
        raise ValueError(f"delta caps the clipped surrogate of {CLIPPED_LOSS_TYPES}; loss_type={loss_type!r}")
    bonus = not (isinstance(entropy_coef, (int, float)) and entropy_coef == 0)
    if (bonus or top_entropy_quantile < 1.0) and entropies is None:
        raise ValueError("grpo_loss: entropy_coef != 0 and top_entropy_quantile < 1 need `entropies` [N, T]")
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

    token_log_ratio = logps - old_logps  # [N, T]
    log_ratio = token_log_ratio
    if importance_level == "sequence":
        # GSPO: the length-normalised sequence likelihood ratio, one per row.
        log_ratio = ((log_ratio * mask).sum(axis=1) / row_tokens)[:, None]  # [N, 1]
    ratio = jnp.broadcast_to(jnp.exp(log_ratio), (n, t))  # [N, T]
    low = high = jnp.zeros((n, t), bool)  # tokens whose objective the clip changed
    if loss_type in CLIPPED_LOSS_TYPES:
        clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)
        unclipped = ratio if delta is None else jnp.minimum(ratio, delta)
        surrogate = jnp.minimum(unclipped * advantages, clipped * advantages)  # [N, T]
        # Clipping changed the objective exactly where the min picked the clipped term and it differs:
        # rho below 1 - eps with A < 0, or above 1 + eps_high with A > 0.
        low = (ratio < 1.0 - epsilon) & (advantages < 0)
        high = (ratio > 1.0 + epsilon_high) & (advantages > 0)
    elif loss_type == "cispo":
        weight = jax.lax.stop_gradient(jnp.minimum(ratio, cispo_max_weight))
        surrogate = weight * advantages * logps
        high = (ratio > cispo_max_weight) & (advantages > 0)  # TRL's cispo_clip_ratio
    elif loss_type == "sapo":
        tau_pos, tau_neg = sapo_temperatures
        tau = jnp.where(advantages > 0, tau_pos, tau_neg)  # [N, 1]
        surrogate = jax.nn.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau) * advantages
    else:  # vespo
        phi = vespo_weights(token_log_ratio, mask, advantages, vespo_params)  # [N, 1]
        surrogate = phi * advantages * logps
    policy_mask = mask
    if top_entropy_quantile < 1.0:
        policy_mask = mask * high_entropy_mask(entropies, mask, top_entropy_quantile)
        surrogate = surrogate * (policy_mask > 0)
    objective = surrogate
    kl = jnp.zeros((n, t), jnp.float32)
    if ref_logps is not None:
        kl = kl_estimate(logps if kl_logps is None else kl_logps, ref_logps, kl_estimator)
        objective = objective - beta * kl

    # Rows that count in the row-mean types: all N, or those in row_mask (at least 1, so a chunk
    # holding only fill rows gives 0, not NaN).
    rows = n if row_mask is None else jnp.maximum(row_mask.sum(), 1.0)
    if loss_type in ("grpo", "sapo"):
        row_means = (objective * mask).sum(axis=1) / row_tokens  # [N]; 0 on rows outside row_mask
        aggregate = row_means.mean() if row_mask is None else row_means.sum() / rows
    elif loss_type == "luspo":
        row_sums = (objective * mask).sum(axis=1)
        aggregate = row_sums.mean() if row_mask is None else row_sums.sum() / rows
    elif loss_type in ("bnpo",) + TOKEN_SUM_LOSS_TYPES:  # one batch: its own tokens (see accumulation_weights)
        aggregate = _masked_mean(objective, mask)
    else:  # dr_grpo
        length = t if max_completion_length is None else max_completion_length
        aggregate = (objective * mask).sum() / (rows * length)
    loss = -aggregate
    metrics = {}
    if bonus:  # the mean entropy of the tokens the policy term uses, whatever loss_type divides by
        entropy_term = _masked_mean(entropies.astype(jnp.float32), policy_mask)
        loss = loss - entropy_coef * entropy_term
        metrics["entropy_bonus"] = entropy_term

    metrics |= {
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
