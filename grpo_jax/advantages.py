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
"""

import chex
import jax
import jax.numpy as jnp

SCALES = ("group", "batch", "none")


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
