"""The chunked LM head of scoring.py: the same log-probs, gradients, entropy and argmax as the full
[N, T, V] logits, for tied and untied heads, f32 and bf16 compute; and far less compiled memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import model as model_lib
from grpo_jax import scoring
from grpo_jax.losses import token_logps

N, P, T = 4, 5, 7  # N*T = 28 token rows


def make_config(tie, dtype="float32", vocab_size=64):
    return model_lib.ModelConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4,
                                 num_kv_heads=2, head_dim=8, intermediate_size=64, tie_embeddings=tie,
                                 dtype=dtype)


def make_inputs(config, seed=0):
    rng = np.random.default_rng(seed)
    prompt = jnp.asarray(rng.integers(0, config.vocab_size, (N, P)), jnp.int32)
    mask = np.ones((N, P), np.int32)
    mask[::2, :2] = 0  # some left padding
    comp = jnp.asarray(rng.integers(0, config.vocab_size, (N, T)), jnp.int32)
    weights = jnp.asarray(rng.normal(size=(N, T)), jnp.float32)  # a loss that weighs every token
    return prompt, jnp.asarray(mask), comp, weights


def full_scores(config, params, prompt, mask, comp, temperature):
    """Today's path: the whole [N, T, V] logits."""
    logits = scoring.completion_logits(config, params, prompt, mask, comp)
    logp = jax.nn.log_softmax(logits / temperature)
    entropy = -(jnp.exp(logp) * logp).sum(-1)
    return token_logps(logits, comp, temperature=temperature), entropy, jnp.argmax(logits, -1)


# 1: fewer rows than N (one position of every row per chunk); 12: 3 positions per chunk, T = 7 padded
# to 9; 20: 5 per chunk, padded to 10; 1000 > N*T: one chunk (the default at this V is one chunk too).
CHUNKS = [1, 12, 20, 1000]


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunk_size", CHUNKS)
def test_chunked_logps_entropy_argmax_equal_full_logits(tie, chunk_size):
    config = make_config(tie)
    params = model_lib.init_params(config, jax.random.key(0))
    prompt, mask, comp, _ = make_inputs(config)
    temperature = 0.7
    want_logps, want_entropy, want_argmax = jax.jit(full_scores, static_argnums=0)(
        config, params, prompt, mask, comp, temperature)
    logps, stats = jax.jit(lambda *a: scoring.completion_scores(
        config, *a, temperature=temperature, chunk_size=chunk_size, entropy=True, argmax=True))(
        params, prompt, mask, comp)
    assert logps.shape == stats["entropy"].shape == stats["argmax"].shape == (N, T)
    np.testing.assert_allclose(logps, want_logps, atol=1e-5, rtol=1e-6)
    np.testing.assert_allclose(stats["entropy"], want_entropy, atol=1e-5, rtol=1e-6)
    np.testing.assert_array_equal(stats["argmax"], want_argmax)
    plain = jax.jit(lambda *a: scoring.completion_logps(config, *a, temperature=temperature,
                                                        chunk_size=chunk_size))(params, prompt, mask, comp)
    np.testing.assert_array_equal(plain, logps)


def _grads(config, params, prompt, mask, comp, weights, chunk_size):
    def loss(p, chunked):
        if chunked:
            lp, stats = scoring.completion_scores(config, p, prompt, mask, comp, temperature=0.9,
                                                  chunk_size=chunk_size, entropy=True)
            lp = lp + 0.0 * stats["entropy"]  # the entropy (a metric) must add no gradient
        else:
            lp = token_logps(scoring.completion_logits(config, p, prompt, mask, comp), comp, temperature=0.9)
        return (lp * weights).sum()

    full = jax.jit(jax.value_and_grad(lambda p: loss(p, False)))(params)
    chunked = jax.jit(jax.value_and_grad(lambda p: loss(p, True)))(params)
    return full, chunked


def _assert_trees_close(got, want, rtol, atol_scale):
    for path, g, w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(got), jax.tree.leaves(want)):
        g, w = np.asarray(g, np.float32), np.asarray(w, np.float32)
        # relative-ish: elementwise rtol, plus an absolute floor scaled to the leaf's largest entry
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol_scale * max(np.abs(w).max(), 1e-12),
                                   err_msg=jax.tree_util.keystr(path[0]))


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("chunk_size", [3, 12, 1000])
def test_chunked_gradients_equal_full_logits(tie, chunk_size):
    config = make_config(tie)
    params = model_lib.init_params(config, jax.random.key(1))
    prompt, mask, comp, weights = make_inputs(config, seed=1)
    (want_v, want_g), (got_v, got_g) = _grads(config, params, prompt, mask, comp, weights, chunk_size)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-5)
    _assert_trees_close(got_g, want_g, rtol=1e-5, atol_scale=1e-6)
    head = "embed_tokens" if tie else "lm_head"  # the head weight is trained through the chunks
    assert np.abs(np.asarray(got_g[head][next(iter(got_g[head]))])).max() > 0


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_bf16_compute_matches_full(tie):
    # bf16 matmuls (params f32): both paths cast the same way per element; only the summation order
    # inside XLA's kernels may differ, so the tolerance is bf16's, not f32's.
    config = make_config(tie, dtype="bfloat16")
    params = model_lib.init_params(config, jax.random.key(2))
    prompt, mask, comp, weights = make_inputs(config, seed=2)
    want, _, _ = jax.jit(full_scores, static_argnums=0)(config, params, prompt, mask, comp, 1.0)
    got = jax.jit(lambda *a: scoring.completion_logps(config, *a, chunk_size=12))(params, prompt, mask, comp)
    np.testing.assert_allclose(got, want, atol=2e-2)
    (want_v, want_g), (got_v, got_g) = _grads(config, params, prompt, mask, comp, weights, 12)
    np.testing.assert_allclose(got_v, want_v, rtol=1e-2)
    _assert_trees_close(got_g, want_g, rtol=5e-2, atol_scale=2e-2)


def test_chunk_size_must_be_positive():
    config = make_config(False)
    params = model_lib.init_params(config, jax.random.key(0))
    prompt, mask, comp, _ = make_inputs(config)
    with pytest.raises(ValueError, match="chunk_size"):
        scoring.completion_logps(config, params, prompt, mask, comp, chunk_size=0)


def test_chunked_head_compiles_to_far_less_memory():
    # N*T = 512 token rows, V = 32768, D = 256, one layer; XLA CPU temp bytes measured 2026-11-30
    # (jax 0.10.2), full logits -> chunk_size=64 (8 positions x 8 rows per chunk):
    #   forward         64.5 MiB -> 8.6 MiB  (the [512, V] f32 logits -> one [64, V] chunk)
    #   value_and_grad 141.0 MiB -> 51.9 MiB (what remains is mostly the V x D f32 weight gradients)
    # (tied and untied alike; chunk_size 128: 16.6 / 59.9 MiB, 256: 32.8 / 76.3 MiB.)
    n, p, t = 8, 8, 64
    config = model_lib.ModelConfig(vocab_size=32768, hidden_size=256, num_layers=1, num_heads=4,
                                   num_kv_heads=2, head_dim=64, intermediate_size=512)
    params = jax.eval_shape(lambda: model_lib.init_params(config, jax.random.key(0)))
    prompt = jax.ShapeDtypeStruct((n, p), jnp.int32)
    comp = jax.ShapeDtypeStruct((n, t), jnp.int32)

    def full(prm, a, m, c):
        return token_logps(scoring.completion_logits(config, prm, a, m, c), c)

    def chunked(prm, a, m, c):
        return scoring.completion_logps(config, prm, a, m, c, chunk_size=64)

    def temp_bytes(f, grad):
        g = jax.value_and_grad(lambda *a: f(*a).sum()) if grad else f
        return jax.jit(g).lower(params, prompt, prompt, comp).compile().memory_analysis().temp_size_in_bytes

    fwd_ratio = temp_bytes(chunked, False) / temp_bytes(full, False)
    grad_ratio = temp_bytes(chunked, True) / temp_bytes(full, True)
    assert fwd_ratio < 0.2, fwd_ratio  # measured 0.13
    assert grad_ratio < 0.45, grad_ratio  # measured 0.37
