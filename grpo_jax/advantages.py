"""Group-relative advantages.

For prompt b with G completions and rewards r_{b,1..G} (DeepSeekMath, Shao et al. 2024, §4.1.2):

    A_{b,i} = (r_{b,i} - mean_j r_{b,j}) / (std_j r_{b,j} + eps)      scale="group"   (GRPO)
    A_{b,i} = (r_{b,i} - mean_j r_{b,j}) / (std over all N rewards + eps)   scale="batch"
    A_{b,i} =  r_{b,i} - mean_j r_{b,j}                                scale="none"    (Dr. GRPO)

The mean is always per group. Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training")
drops the std division because it up-weights groups that are nearly all right or all wrong;
"batch" (the Dr. GRPO authors' and TRL's compromise) keeps a scale without that per-question bias.
`ddof=1` is the unbiased std, as in TRL and the DeepSeek code.

A group whose rewards are all equal carries no learning signal, so its advantage is exactly 0 in every
mode. That needs an explicit mask: in f32 the group mean of three copies of 2.9229512 is not exactly
2.9229512, and the ~2e-7 residual divided by (std=0) + eps would become a spurious advantage of ~2e-3.

Other baselines (`compute(..., estimator=...)`, config grpo.advantage_estimator):

    rloo          A_{b,i} = r_{b,i} - mean_{j != i} r_{b,j}  =  G/(G-1) (r_{b,i} - mean_j r_{b,j})
                  then divided exactly as grpo divides (`scale`: group std / batch std / none).
                  REINFORCE Leave-One-Out (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline
                  for free"; Ahmadian et al. 2024, "Back to Basics"): the baseline excludes the sample
                  itself, so it is independent of it and the estimator is unbiased. Tied groups: 0.
    reinforce_pp  REINFORCE++-baseline (Hu et al. 2025, arXiv 2501.03262; verl's
                  compute_reinforce_plus_plus_baseline_outcome_advantage):
                      c_{b,i} = r_{b,i} - mean_j r_{b,j}                       (group mean baseline)
                      A_{b,i} = (c_{b,i} - mu) / sqrt(var + 1e-8)               (whitened over tokens)
                  with mu, var over the batch's completion TOKENS (row i counted L_i times, L_i its
                  tokens in the loss): mu = sum_i L_i c_i / M, var = sum_i L_i (c_i - mu)^2 / (M - 1),
                  M = sum_i L_i (verl's masked_whiten: masked_var with Bessel's correction over the
                  M tokens, epsilon 1e-8 inside the square root). A tied group's c is exactly 0, but the
                  whitening shifts it: its rows get -mu / sqrt(var + 1e-8), as in verl.

GDPO (`gdpo`, grpo.multi_objective_aggregation = normalize_then_sum; "GDPO: Group reward-Decoupled
Normalization Policy Optimization", arXiv 2601.05242, as TRL 1.16 implements it; grpo.scale_rewards and
grpo.advantage_estimator do not apply): with R rewards r^k and weights w_k,

    n^k_{b,i} = (r^k_{b,i} - mean_j r^k_{b,j}) / (std_j r^k_{b,j} + eps)      each reward in its group
    s_{b,i}   = sum_k w_k n^k_{b,i}
    A_{b,i}   = (s_{b,i} - mean s) / (std s + eps)                             over the batch

stds with Bessel's correction (TRL's nanstd). Normalising each reward before the sum keeps a reward
with a large spread from drowning the others, and distinct reward combinations from collapsing to
the same advantage. A reward tied within a group contributes exactly 0 (TRL: ~0, the f32 residual
above over eps); the final batch whitening shifts a group tied in every reward, as in TRL.
"""

import chex
import jax
import jax.numpy as jnp

SCALES = ("group", "batch", "none")
ADVANTAGE_ESTIMATORS = ("grpo", "rloo", "reinforce_pp")
REWARD_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def group_advantages(rewards: jax.Array, group_size: int, *, scale: str = "group", ddof: int = 1,
                     eps: float = 1e-4, mask: jax.Array | None = None) -> jax.Array:
    """f32[N] group-major rewards (rows b*G .. b*G+G-1 are prompt b) -> f32[N] advantages.

    `mask` (optional, [N], 1 = the row counts) restricts every statistic to the marked rows and gives
    the others advantage 0; a group's marked rows are then treated exactly as a group of that many
    rows. Used by the vmapped G sweeps (the first G of G_max rows count; G may be traced) and by DAPO
    dynamic sampling (rows of groups that could not be filled). A group with fewer than 2 marked rows
    has no signal: advantage 0.
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {rewards.shape}")
    (n,) = rewards.shape
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group-relative advantages, got {group_size}")
    if n % group_size:
        raise ValueError(f"number of rewards N={n} is not a multiple of group_size={group_size}")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    grouped = rewards.reshape(n // group_size, group_size)  # [B, G]
    if mask is None:
        tied = jnp.all(grouped == grouped[:, :1], axis=1, keepdims=True)  # [B, 1]: no signal in this group
        centred = jnp.where(tied, 0.0, grouped - grouped.mean(axis=1, keepdims=True))  # [B, G]
        if scale == "group":
            centred = centred / (grouped.std(axis=1, ddof=ddof, keepdims=True) + eps)
        elif scale == "batch":
            centred = centred / (rewards.std(ddof=ddof) + eps)
        return centred.reshape(n)  # [N]

    mask = jnp.asarray(mask)
    # Shape only (trace time); a ValueError like the checks above.
    chex.assert_shape(mask, (n,), exception_type=ValueError,
                      custom_message="group_advantages: mask must have the rewards' shape [N]")
    used = mask.reshape(grouped.shape).astype(bool)  # [B, G]
    count = used.sum(axis=1, keepdims=True).astype(jnp.float32)  # [B, 1] marked rows per group
    # Tied: the marked rows' max equals their min (exact comparison, as above: no mean residual).
    hi = jnp.where(used, grouped, -jnp.inf).max(axis=1, keepdims=True)
    lo = jnp.where(used, grouped, jnp.inf).min(axis=1, keepdims=True)
    no_signal = (hi == lo) | (count < 2)  # [B, 1]
    mean = jnp.where(used, grouped, 0.0).sum(axis=1, keepdims=True) / jnp.maximum(count, 1.0)
    centred = jnp.where(used & ~no_signal, grouped - mean, 0.0)  # [B, G]
    if scale == "group":
        var = jnp.where(used, (grouped - mean) ** 2, 0.0).sum(axis=1, keepdims=True)
        centred = centred / (jnp.sqrt(var / jnp.maximum(count - ddof, 1.0)) + eps)
    elif scale == "batch":
        total = used.sum().astype(jnp.float32)
        batch_mean = jnp.where(used, grouped, 0.0).sum() / jnp.maximum(total, 1.0)
        var = jnp.where(used, (grouped - batch_mean) ** 2, 0.0).sum()
        centred = centred / (jnp.sqrt(var / jnp.maximum(total - ddof, 1.0)) + eps)
    return centred.reshape(n)  # [N]


def _marked_counts(group_size: int, n: int, mask) -> jax.Array:
    """f32[N]: how many marked rows the row's group has (`group_size` without a mask)."""
    if mask is None:
        return jnp.full((n,), float(group_size), jnp.float32)
    used = jnp.asarray(mask).reshape(n // group_size, group_size).astype(jnp.float32)  # [B, G]
    return jnp.broadcast_to(used.sum(axis=1, keepdims=True), used.shape).reshape(n)


def compute(rewards: jax.Array, group_size: int, *, estimator: str = "grpo", scale: str = "group", ddof: int = 1,
            eps: float = 1e-4, mask: jax.Array | None = None, lengths: jax.Array | None = None) -> jax.Array:
    """f32[N] group-major rewards -> f32[N] advantages by `estimator` (module docstring: formulas, papers).

    - "grpo": `group_advantages(rewards, group_size, scale=, ddof=, eps=, mask=)`.
    - "rloo": the same times G/(G-1), G = the group's marked rows (the leave-one-out baseline); tied
      groups and groups with fewer than 2 marked rows: 0.
    - "reinforce_pp": group mean subtracted (`scale="none"`), then whitened over the batch's tokens:
      `lengths` f32[N] (each row's completion tokens in the loss; None = 1 each, whitening over rows)
      weighs each row; `scale`, `ddof` and `eps` are unused (verl's Bessel-corrected token variance and
      1e-8). Rows outside `mask` and rows with no tokens get 0 (verl multiplies by the response mask);
      a tied group's rows get the shift -mu / sqrt(var + 1e-8), not 0. A group with fewer than 2
      marked rows has c = 0 (verl keeps r for a group of one; here such groups only come from `mask`).
    `mask` ([N], 1 = the row counts) as in `group_advantages`. Pure jnp: traces inside a jitted step.
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"estimator must be one of {ADVANTAGE_ESTIMATORS}, got {estimator!r}")
    if estimator == "grpo":
        return group_advantages(rewards, group_size, scale=scale, ddof=ddof, eps=eps, mask=mask)
    if estimator == "rloo":
        adv = group_advantages(rewards, group_size, scale=scale, ddof=ddof, eps=eps, mask=mask)  # [N]
        count = _marked_counts(group_size, adv.shape[0], mask)  # [N]
        # Groups with < 2 marked rows are already exactly 0; the max only keeps the division finite.
        return adv * (count / jnp.maximum(count - 1.0, 1.0))
    centred = group_advantages(rewards, group_size, scale="none", mask=mask)  # [N]; tied groups exactly 0
    (n,) = centred.shape
    weight = jnp.ones((n,), jnp.float32) if lengths is None else jnp.asarray(lengths, jnp.float32)
    chex.assert_shape(weight, (n,), exception_type=ValueError,
                      custom_message="compute: lengths must have the rewards' shape [N]")
    if mask is not None:
        weight = weight * jnp.asarray(mask).astype(jnp.float32)
    tokens = weight.sum()  # M: the batch's tokens in the loss
    mu = (weight * centred).sum() / jnp.maximum(tokens, 1.0)
    # verl raises for M <= 1 (Bessel's correction divides by 0); traced, the max keeps it finite.
    var = (weight * (centred - mu) ** 2).sum() / jnp.maximum(tokens - 1.0, 1.0)
    return jnp.where(weight > 0, (centred - mu) * jax.lax.rsqrt(var + 1e-8), 0.0)


def gdpo(components: jax.Array, weights: jax.Array, group_size: int, *, eps: float = 1e-4,
         mask: jax.Array | None = None) -> jax.Array:
    """GDPO advantages (module docstring): f32[N, R] unweighted group-major rewards, f32[R] weights -> f32[N].

    Each reward is normalised within its group (`group_advantages(..., scale="group", ddof=1)`: a tied
    reward, or a group with fewer than 2 marked rows, gives exactly 0), the weighted sum is then
    normalised over the batch's marked rows ((s - mean) / (std, Bessel-corrected, + eps), as TRL 1.16's
    normalize_then_sum). Rows outside `mask` ([N], 1 = the row counts) enter no statistic and get 0.
    """
    components = jnp.asarray(components, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    if components.ndim != 2:
        raise ValueError(f"components must be 2-D [N, R], got shape {components.shape}")
    n, r = components.shape
    if weights.shape != (r,):
        raise ValueError(f"weights must have shape [R] = ({r},) for components of shape {components.shape}, "
                         f"got {weights.shape}")
    normalised = jnp.stack([group_advantages(components[:, k], group_size, scale="group", ddof=1, eps=eps,
                                             mask=mask) for k in range(r)], axis=1)  # [N, R]
    summed = (normalised * weights).sum(axis=1)  # [N] (not a matmul: TPU default precision is bf16)
    used = jnp.ones((n,), jnp.float32) if mask is None else jnp.asarray(mask).astype(jnp.float32)
    total = used.sum()
    mean = (used * summed).sum() / jnp.maximum(total, 1.0)
    std = jnp.sqrt((used * (summed - mean) ** 2).sum() / jnp.maximum(total - 1.0, 1.0))
    return jnp.where(used > 0, (summed - mean) / (std + eps), 0.0)
