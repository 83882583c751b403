"""grpo_jax.sampling's weight layouts on a mesh (config key sampling.weight_layout): "tensor" decodes
with tensor-parallel weights and gives the tokens and log-probs of one device and of "replicated";
its compiled program gathers no weight inside the decode loop and holds no replicated copy of the
big weights."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from grpo_jax import config as cfg_lib
from grpo_jax import model, sampling, sharding
from grpo_jax.model import ModelConfig

# fsdp = 4 below. GQA: 4 query / 2 KV heads, 2 not dividing 4 -> attention replicated, rows split.
GQA = ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, tie_embeddings=True, attention_bias=True)
# Whole heads on every chip (8 / 4 heads over 4): head-parallel attention, KV cache split by heads.
HEADS = ModelConfig(vocab_size=96, hidden_size=32, num_layers=2, num_heads=8, num_kv_heads=4, head_dim=8,
                    intermediate_size=64, tie_embeddings=False, attention_bias=True)
N, P = 8, 6
NO_EOS = -1


def _params(cfg, key=jax.random.key(0)):
    params = model.init_params(cfg, key)
    head = ("embed_tokens", "embedding") if cfg.tie_embeddings else ("lm_head", "kernel")
    params[head[0]][head[1]] = params[head[0]][head[1]] * 25.0  # peaked logits: no float-noise ties
    return params


def _prompts(vocab):
    tokens = np.array(jax.random.randint(jax.random.key(1), (N, P), 0, vocab))
    mask = np.ones((N, P), np.int32)
    mask[1, :2] = 0
    mask[3, :5] = 0
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.parametrize("cfg,t", [(GQA, 10), (HEADS, 10), (HEADS, 130)],
                         ids=["gqa_kv_not_dividing", "whole_heads", "whole_heads_cache_grows"])
def test_tensor_equals_one_device_and_replicated(cfg, t):
    params = _params(cfg)
    prompt, mask = _prompts(cfg.vocab_size)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    sharded = jax.device_put(params, sharding.param_shardings(mesh, params))
    batch = sharding.batch_sharding(mesh)
    kwargs = dict(max_new_tokens=t, eos_id=NO_EOS, temperature=1.0)
    ref = sampling.sample(cfg, params, prompt, mask, jax.random.key(9), **kwargs)
    on_mesh = {layout: sampling.sample(cfg, sharded, jax.device_put(prompt, batch), jax.device_put(mask, batch),
                                       jax.random.key(9), weight_layout=layout, **kwargs)
               for layout in sampling.WEIGHT_LAYOUTS}
    for out in on_mesh.values():
        np.testing.assert_array_equal(out.tokens, ref.tokens)
        np.testing.assert_array_equal(out.mask, ref.mask)
        np.testing.assert_allclose(out.logps, ref.logps, atol=1e-5)
    np.testing.assert_allclose(on_mesh["tensor"].logps, on_mesh["replicated"].logps, atol=1e-5)


# ------------------------------------------------------------------ the compiled program
def _computations(text: str) -> dict:
    comps, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if name is None and m:
            name, comps[m.group(1)] = m.group(1), []
        elif name is not None and line.strip() == "}":
            name = None
        elif name is not None:
            comps[name].append(line)
    return comps


def _all_gather_shapes(text: str) -> tuple[list, list]:
    """Result dims of every all-gather: (inside the decode while loops, anywhere)."""
    comps = _computations(text)
    todo = [b for b in re.findall(r"body=%?([\w.\-]+)", text) if "windowed_dot_general" not in b]
    seen = set()
    while todo:
        c = todo.pop()
        if c not in seen and c in comps:
            seen.add(c)
            for line in comps[c]:
                todo += re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)

    def shapes(names):
        out = []
        for c in names:
            for line in comps[c]:
                m = re.search(r"=\s*\w+\[([\d,]*)\]\S*\s+all-gather(?:-start)?\(", line)
                if m:
                    out.append(tuple(int(d) for d in m.group(1).split(",") if d))
        return out
    return shapes(seen), shapes(comps)


# Weight dims distinct from every activation's (N=8 rows, P=6, D=40, F=320, V=1280).
BIG = ModelConfig(vocab_size=1280, hidden_size=40, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                  intermediate_size=320, tie_embeddings=False, attention_bias=True)


def _compile(cfg, mesh, layout):
    abstract = jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                          sharding.param_shardings(mesh, abstract))
    batch = sharding.batch_sharding(mesh)
    rep = NamedSharding(mesh, PartitionSpec())
    prompt = jax.ShapeDtypeStruct((N, P), jnp.int32, sharding=batch)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=rep)
    compiled = sampling._sample_jit.lower(
        cfg, params, prompt, prompt, key, jax.ShapeDtypeStruct((), jnp.float32, sharding=rep),
        jax.ShapeDtypeStruct((1,), jnp.int32, sharding=rep), max_new_tokens=10, top_k=0, top_p=1.0,
        prompt_sharding=batch, weight_layout=layout).compile()
    return compiled, abstract


def test_tensor_program_gathers_no_weight():
    mesh = sharding.make_mesh(data=1, fsdp=4, devices=jax.devices()[:4])
    tensor, abstract = _compile(BIG, mesh, "tensor")
    replicated, _ = _compile(BIG, mesh, "replicated")
    weights = {tuple(x.shape) for x in jax.tree.leaves(abstract) if x.ndim == 2}
    big = {(BIG.vocab_size, BIG.hidden_size), (BIG.hidden_size, BIG.vocab_size),
           (BIG.hidden_size, BIG.intermediate_size), (BIG.intermediate_size, BIG.hidden_size)}
    in_loop, anywhere = _all_gather_shapes(tensor.as_text())
    assert not weights & set(in_loop), in_loop  # the decode steps gather activations only
    assert not big & set(anywhere), anywhere  # MLP, embedding, LM head never whole on a chip
    rep_loop, rep_anywhere = _all_gather_shapes(replicated.as_text())
    assert not rep_loop and big <= set(rep_anywhere)  # replicated: all gathered once, before the loop
    # Memory: "replicated" holds every weight whole (f32 here) in its temporaries; "tensor" a quarter
    # of the MLP / vocab weights.
    total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract))
    t_mem, r_mem = tensor.memory_analysis(), replicated.memory_analysis()
    assert t_mem.argument_size_in_bytes == r_mem.argument_size_in_bytes
    assert r_mem.temp_size_in_bytes - t_mem.temp_size_in_bytes > total // 2, (r_mem, t_mem, total)


def test_weight_layout_is_checked():
    c = cfg_lib.Config()
    c.sampling.weight_layout = "tensor"
    cfg_lib.validate(c)
    c.sampling.weight_layout = "pipeline"
    with pytest.raises(cfg_lib.ConfigError, match="sampling.weight_layout"):
        cfg_lib.validate(c)
    assert cfg_lib.CHOICES["sampling.weight_layout"] == sampling.WEIGHT_LAYOUTS
    prompt, mask = _prompts(GQA.vocab_size)
    with pytest.raises(ValueError, match="weight_layout"):
        sampling.sample(GQA, _params(GQA), prompt, mask, jax.random.key(0), max_new_tokens=2, eos_id=NO_EOS,
                        weight_layout="pipeline")
