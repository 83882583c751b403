"""CORE: the one function that scores completions for training (GRPO's policy, old and reference
log-probs, and SFT's targets).

For left-padded prompts [N, P] and completions [N, T], one full forward over concat(prompt,
completion) with mask concat(prompt_mask, ones):

    logits_t = LM head(hidden state at index P + t - 1)        (index i predicts token i + 1)
    logp_t   = log softmax(logits_t / temperature)[completion_t]     (losses.token_logps)

The same positions as the sampler's KV-cache path (positions = cumsum(mask) - 1), and the same
tempered, untruncated distribution as the log-probs the sampler reports, so at mu = 1 the
importance ratio is exactly 1 by construction. Completion positions after a row's first EOS are
attended to but never scored (the loss masks them), so all-ones keeps positions contiguous. The
hidden states are sliced to the T scored positions before the V-wide LM head matmul.
Not jitted: these run inside the trainer's jitted step.
"""
import chex
import jax
import jax.numpy as jnp

from grpo_jax import model as model_lib
from grpo_jax.losses import token_logps


def completion_logits(config, params, prompt_tokens: jax.Array,
                      prompt_mask: jax.Array, completion_tokens: jax.Array) -> jax.Array:
    """f32[N, T, V]: the logits that score each completion token i32[N, T] (module docstring)."""
    # Shapes only (trace time, nothing in the compiled program).
    chex.assert_rank([prompt_tokens, completion_tokens], 2,
                     custom_message="completion_logits: prompt_tokens [N, P] and completion_tokens [N, T]")
    chex.assert_equal_shape([prompt_tokens, prompt_mask],
                            custom_message="completion_logits: prompt_tokens and prompt_mask must both be [N, P]")
    chex.assert_equal_shape_prefix([prompt_tokens, completion_tokens], 1,
                                   custom_message="completion_logits: prompts and completions need the same N")
    p = prompt_tokens.shape[1]
    tokens = jnp.concatenate([prompt_tokens, completion_tokens.astype(prompt_tokens.dtype)], axis=1)  # [N, P+T]
    mask = jnp.concatenate([prompt_mask.astype(jnp.int32), jnp.ones(completion_tokens.shape, jnp.int32)],
                           axis=1)
    if model_lib.is_module_model(config):  # a protocol NNX model: its full logits, then the same slice
        return model_lib.module_logits(config, params, tokens, attention_mask=mask)[:, p - 1: -1]
    hidden = model_lib.hidden_states(config, params, tokens, attention_mask=mask)  # [N, P+T, D]
    # Off-by-one: the output at index i predicts token i+1, so completion token t (index P+t) is
    # predicted at index P+t-1; indices P-1 .. P+T-2 give all T completion tokens. Slice before the
    # LM head so the V-wide matmul runs on T positions only.
    return model_lib.lm_head(config, params, hidden[:, p - 1 : -1])  # [N, T, V]


def completion_logps(config: model_lib.ModelConfig, params, prompt_tokens: jax.Array, prompt_mask: jax.Array,
                     completion_tokens: jax.Array, *, temperature=1.0) -> jax.Array:
    """Training-side log-probs of completion_tokens i32[N, T] given left-padded prompts -> f32[N, T]."""
    logits = completion_logits(config, params, prompt_tokens, prompt_mask, completion_tokens)
    return token_logps(logits, completion_tokens, temperature=temperature)
