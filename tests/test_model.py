"""grpo_jax.model: hand-checked pieces, padding invariance, KV-cache parity, tying, GQA, bf16.

Logit parity against transformers lives with the weights loader (tests/test_weights.py).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import model
from grpo_jax.model import ModelConfig

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, rope_theta=10000.0, rms_norm_eps=1e-6, tie_embeddings=False,
                  attention_bias=True, max_position_embeddings=64)
B, L = 3, 12  # one shape for every full forward in this file (each new shape costs a compile)


@functools.partial(jax.jit, static_argnums=0)
def _apply(config, params, tokens, mask):
    return model.apply(config, params, tokens, attention_mask=mask)


def _params(config=CFG, seed=0):
    params = model.init_params(config, jax.random.key(seed))
    # Non-trivial biases and norm scales, so the test would notice them being dropped or misplaced.
    leaves, treedef = jax.tree.flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if "bias" in name:
            leaf = 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype)
        elif "scale" in name:
            leaf = 1.0 + 0.2 * jax.random.normal(k, leaf.shape, leaf.dtype)
        out.append(leaf)
    return jax.tree.unflatten(treedef, [leaf for leaf in out])


def _tokens(seed=0):
    return jax.random.randint(jax.random.key(seed), (B, L), 0, CFG.vocab_size)


def test_rms_norm_hand_vector():
    x = jnp.array([3.0, 4.0])  # mean(x^2) = 12.5
    out = model.rms_norm(x, jnp.array([1.0, 2.0]), eps=0.0)
    np.testing.assert_allclose(out, [3 / np.sqrt(12.5), 8 / np.sqrt(12.5)], rtol=1e-6)


def test_rope_hand_checked():
    x = jax.random.normal(jax.random.key(0), (1, 2, 3, 8))
    # Position 0: every angle is 0, so RoPE is the identity.
    np.testing.assert_allclose(model.rope(x, jnp.zeros((1, 2), jnp.int32), theta=10000.0), x, atol=1e-7)
    # head_dim 2: one frequency (theta^0 = 1), angle = position; rotate_half pairs x[0] with x[1].
    v = jnp.array([1.0, 2.0]).reshape(1, 1, 1, 2)
    out = model.rope(v, jnp.array([[3]]), theta=10000.0).reshape(2)
    c, s = np.cos(3.0), np.sin(3.0)
    np.testing.assert_allclose(out, [1 * c - 2 * s, 2 * c + 1 * s], rtol=1e-6)
    # head_dim 4: pairs are (0, 2) and (1, 3) (halves, not interleaved); second frequency theta^(-1/2).
    w = jnp.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    out = model.rope(w, jnp.array([[1]]), theta=100.0).reshape(4)
    np.testing.assert_allclose(out, [np.cos(1.0), 0.0, np.sin(1.0), 0.0], atol=1e-7)


def test_left_padding_gives_unpadded_logits():
    params = _params()
    tokens = _tokens()
    full = _apply(CFG, params, tokens, jnp.ones((B, L), jnp.int32))
    # Row r: shift the first L - pad tokens right by `pad` and mask the pads (which hold junk ids).
    pads = [0, 3, 7]
    padded = np.array(tokens)
    mask = np.ones((B, L), np.int32)
    for r, pad in enumerate(pads):
        padded[r, pad:] = np.asarray(tokens)[r, : L - pad]
        padded[r, :pad] = 5
        mask[r, :pad] = 0
    out = _apply(CFG, params, jnp.asarray(padded), jnp.asarray(mask))
    assert np.isfinite(np.asarray(out)).all()  # pad queries see no key: must not be NaN
    for r, pad in enumerate(pads):
        np.testing.assert_allclose(out[r, pad:], full[r, : L - pad], atol=1e-5)


def test_fully_padded_row_is_finite():
    out = _apply(CFG, _params(), _tokens(), jnp.zeros((B, L), jnp.int32))
    assert np.isfinite(np.asarray(out)).all()


def test_causal_future_tokens_do_not_change_past_logits():
    params = _params()
    tokens = _tokens()
    changed = tokens.at[:, 8:].set((tokens[:, 8:] + 1) % CFG.vocab_size)
    ones = jnp.ones((B, L), jnp.int32)
    a, b = _apply(CFG, params, tokens, ones), _apply(CFG, params, changed, ones)
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert np.abs(np.asarray(a[:, 8:] - b[:, 8:])).max() > 1e-3


def test_init_cache_layout():
    """The decode cache's contract: keys stored transposed [B, KV, hd, S], values [B, KV, S, hd]."""
    cache = model.init_cache(CFG, B, L)
    assert len(cache) == CFG.num_layers
    assert cache[0]["k"].shape == (B, CFG.num_kv_heads, CFG.head_dim, L)
    assert cache[0]["v"].shape == (B, CFG.num_kv_heads, L, CFG.head_dim)


def test_cached_prefill_and_decode_match_full_forward():
    params = _params()
    tokens = _tokens()
    mask = jnp.ones((B, L), jnp.int32).at[1, :4].set(0).at[2, :1].set(0)  # left padding
    full = _apply(CFG, params, tokens, mask)
    p = 5  # prefill the first 5 slots, then decode the other 7 one token at a time
    positions = model.positions_from_mask(mask)
    cache = model.init_cache(CFG, B, L)
    step = jax.jit(model.apply_with_cache, static_argnums=0)
    last, _ = jax.jit(model.apply_with_cache, static_argnums=0, static_argnames="last_only")(
        CFG, params, tokens[:, :p], positions[:, :p], cache, 0, mask, last_only=True)
    logits, cache = step(CFG, params, tokens[:, :p], positions[:, :p], cache, 0, mask)
    assert last.shape == (B, 1, CFG.vocab_size)
    np.testing.assert_allclose(last, logits[:, -1:], atol=1e-6)
    got = [logits]
    for t in range(p, L):
        logits, cache = step(CFG, params, tokens[:, t : t + 1], positions[:, t : t + 1], cache, t, mask)
        got.append(logits)
    got = jnp.concatenate(got, axis=1)
    real = np.asarray(mask).astype(bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full)[real], atol=1e-4)


def test_tied_embeddings_equal_untied_with_transposed_head():
    tied_cfg = ModelConfig(**{**CFG.__dict__, "tie_embeddings": True})
    tied = _params(tied_cfg)
    assert "lm_head" not in tied
    untied = {**tied, "lm_head": {"kernel": tied["embed_tokens"]["embedding"].T}}
    tokens, ones = _tokens(), jnp.ones((B, L), jnp.int32)
    np.testing.assert_allclose(_apply(tied_cfg, tied, tokens, ones), _apply(CFG, untied, tokens, ones),
                               atol=1e-6)


def test_gqa_equals_multi_head_with_repeated_kv_heads():
    params = _params()
    groups = CFG.num_heads // CFG.num_kv_heads
    mha_cfg = ModelConfig(**{**CFG.__dict__, "num_kv_heads": CFG.num_heads})

    def repeat(p):  # [..., KV*hd] -> [..., KV, hd] -> [..., H, hd] -> [..., H*hd]
        x = p.reshape(*p.shape[:-1], CFG.num_kv_heads, CFG.head_dim)
        return jnp.repeat(x, groups, axis=-2).reshape(*p.shape[:-1], -1)

    mha = jax.tree.map(lambda x: x, params)
    for layer in mha["layers"]:
        for name in ("k_proj", "v_proj"):
            layer["self_attn"][name] = {k: repeat(v) for k, v in layer["self_attn"][name].items()}
    tokens, mask = _tokens(), jnp.ones((B, L), jnp.int32).at[0, :2].set(0)
    np.testing.assert_allclose(_apply(CFG, params, tokens, mask), _apply(mha_cfg, mha, tokens, mask),
                               atol=1e-5)


def test_bfloat16_runs_and_is_close_to_float32():
    """bf16 storage AND compute (param_dtype = dtype = bfloat16); bf16 compute over f32 params is in
    tests/test_precision.py."""
    bf_cfg = ModelConfig(**{**CFG.__dict__, "dtype": "bfloat16", "param_dtype": "bfloat16"})
    params = _params()
    bf = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    assert model.init_params(bf_cfg, jax.random.key(0))["layers"][0]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
    tokens, ones = _tokens(), jnp.ones((B, L), jnp.int32)
    out = _apply(bf_cfg, bf, tokens, ones)
    ref = _apply(CFG, params, tokens, ones)
    assert out.dtype == jnp.float32
    err = np.abs(np.asarray(out - ref)).max()
    assert err < 0.02 * np.abs(np.asarray(ref)).max(), err
    # bf16 params really are rounded: the outputs differ, just not by much.
    assert err > 0


def test_init_params_layout_and_statistics():
    params = model.init_params(CFG, jax.random.key(0))
    layer = params["layers"][0]
    assert isinstance(params["layers"], list) and len(params["layers"]) == CFG.num_layers
    assert params["embed_tokens"]["embedding"].shape == (64, 32)
    assert layer["self_attn"]["q_proj"]["kernel"].shape == (32, 32)
    assert layer["self_attn"]["k_proj"]["kernel"].shape == (32, 16)
    assert layer["self_attn"]["k_proj"]["bias"].shape == (16,)
    assert "bias" not in layer["self_attn"]["o_proj"]
    assert layer["mlp"]["down_proj"]["kernel"].shape == (64, 32)
    assert params["lm_head"]["kernel"].shape == (32, 64)
    np.testing.assert_array_equal(params["norm"]["scale"], 1.0)
    np.testing.assert_array_equal(layer["self_attn"]["q_proj"]["bias"], 0.0)
    std = float(jnp.std(params["embed_tokens"]["embedding"]))
    assert 0.017 < std < 0.023, std


def test_config_validation():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        ModelConfig(**{**CFG.__dict__, "num_kv_heads": 3})
    with pytest.raises(ValueError, match="dtype='float16'"):
        ModelConfig(**{**CFG.__dict__, "dtype": "float16"})
    with pytest.raises(ValueError, match="param_dtype='float16'"):
        ModelConfig(**{**CFG.__dict__, "param_dtype": "float16"})


def _reference_attention(q, k, v, row_mask):
    """Plain softmax attention differentiated by autodiff: the parity reference for the hand VJP."""
    scores = jnp.einsum("bkrd,bksd->bkrs", q, k) * (q.shape[-1] ** -0.5)
    probs = jax.nn.softmax(jnp.where(row_mask, scores, jnp.finfo(jnp.float32).min), axis=-1)
    return jnp.einsum("bkrs,bksd->bkrd", probs, v)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 5e-2)])
def test_attention_custom_vjp_matches_autodiff(dtype, tol):
    """model._softmax_attention's hand-written backward == autodiff of the same maths, including
    padded keys, causal masking and fully masked (pad query) rows, whose gradient must be exactly 0;
    in bf16 the cotangents keep the primal dtypes."""
    b, kv, r, s, hd = 3, 2, 6, 5, 8
    keys = jax.random.split(jax.random.key(7), 4)
    q, k, v = (jax.random.normal(kk, shape).astype(dtype) for kk, shape in
               zip(keys, [(b, kv, r, hd), (b, kv, s, hd), (b, kv, s, hd)]))
    cotangent = jax.random.normal(keys[3], (b, kv, r, hd))
    causal = jnp.arange(s)[None, :] <= (jnp.arange(r) % s)[:, None]  # [R, S]
    key_real = jnp.ones((b, s), bool).at[1, :2].set(False)  # row 1: two left-padded keys
    row_mask = (causal[None] & key_real[:, None, :])[:, None]  # [B, 1, R, S]
    row_mask = row_mask.at[2, :, 0].set(False)  # batch 2, query 0: every key masked (a pad query)

    def loss(fn):
        return lambda q_, k_, v_: jnp.sum(fn(q_, k_, v_, row_mask) * cotangent)

    f32 = [x.astype(jnp.float32) for x in (q, k, v)]
    np.testing.assert_allclose(model._softmax_attention(q, k, v, row_mask).astype(jnp.float32),
                               _reference_attention(*f32, row_mask), atol=tol)
    got = jax.grad(loss(model._softmax_attention), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(_reference_attention), argnums=(0, 1, 2))(*f32)  # autodiff in f32
    for g, w, x in zip(got, want, (q, k, v)):
        assert g.dtype == x.dtype
        np.testing.assert_allclose(g.astype(jnp.float32), w, atol=tol, rtol=tol)
    assert float(jnp.abs(got[0][2, :, 0]).max()) == 0.0  # the fully masked query row gets no gradient
    assert float(jnp.abs(want[0][2, :, 0]).max()) == 0.0
