"""grpo_jax.sharding: mesh construction, param specs by logical axis name (rules, overrides, fallbacks),
sharded init, sharded forward == 1 device."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grpo_jax import model, sharding
from grpo_jax.model import ModelConfig

# vocab 64 > hidden 24, both divisible by 2 and 4: the old "largest divisible dim" rule sharded the
# embedding along the vocabulary; the logical-axis rules shard it along "embed".
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


MESH_4X2 = dict(data=4, fsdp=2)


def _specs(mesh, tree, **kw):
    return jax.tree.map(lambda s: s.spec, sharding.param_shardings(mesh, tree, **kw))


def _sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def test_logical_axes_table():
    abstract = jax.eval_shape(lambda k: model.init_params(CFG, k), jax.random.key(0))
    names = sharding.param_logical_axes(abstract)
    layer = names["layers"][1]
    assert names["embed_tokens"]["embedding"] == ("vocab", "embed")
    assert names["lm_head"]["kernel"] == ("embed", "vocab")
    assert names["norm"]["scale"] == ("norm",)
    assert layer["input_layernorm"]["scale"] == layer["post_attention_layernorm"]["scale"] == ("norm",)
    assert layer["self_attn"]["q_proj"] == {"kernel": ("embed", "heads"), "bias": ("heads",)}
    assert layer["self_attn"]["k_proj"] == layer["self_attn"]["v_proj"] == {"kernel": ("embed", "kv_heads"),
                                                                            "bias": ("kv_heads",)}
    assert layer["self_attn"]["o_proj"] == {"kernel": ("heads", "embed")}
    assert layer["mlp"] == {"gate_proj": {"kernel": ("embed", "mlp")}, "up_proj": {"kernel": ("embed", "mlp")},
                            "down_proj": {"kernel": ("mlp", "embed")}}
    # By path alone (names or a key path): Qwen3's head norms, LoRA adapters under a linear (also nested
    # as lora_a/kernel), stacked layers, and paths / ranks the table does not describe.
    la = sharding.logical_axes
    assert la(("layers", 0, "self_attn", "q_norm", "scale"), 1) == ("head_dim",)
    assert la(("layers", 0, "self_attn", "k_norm", "scale"), 1) == ("head_dim",)
    assert la(("layers", 3, "self_attn", "o_proj", "lora_a"), 2) == ("heads", "lora")
    assert la(("layers", 3, "self_attn", "o_proj", "lora_b"), 2) == ("lora", "embed")
    assert la(("layers", 3, "mlp", "up_proj", "lora_b", "kernel"), 2) == ("lora", "mlp")
    assert la(("lm_head", "lora_a"), 2) == ("embed", "lora")
    assert la(("layers", "mlp", "down_proj", "kernel"), 3) == ("layers", "mlp", "embed")
    assert la(("my_block", "dense", "kernel"), 2) is None
    assert la(("layers", 0, "self_attn", "q_proj", "kernel"), 3) is None  # [D, H, hd]: not this layout
    assert la(("embed_tokens", "embedding"), 3) is None  # not stacked layers


def test_param_shardings_by_name_on_4x2_mesh():
    mesh = sharding.make_mesh(**MESH_4X2)
    abstract = jax.eval_shape(lambda k: model.init_params(CFG, k), jax.random.key(0))
    specs = _specs(mesh, abstract)
    # The embedding [V=64, D=24]: both dims divide by fsdp=2; it is sharded along "embed" (D), not
    # along the (larger) vocabulary as the old largest-dimension rule did.
    assert specs["embed_tokens"]["embedding"] == P(None, "fsdp")
    assert specs["lm_head"]["kernel"] == P("fsdp", None)  # [D, V]
    for layer in specs["layers"]:
        attn, mlp = layer["self_attn"], layer["mlp"]
        assert attn["q_proj"]["kernel"] == attn["k_proj"]["kernel"] == attn["v_proj"]["kernel"] == P("fsdp", None)
        assert attn["o_proj"]["kernel"] == P(None, "fsdp")  # [H*hd, D]
        assert mlp["gate_proj"]["kernel"] == mlp["up_proj"]["kernel"] == P("fsdp", None)  # [D, I]
        assert mlp["down_proj"]["kernel"] == P(None, "fsdp")  # [I, D]
        assert attn["q_proj"]["bias"] == attn["k_proj"]["bias"] == attn["v_proj"]["bias"] == P()
        assert layer["input_layernorm"]["scale"] == layer["post_attention_layernorm"]["scale"] == P()
    assert specs["norm"]["scale"] == P()
    # The mesh placement: each device holds [64, 12] of the embedding, and the 4 data replicas agree.
    sh = sharding.param_shardings(mesh, abstract)["embed_tokens"]["embedding"]
    assert sh.shard_shape((64, 24)) == (64, 12)
    # LoRA adapters and Qwen3 head norms (hand-built tree: the path is what counts).
    lora = {"layers": [{"self_attn": {
        "q_proj": {"kernel": _sds(24, 24), "lora_a": _sds(24, 4), "lora_b": _sds(4, 24)},
        "o_proj": {"kernel": _sds(24, 24), "lora_a": _sds(24, 4), "lora_b": _sds(4, 24)},
        "q_norm": {"scale": _sds(6)}}}]}
    attn = _specs(mesh, lora)["layers"][0]["self_attn"]
    assert attn["q_proj"] == {"kernel": P("fsdp", None), "lora_a": P("fsdp", None), "lora_b": P()}
    assert attn["o_proj"] == {"kernel": P(None, "fsdp"), "lora_a": P(), "lora_b": P(None, "fsdp")}
    assert attn["q_norm"]["scale"] == P()
    assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None, None)


def test_rules_override():
    mesh = sharding.make_mesh(**MESH_4X2)
    abstract = jax.eval_shape(lambda k: model.init_params(CFG, k), jax.random.key(0))
    # "vocab" comes before "embed" in RULES' precedence: it takes "fsdp" in the embedding and LM head,
    # while "embed" still shards every other kernel.
    specs = _specs(mesh, abstract, rules={**sharding.RULES, "vocab": "fsdp"})
    assert specs["embed_tokens"]["embedding"] == P("fsdp", None)
    assert specs["lm_head"]["kernel"] == P(None, "fsdp")
    assert specs["layers"][0]["self_attn"]["q_proj"]["kernel"] == P("fsdp", None)
    # Two mesh axes in one param; a tuple shards one dim over both (24 divides by 8).
    specs = _specs(mesh, abstract, rules={**sharding.RULES, "mlp": "data"})
    assert specs["layers"][0]["mlp"]["gate_proj"]["kernel"] == P("fsdp", "data")  # [D, I=40]
    assert specs["layers"][0]["mlp"]["down_proj"]["kernel"] == P("data", "fsdp")
    specs = _specs(mesh, abstract, rules={**sharding.RULES, "embed": ("data", "fsdp")})
    assert specs["embed_tokens"]["embedding"] == P(None, ("data", "fsdp"))
    # Rules replace the table: names missing from it are replicated; an unknown mesh axis is an error.
    assert _specs(mesh, abstract, rules={"heads": "fsdp"})["layers"][0]["self_attn"]["q_proj"] == {
        "kernel": P(None, "fsdp"), "bias": P("fsdp")}
    assert _specs(mesh, abstract, rules={})["embed_tokens"]["embedding"] == P()
    with pytest.raises(ValueError, match=r"'embed' -> 'tensor': mesh axis 'tensor' is not one of .*'data', 'fsdp'"):
        sharding.param_shardings(mesh, abstract, rules={**sharding.RULES, "embed": "tensor"})
    # init_params_sharded takes the same override.
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh, rules={**sharding.RULES, "vocab": "fsdp"})
    assert params["embed_tokens"]["embedding"].sharding.spec == P("fsdp", None)


def test_not_divisible_falls_back_to_replicated():
    mesh = sharding.make_mesh(**MESH_4X2)
    odd = {"embed_tokens": {"embedding": _sds(64, 7)},  # D = 7: not divisible by 2; V is not used
           "layers": [{"mlp": {"gate_proj": {"kernel": _sds(7, 40)}}}],
           "norm": {"scale": _sds(7)}}
    specs = _specs(mesh, odd)
    assert specs == {"embed_tokens": {"embedding": P()}, "layers": [{"mlp": {"gate_proj": {"kernel": P()}}}],
                     "norm": {"scale": P()}}
    # A dim that does not divide leaves its mesh axis to the next dim in precedence order.
    rules = {"mlp": "fsdp", "embed": "fsdp"}
    assert _specs(mesh, {"up_proj": {"kernel": _sds(24, 7)}}, rules=rules) == {"up_proj": {"kernel": P("fsdp", None)}}
    assert _specs(mesh, {"up_proj": {"kernel": _sds(24, 40)}}, rules=rules) == {"up_proj": {"kernel": P(None, "fsdp")}}
    # A tuple of mesh axes needs the product to divide: 12 % (4 * 2) != 0.
    rules = {**sharding.RULES, "embed": ("data", "fsdp")}
    assert _specs(mesh, {"norm": {"scale": _sds(12)}, "lm_head": {"kernel": _sds(12, 64)}}, rules=rules) == {
        "norm": {"scale": P()}, "lm_head": {"kernel": P()}}


def test_unknown_paths_fall_back_to_largest_divisible_dim():
    mesh = sharding.make_mesh(**MESH_4X2)
    own = {"my_block": {"dense": {"kernel": _sds(8, 32)}, "b": _sds(32)},
           "x": _sds(3, 16, 8),
           "q_proj": {"kernel": _sds(24, 4, 6)}}  # a known name with a rank the table does not describe
    assert _specs(mesh, own) == {"my_block": {"dense": {"kernel": P(None, "fsdp")}, "b": P()},
                                 "x": P(None, "fsdp", None), "q_proj": {"kernel": P("fsdp", None, None)}}
    # fsdp=8: no dim of [6, 10] divisible by 8 -> replicated; [24, 40] -> the 40 (first of ties otherwise).
    mesh8 = sharding.make_mesh(data=1, fsdp=8)
    odd = {"w": _sds(6, 10), "v": _sds(24, 40), "x": _sds(3, 16, 8), "t": _sds(16, 16)}
    assert _specs(mesh8, odd) == {"w": P(), "v": P(None, "fsdp"), "x": P(None, "fsdp", None), "t": P("fsdp", None)}
    # Stacked layers [L, D, I] under "layers" get a leading replicated "layers" dim.
    stacked = {"layers": {"mlp": {"gate_proj": {"kernel": _sds(2, 24, 40)}}}}
    assert _specs(mesh, stacked)["layers"]["mlp"]["gate_proj"]["kernel"] == P(None, "fsdp", None)


def test_nnx_state_paths_resolve_like_the_dict():
    from flax import nnx

    class Attn(nnx.Module):
        def __init__(self):
            self.q_proj = nnx.Linear(24, 12, rngs=nnx.Rngs(0))
            self.o_proj = nnx.Linear(12, 24, use_bias=False, rngs=nnx.Rngs(0))

    _, state = nnx.split(jax.eval_shape(Attn))
    specs = sharding.param_specs(sharding.make_mesh(**MESH_4X2), state)
    leaves = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(
        specs, is_leaf=lambda x: isinstance(x, P))[0]}
    assert leaves == {"['o_proj']['kernel'].value": P(None, "fsdp"), "['q_proj']['bias'].value": P(),
                      "['q_proj']['kernel'].value": P("fsdp", None)}


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
    assert emb.sharding.spec == P(None, "fsdp")
    # Each device holds a quarter of the columns ("embed" over fsdp=4), not the whole table.
    assert {s.data.shape for s in emb.addressable_shards} == {(64, 6)}


@functools.partial(jax.jit, static_argnums=0)
def _apply(config, params, tokens, mask):
    return model.apply(config, params, tokens, attention_mask=mask)


def test_apply_on_4x2_mesh_equals_single_device():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    key = jax.random.key(1)
    params = sharding.init_params_sharded(CFG, key, mesh)
    assert params["embed_tokens"]["embedding"].sharding.spec == P(None, "fsdp")
    assert params["layers"][0]["mlp"]["down_proj"]["kernel"].sharding.spec == P(None, "fsdp")
    tokens = jax.random.randint(jax.random.key(2), (8, 10), 0, CFG.vocab_size)
    mask = jnp.ones((8, 10), jnp.int32).at[1, :3].set(0).at[6, :5].set(0)
    ref = _apply(CFG, model.init_params(CFG, key), tokens, mask)
    out = _apply(CFG, params, jax.device_put(tokens, sharding.batch_sharding(mesh)),
                 jax.device_put(mask, sharding.batch_sharding(mesh)))
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)


def test_activations_stay_batch_sharded_under_the_trainers_mesh():
    # The embedding is sharded along D ("embed" -> fsdp); the gathered activations would inherit
    # that D sharding. Traced under the mesh (as the train step is), they are batch-sharded.
    import jax.numpy as jnp

    from grpo_jax import model as model_lib

    mesh = sharding.make_mesh(data=4, fsdp=2)
    cfg = model_lib.ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                head_dim=16, intermediate_size=64)
    params = sharding.init_params_sharded(cfg, jax.random.key(0), mesh)
    assert params["embed_tokens"]["embedding"].sharding.spec == P(None, "fsdp")
    tokens = jax.device_put(jnp.ones((16, 5), jnp.int32), sharding.batch_sharding(mesh))

    def embed(p, t):
        return model_lib.batch_sharded(p["embed_tokens"]["embedding"][t])

    out = jax.jit(sharding.under_mesh(embed, mesh))(params, tokens)
    assert out.sharding.spec[0] == ("data", "fsdp") and all(s is None for s in out.sharding.spec[1:])
    assert jax.jit(embed)(params, tokens).shape == (16, 5, 32)  # no mesh context: unconstrained, works
