"""GRPO objective (placeholder header; full file follows)."""
import jax
import jax.numpy as jnp


def token_logps(logits: jax.Array, tokens: jax.Array, *, temperature=1.0) -> jax.Array:
    """log softmax(logits / temperature)[tokens]: f32[..., V], i32[...] -> f32[...]."""
    temperature = jnp.where(temperature > 0, temperature, 1.0)
    logits = logits.astype(jnp.float32) / temperature
    logz = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tokens[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - logz
