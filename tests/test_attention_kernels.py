"""grpo_jax.attention: the cuDNN and splash training-attention paths against model._attention.

On CPU: the cuDNN path's shared code (row rolling, seq_lengths, causal flag) through
jax.nn.dot_product_attention's XLA implementation ("dot_product_xla"), and through "cudnn" with the
kernel call swapped for the XLA one; the splash kernel in the Pallas interpreter (interpret=True),
alone and under shard_map on the 8 simulated devices. With libtpu: the real splash kernel compiled
ahead of time for a v5e 2x2 slice. The cuDNN kernel itself needs an NVIDIA GPU and is not run here.
"""
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from grpo_jax import attention
from grpo_jax import model as model_lib

# Rows: all real; 3 left pads; 11 of L pads (more than half); a lone real token at the end.
PADS = (0, 3, 11, None)  # None: L - 1 pads


def _inputs(b, l, h, kv, hd, dtype=jnp.float32, pads=PADS, seed=0):
    kq, kk, kv_, kw = jax.random.split(jax.random.key(seed), 4)
    q = jax.random.normal(kq, (b, l, h, hd), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, l, kv, hd), jnp.float32).astype(dtype)
    v = jax.random.normal(kv_, (b, l, kv, hd), jnp.float32).astype(dtype)
    n_pads = [(l - 1 if p is None else p) for p in (pads * b)[:b]]
    mask = jnp.asarray([[0] * p + [1] * (l - p) for p in n_pads], jnp.int32)
    w = jax.random.normal(kw, (b, l, h * hd), jnp.float32)  # cotangent weights for the gradient checks
    return q, k, v, mask, w


def _reference(q, k, v, mask):
    """model._attention on the training (no-cache) path, as hidden_states calls it."""
    b, l, h, hd = q.shape
    config = model_lib.ModelConfig(vocab_size=8, hidden_size=h * hd, num_layers=1, num_heads=h,
                                   num_kv_heads=k.shape[2], head_dim=hd, intermediate_size=8)
    full = jnp.tril(jnp.ones((l, l), bool))[None] & mask.astype(bool)[:, None, :]  # [B, L, L]
    return model_lib._attention(config, q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), full)


def _loss(fn, mask, w):
    """sum over REAL query rows of w * out (pad rows' outputs are free to differ)."""
    real = mask.astype(jnp.float32)[:, :, None]
    return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * w * real)


def _check_against_reference(fn, q, k, v, mask, w, *, atol, rtol):
    real = np.asarray(mask, bool)
    got, want = jax.jit(fn)(q, k, v), jax.jit(_reference)(q, k, v, mask)
    assert got.shape == want.shape and got.dtype == q.dtype
    assert np.isfinite(np.asarray(got, np.float32)).all()  # pad rows included
    np.testing.assert_allclose(np.asarray(got, np.float32)[real], np.asarray(want, np.float32)[real],
                               atol=atol, rtol=rtol)
    grads = jax.jit(jax.grad(_loss(fn, mask, w), argnums=(0, 1, 2)))(q, k, v)
    ref_grads = jax.jit(jax.grad(_loss(lambda *a: _reference(*a, mask), mask, w), argnums=(0, 1, 2)))(q, k, v)
    for name, g, r in zip("qkv", grads, ref_grads):
        g, r = np.asarray(g, np.float32), np.asarray(r, np.float32)
        assert np.isfinite(g).all(), name
        np.testing.assert_allclose(g, r, atol=atol, rtol=rtol, err_msg=f"d{name}")


# ------------------------------------------------------------------------------ cuDNN path (rolled rows)
def test_roll_rows_is_a_per_row_rotation():
    x = jnp.arange(2 * 5).reshape(2, 5)
    np.testing.assert_array_equal(attention._roll_rows(x, jnp.asarray([0, 2])),
                                  [[0, 1, 2, 3, 4], [7, 8, 9, 5, 6]])
    shift = jnp.asarray([3, 1])
    np.testing.assert_array_equal(attention._roll_rows(attention._roll_rows(x, shift), -shift), x)


@pytest.mark.parametrize("h,kv", [(4, 2), (3, 3), (4, 1)])  # GQA, MHA, MQA
def test_dot_product_xla_matches_reference(h, kv):
    q, k, v, mask, w = _inputs(4, 16, h, kv, 8)
    _check_against_reference(lambda q, k, v: attention.attend("dot_product_xla", q, k, v, mask),
                             q, k, v, mask, w, atol=2e-6, rtol=2e-5)


def test_dot_product_xla_bool_mask_and_all_pad_row():
    """A bool mask works like an int one; a row with no real token stays finite (values and grads)."""
    q, k, v, mask, w = _inputs(2, 8, 4, 2, 8, pads=(2, 8))
    fn = lambda q, k, v: attention.attend("dot_product_xla", q, k, v, mask.astype(bool))
    out = jax.jit(fn)(q, k, v)
    np.testing.assert_array_equal(out[1], 0.0)  # all-pad row: zeroed
    np.testing.assert_allclose(out[0, 2:], _reference(q, k, v, mask)[0, 2:], atol=2e-6, rtol=2e-5)
    grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))(q, k, v)
    assert all(np.isfinite(np.asarray(g)).all() for g in grads)


def test_cudnn_branch_calls_the_kernel_as_documented(monkeypatch):
    """impl="cudnn" in bf16, with the cuDNN kernel swapped for XLA's: the arguments jax receives
    (causal, int32 [B] seq lengths, right-padded rows) and the result against the reference."""
    calls = []
    real_dpa = jax.nn.dot_product_attention

    def fake(query, key, value, *args, implementation=None, **kwargs):
        calls.append(dict(implementation=implementation, dtype=query.dtype, **kwargs))
        return real_dpa(query, key, value, *args, implementation="xla", **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
    q, k, v, mask, w = _inputs(4, 16, 4, 2, 8, dtype=jnp.bfloat16)
    out = attention.attend("cudnn", q, k, v, mask)
    (call,) = calls
    assert call["implementation"] == "cudnn" and call["dtype"] == jnp.bfloat16 and call["is_causal"]
    lengths = np.asarray(call["key_value_seq_lengths"])
    assert lengths.dtype == np.int32 and lengths.tolist() == [16, 13, 5, 1]
    np.testing.assert_array_equal(call["query_seq_lengths"], lengths)
    real = np.asarray(mask, bool)
    want = _reference(q, k, v, mask)
    assert out.dtype == jnp.bfloat16 and out.shape == (4, 16, 32)
    np.testing.assert_allclose(np.asarray(out, np.float32)[real], np.asarray(want, np.float32)[real],
                               atol=2e-2, rtol=2e-2)  # bf16 compute both sides
    np.testing.assert_array_equal(np.asarray(out, np.float32)[~real], 0.0)


def test_cudnn_rejects_float32_and_unknown_impls():
    q, k, v, mask, _ = _inputs(1, 8, 2, 1, 8)
    with pytest.raises(ValueError, match="bfloat16"):
        attention.attend("cudnn", q, k, v, mask)
    with pytest.raises(ValueError, match="impl='flash'"):
        attention.attend("flash", q, k, v, mask)
    with pytest.raises(ValueError, match="multiple of KV"):
        attention.attend("dot_product_xla", q, jnp.tile(k, (1, 1, 3, 1)), jnp.tile(v, (1, 1, 3, 1)), mask)


# ------------------------------------------------------------------------------ splash (interpreter)
@pytest.mark.parametrize("l,h,kv", [(16, 4, 2), (300, 2, 1)])
def test_splash_interpret_matches_reference(l, h, kv):
    """L=16: padded up to one 128 tile, GQA. L=300: padded to 384 = 3 tiles of 128, so the causal
    mask's block skipping and the multi-block backward run (MQA)."""
    q, k, v, mask, w = _inputs(4 if l < 128 else 2, l, h, kv, 8, pads=(0, 3, 11, None) if l < 128 else (0, 170))
    _check_against_reference(lambda q, k, v: attention.attend("splash", q, k, v, mask, interpret=True),
                             q, k, v, mask, w, atol=1e-5, rtol=1e-5)


def test_splash_interpret_under_batch_mesh():
    """Under the trainer's ("data", "fsdp") abstract mesh the kernel runs under shard_map, one batch
    shard per device (8 simulated CPU devices: 4 x 2), with the same numbers."""
    devices = jax.devices()
    if len(devices) < 8:
        pytest.skip("needs the 8 simulated CPU devices of tests/conftest.py")
    mesh = Mesh(np.array(devices[:8]).reshape(4, 2), ("data", "fsdp"))
    q, k, v, mask, w = _inputs(8, 24, 4, 2, 8, pads=(0, 5, 23, 1))
    shard = NamedSharding(mesh, P(("data", "fsdp")))
    q, k, v, mask = (jax.device_put(x, shard) for x in (q, k, v, mask))

    def fn(q, k, v):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return attention.attend("splash", q, k, v, mask, interpret=True)

    assert "shard_map" in str(jax.make_jaxpr(fn)(q, k, v))
    _check_against_reference(fn, q, k, v, mask, w, atol=1e-5, rtol=1e-5)
    # A batch that does not divide over the devices is padded, not refused:
    # tests/test_attention_backends.py::test_splash_pads_a_batch_that_does_not_divide_the_mesh.


# ------------------------------------------------------------------------------ splash (TPU, AOT)
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (pip install 'grpo_jax[tpu]'): no TPU compiler")
@pytest.mark.parametrize("dtype,hd", [(jnp.bfloat16, 64), (jnp.float32, 128)])
def test_splash_compiles_for_tpu(dtype, hd):
    """Forward + gradient of the real Mosaic kernel, compiled ahead of time for a v5e 2x2 slice with
    the batch sharded over ("data", "fsdp"): three kernel calls (forward, dq, dkv), no all-gather."""
    for name, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_ACCELERATOR_TYPE", "v5e-4"),
                        ("TPU_WORKER_HOSTNAMES", "localhost")):  # as grpo_jax.plan sets them
        os.environ.setdefault(name, value)
    from jax.experimental import topologies
    topo = topologies.get_topology_desc(platform="tpu", topology_name="v5e:2x2", chip_config_name="default",
                                        chips_per_host_bounds=(2, 2, 1), num_slices=1)
    mesh = Mesh(np.array(topo.devices).reshape(2, 2), ("data", "fsdp"))
    b, l, h, kv = 4, 200, 4, 2
    shard = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.ShapeDtypeStruct(s, d, sharding=shard)
            for s, d in (((b, l, h, hd), dtype), ((b, l, kv, hd), dtype), ((b, l, kv, hd), dtype),
                         ((b, l), jnp.int32))]

    def loss(q, k, v, mask):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return jnp.sum(attention.attend("splash", q, k, v, mask).astype(jnp.float32))

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).trace(*args).lower().compile()
    text = compiled.as_text()
    assert text.count('custom_call_target="tpu_custom_call"') == 3, text[:2000]
    assert "all-gather" not in text
