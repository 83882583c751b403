"""Top-k / top-p / min-p truncation: the kept set, the sampler's filter, and the log-probs of the
truncated, renormalised distribution the trainer scores sampled tokens under.

For tempered logits s = logits / temperature (temperature 0 read as 1, as losses.token_logps) over a
vocabulary of V tokens, with p = softmax(s), the kept set K(s) applies, in this order (HF generate's
TopK, TopP, MinP warpers, in that order after temperature: GenerationMixin._get_logits_processor):

    top-k   K1 = {i : s_i >= s_(k)}, s_(k) the k-th largest value: ties with the k-th are kept
            (#{j : s_j > s_i} < k); off when k = 0 or k >= V.
    top-p   nucleus over the top-k survivors, renormalised: p1 = softmax(s restricted to K1),
            K2 = {i in K1 : sum_{j in K1, s_j > s_i} p1_j < top_p}
            (keep a token while the mass strictly above it is < top_p: the most likely token, with
            mass 0 above it, is always kept; the smallest prefix of the sorted tokens whose mass
            reaches top_p, plus whatever ties its last one); off when top_p = 1.
    min-p   K = {i in K2 : p2_i >= min_p * max_j p2_j}  <=>  s_i >= max_j s_j + log(min_p)
            (a ratio of probabilities is unchanged by renormalisation, and the most likely token
            survives every filter, so the threshold is the same whatever ran before: min-p is an
            intersection; log space, no underflow of tiny probabilities); off when min_p = 0.
Only top-p depends on what ran before it (its mass is renormalised over top-k's survivors), so the
order that matters is top-k before top-p, as HF. Every rule reads values only (a count or a mass of
tokens with a strictly larger logit), never a position in a sort: equal logits are kept or dropped
together, whatever order a sort leaves them in, so the sampler and the trainer, which sort different
arrays ([N, V] per step vs [N, Tc, V] chunks), agree. With top-k on, top-p sorts only lax.top_k's k
values (the ties beyond the k-th all equal the last of them, so no kept prefix is missed; they still
count in the normaliser): no V-wide sort.

The sampler draws y ~ q = softmax(s masked to K(s)) (`filter_logits`: dropped tokens at -inf). The
trainer scores a sampled token under that same q (`truncated_token_logps`):

    log q(y) = s_y - logsumexp_{i in K(s) u {y}} s_i

The kept set is recomputed from the trainer's own logits. Those differ from the sampler's KV-cache
logits by float round-off, which can move a token at the edge of K in or out; the union with {y}
makes log q(y) finite for every token anyway (never -inf, so never an infinite ratio or a NaN
gradient), and only a token at the edge, drawn with probability at most the edge's mass, is affected.
On the sampler's own logits y is always in K, so there the union changes nothing. The kept set is a
constant of the logits (no gradient flows through the comparisons); the gradient of log q(y) is that
of the renormalised distribution: d log q(y) / d s_i = [i = y] - q_i for i in K u {y}, 0 elsewhere.

GRPO with truncated sampling (sampling.truncated_logps, the default): old and policy log-probs are
log q, so at mu = 1 the ratio is exactly 1 and the gradient is the sampled policy's; the KL to the
reference is on the full tempered distribution (the reference is scored without truncation).
"""
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from grpo_jax.losses import token_logps


class Truncation(NamedTuple):
    """The truncation of the tempered distribution (config keys sampling.top_k / top_p / min_p).
    Hashable: a static argument of the jitted sampler and train step."""
    top_k: int = 0  # keep the k most likely tokens (ties with the k-th kept); 0 = off
    top_p: float = 1.0  # nucleus: keep the most likely tokens while the mass before each is < top_p; 1 = off
    min_p: float = 0.0  # keep tokens with prob >= min_p * the most likely token's; 0 = off

    @property
    def active(self) -> bool:
        """Whether any of the three is on (top_k >= V also keeps everything: `keep_mask` knows V)."""
        return self.top_k > 0 or self.top_p < 1.0 or self.min_p > 0.0


def for_scoring(config) -> Truncation | None:
    """The truncation the trainer scores policy and old log-probs under (not the reference's): the
    config's sampling.top_k / top_p / min_p, or None when they do not truncate or when
    sampling.truncated_logps is False (log-probs of the full tempered distribution)."""
    s = config.sampling
    trunc = Truncation(top_k=int(s.top_k), top_p=float(s.top_p), min_p=float(s.min_p))
    return trunc if s.truncated_logps and trunc.active else None


def _check(trunc: Truncation):
    """At trace time: the ranges the sampler and config.validate enforce."""
    if not (trunc.top_k >= 0 and 0.0 < trunc.top_p <= 1.0 and 0.0 <= trunc.min_p < 1.0):
        raise ValueError(f"{trunc}: need top_k >= 0, 0 < top_p <= 1, 0 <= min_p < 1 "
                         f"(config keys sampling.top_k / top_p / min_p)")


def keep_mask(scaled: jax.Array, trunc: Truncation) -> jax.Array:
    """bool[..., V]: the kept set K of tempered logits scaled f32[..., V] (module docstring: top-k,
    then top-p over the renormalised survivors, then min-p). Depends only on the values (ties are
    kept or dropped together); at least the most likely token is always kept."""
    _check(trunc)
    v = scaled.shape[-1]
    keep = jnp.ones(scaled.shape, bool)
    top_k = trunc.top_k if 0 < trunc.top_k < v else 0
    if top_k:
        top = jax.lax.top_k(scaled, top_k)[0]  # [..., k] descending
        keep = scaled >= top[..., -1:]  # ties with the k-th kept
    if trunc.top_p < 1.0:
        # Descending values of the survivors and their renormalised probabilities. With top-k the k
        # largest suffice (a kept prefix never passes them); the normaliser still counts its ties.
        sorted_ = top if top_k else jnp.flip(jnp.sort(scaled, axis=-1), axis=-1)  # [..., k or V]
        logz = jax.nn.logsumexp(jnp.where(keep, scaled, -jnp.inf), axis=-1, keepdims=True)  # [..., 1]
        probs = jnp.exp(sorted_ - logz)
        # Exclusive cumulative sum (not cumsum - probs: no cancellation): the mass before each slot.
        cum = jnp.cumsum(probs, axis=-1)
        mass_before = jnp.concatenate([jnp.zeros_like(cum[..., :1]), cum[..., :-1]], axis=-1)
        # The smallest kept value is the cut; ties with it are kept (a value rule, not a position one).
        cutoff = jnp.min(jnp.where(mass_before < trunc.top_p, sorted_, jnp.inf), axis=-1, keepdims=True)
        keep = keep & (scaled >= cutoff)
    if trunc.min_p > 0.0:
        # p_i >= min_p * p_max  <=>  s_i >= s_max + log(min_p); the max survives the filters above.
        keep = keep & (scaled >= jnp.max(scaled, axis=-1, keepdims=True) + math.log(trunc.min_p))
    return keep


def filter_logits(scaled: jax.Array, trunc: Truncation) -> jax.Array:
    """The sampler's filter: scaled f32[..., V] with the tokens outside `keep_mask` at -inf, so that
    softmax of the result is the truncated, renormalised q. No-op when `trunc` is inactive."""
    if not trunc.active:
        return scaled
    return jnp.where(keep_mask(scaled, trunc), scaled, -jnp.inf)


def truncated_token_logps(logits: jax.Array, tokens: jax.Array, *, temperature=1.0,
                          trunc: Truncation | None) -> jax.Array:
    """log q(tokens) under the truncated, renormalised tempered distribution: f32[..., V], i32[...]
    -> f32[...] (shapes and temperature handling as losses.token_logps; temperature 0 read as 1).

    log q(y) = s_y - logsumexp over K(s) u {y} of s, s = logits / temperature, K = `keep_mask`: the
    token itself is always in the normaliser, so the value is finite even where round-off between
    the sampler's and the trainer's logits put y just outside K (module docstring). `trunc` None or
    inactive: exactly losses.token_logps (the full distribution).
    """
    if trunc is None or not trunc.active:
        return token_logps(logits, tokens, temperature=temperature)
    msg = "truncated_token_logps: logits must have the tokens' shape + (V,)"
    chex.assert_rank(logits, tokens.ndim + 1, custom_message=msg)
    chex.assert_equal_shape_prefix([logits, tokens], tokens.ndim, custom_message=msg)
    temperature = jnp.where(temperature > 0, temperature, 1.0)
    scaled = logits.astype(jnp.float32) / temperature
    tokens = tokens[..., None].astype(jnp.int32)  # [..., 1]
    # The kept set is a constant of the logits: comparisons carry no gradient.
    keep = keep_mask(jax.lax.stop_gradient(scaled), trunc)
    keep = keep | (jnp.arange(scaled.shape[-1]) == tokens)  # u {y}
    return filtered_token_logps(jnp.where(keep, scaled, -jnp.inf), tokens[..., 0])


def filtered_token_logps(filtered: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(filtered)[tokens]: f32[..., V] tempered logits with dropped tokens at -inf (a kept
    set that holds the tokens), i32[...] -> f32[...]. The last step of `truncated_token_logps`; the
    sampler applies it to the logits it drew from (`filter_logits`'s, which hold the drawn token), the
    same numbers without sorting the vocabulary a second time."""
    logz = jax.nn.logsumexp(filtered, axis=-1)
    return jnp.take_along_axis(filtered, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0] - logz
