"""grpo_jax.sharding: mesh construction, FSDP param specs, sharded init, sharded forward == 1 device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grpo_jax import model, sharding
from grpo_jax.model import ModelConfig

# hidden 24 is not divisible by fsdp=8 but is by 2 and 4: exercises the "largest divisible dim" rule.
CFG = ModelConfig(vocab_size=64, hidden_size=24, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=6,
                  intermediate_size=40, tie_embeddings=False, attention_bias=True)


def test_make_mesh_axes_and_bad_sizes():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    assert mesh.axis_names == ("data", "fsdp")
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    with pytest.raises(ValueError, match=r"mesh.data=3 x mesh.fsdp=2 = 6 .* device count 8"):
        sharding.make_mesh(data=3, fsdp=2)
    with pytest.raises(ValueError, match=r"mesh.fsdp=2 .* device count 1"):
        sharding.make_mesh(data=1, fsdp=2, devices=jax.devices()[:1])
    assert sharding.make_mesh(data=1, fsdp=1, devices=jax.devices()[:1]).size == 1


def test_param_shardings_rule():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    abstract = jax.eval_shape(lambda k: model.init_params(CFG, k), jax.random.key(0))
    specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(mesh, abstract))
    layer = specs["layers"][0]
    assert specs["embed_tokens"]["embedding"] == P("fsdp", None)  # [64, 24]: 64 is the largest
    assert layer["mlp"]["gate_proj"]["kernel"] == P(None, "fsdp")  # [24, 40]
    assert layer["mlp"]["down_proj"]["kernel"] == P("fsdp", None)  # [40, 24]
    assert layer["self_attn"]["k_proj"]["kernel"] == P("fsdp", None)  # [24, 12]
    assert layer["self_attn"]["q_proj"]["kernel"] == P("fsdp", None)  # [24, 24]: tie -> first dim
    assert layer["self_attn"]["q_proj"]["bias"] == P()  # 1-D: replicated
    assert layer["input_layernorm"]["scale"] == P()
    # fsdp=8: [24, 40] -> the 40; no dim of [6, 10] divisible by 8 -> replicated; any pytree works.
    mesh8 = sharding.make_mesh(data=1, fsdp=8)
    specs8 = jax.tree.map(lambda s: s.spec, sharding.param_shardings(mesh8, abstract))
    assert specs8["layers"][0]["mlp"]["up_proj"]["kernel"] == P(None, "fsdp")
    odd = {"w": jax.ShapeDtypeStruct((6, 10), jnp.float32), "x": jax.ShapeDtypeStruct((3, 16, 8), jnp.float32)}
    odd_specs = jax.tree.map(lambda s: s.spec, sharding.param_shardings(mesh8, odd))
    assert odd_specs == {"w": P(), "x": P(None, "fsdp", None)}
    assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)


def test_sharded_init_equals_single_device_init_and_is_sharded():
    mesh = sharding.make_mesh(data=2, fsdp=4)
    key = jax.random.key(3)
    sharded = sharding.init_params_sharded(CFG, key, mesh)
    # Bit-identical to the same init jitted on one device (threefry is partitionable, so the sharded
    # program draws the same numbers); eager (op-by-op) init may differ from jitted in the last ulp.
    single = jax.jit(lambda k: model.init_params(CFG, k), device=jax.devices()[0])(key)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), sharded, single)
    eager = model.init_params(CFG, key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6), sharded, eager)
    emb = sharded["embed_tokens"]["embedding"]
    assert emb.sharding.spec == P("fsdp", None)
    # Each device holds a quarter of the rows (fsdp=4), not the whole table.
    assert {s.data.shape for s in emb.addressable_shards} == {(16, 24)}


@functools.partial(jax.jit, static_argnums=0)
def _apply(config, params, tokens, mask):
    return model.apply(config, params, tokens, attention_mask=mask)


def test_apply_on_4x2_mesh_equals_single_device():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    key = jax.random.key(1)
    params = sharding.init_params_sharded(CFG, key, mesh)
    tokens = jax.random.randint(jax.random.key(2), (8, 10), 0, CFG.vocab_size)
    mask = jnp.ones((8, 10), jnp.int32).at[1, :3].set(0).at[6, :5].set(0)
    ref = _apply(CFG, model.init_params(CFG, key), tokens, mask)
    out = _apply(CFG, params, jax.device_put(tokens, sharding.batch_sharding(mesh)),
                 jax.device_put(mask, sharding.batch_sharding(mesh)))
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
