"""Checkpoint loading / saving at logit parity with transformers (torch CPU, f32).

Tiny random Qwen2 (tied, q/k/v bias) and Llama (untied, GQA, head_dim != hidden/heads, odd rope
theta) checkpoints are written by transformers' own save_pretrained. Every parameter, norm scales
and biases included, is re-drawn at a scale where logits are O(1), so a mis-mapped tensor shows.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from grpo_jax import model, weights  # noqa: E402

# Left-padded batch: row 0 has 3 pads, row 1 none, row 2 one. Compare real positions only.
TOKENS = np.array([[0, 0, 0, 5, 17, 99, 3, 64],
                   [1, 2, 3, 4, 5, 6, 7, 8],
                   [0, 120, 7, 7, 7, 31, 2, 9]], np.int32)
MASK = np.array([[0, 0, 0, 1, 1, 1, 1, 1],
                 [1, 1, 1, 1, 1, 1, 1, 1],
                 [0, 1, 1, 1, 1, 1, 1, 1]], np.int32)
REAL = MASK.astype(bool)

_CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=64, rms_norm_eps=1e-6),
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=8, tie_word_embeddings=False, max_position_embeddings=64,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500.0}),
}


def _random_torch_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(_CONFIGS[kind]())
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))  # norms start at 1: a swapped one must differ
            else:
                p.normal_(0.0, 0.15)  # biases start at 0: re-draw them too
    return m.eval()


def _torch_logits(m, tokens=TOKENS, mask=MASK) -> np.ndarray:
    with torch.no_grad():
        return m(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.float().numpy()


def _our_logits(config, params, tokens=TOKENS, mask=MASK) -> np.ndarray:
    return np.asarray(model.apply(config, params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def checkpoint(request, tmp_path_factory):
    """(kind, torch model, its save_pretrained directory)."""
    m = _random_torch_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    m.save_pretrained(path)
    return request.param, m, path


def test_load_hf_matches_transformers(checkpoint):
    kind, m, path = checkpoint
    config, params = weights.load_hf(path)
    assert config.num_kv_heads == (2 if kind == "qwen2" else 1)
    assert config.tie_embeddings == (kind == "qwen2") == ("lm_head" not in params)
    assert config.attention_bias == (kind == "qwen2")
    assert config.head_dim == (16 if kind == "qwen2" else 8)
    assert config.rope_theta == (10000.0 if kind == "qwen2" else 500.0)
    ref = _torch_logits(m)
    assert np.abs(ref[REAL]).max() > 1.0  # logits are not all ~0: the comparison has teeth
    ours = _our_logits(config, params)
    assert np.abs(ours[REAL] - ref[REAL]).max() <= 1e-4


def test_sharded_checkpoint_loads_identically(checkpoint, tmp_path):
    _, m, path = checkpoint
    m.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "model.safetensors").exists()
    config_a, params_a = weights.load_hf(path)
    config_b, params_b = weights.load_hf(tmp_path)
    assert config_a == config_b
    _assert_trees_equal(params_a, params_b)


def test_save_hf_round_trip(checkpoint, tmp_path):
    _, m, path = checkpoint
    config, params = weights.load_hf(path)
    out = weights.save_hf(tmp_path / "saved", config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(m)
    np.testing.assert_array_equal(_torch_logits(reloaded), _torch_logits(m))  # same weights, same torch
    config2, params2 = weights.load_hf(out)
    assert config2 == config
    _assert_trees_equal(params2, params)
    # Saving again over the same path replaces it atomically and leaves no temporary directory.
    weights.save_hf(out, config, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_save_hf_of_fresh_bf16_params(tmp_path):
    config = model.ModelConfig(vocab_size=96, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               head_dim=16, intermediate_size=48, tie_embeddings=False, dtype="bfloat16")
    params = model.init_params(config, jax.random.key(1))
    weights.save_hf(tmp_path, config, params)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.dtype == torch.bfloat16 and type(hf).__name__ == "LlamaForCausalLM"
    q = params["layers"][0]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(hf.model.layers[0].self_attn.q_proj.weight.detach().float().numpy(),
                                  np.asarray(q, np.float32).T)
    config2, params2 = weights.load_hf(tmp_path, dtype=jnp.bfloat16)
    assert config2 == config
    _assert_trees_equal(params2, params)


def test_bf16_checkpoint_loads(tmp_path):
    m = _random_torch_model("llama").to(torch.bfloat16)
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    config, params = weights.load_hf(tmp_path)  # bf16 on disk -> f32 params, exactly
    assert config.dtype == "float32" and params["norm"]["scale"].dtype == jnp.float32
    # Reference: transformers' own f32 load of the same file (m.float() would keep a RoPE inv_freq
    # buffer rounded to bf16 by .to(bfloat16), an error of ~1e-2 that is torch's, not ours).
    ref = _torch_logits(transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval())
    assert np.abs(_our_logits(config, params)[REAL] - ref[REAL]).max() <= 1e-4
    config16, params16 = weights.load_hf(tmp_path, dtype=jnp.bfloat16)
    assert config16.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
    np.testing.assert_array_equal(np.asarray(params16["lm_head"]["kernel"], np.float32),
                                  np.asarray(params["lm_head"]["kernel"]))


def test_load_hf_with_mesh_places_each_tensor(checkpoint):
    sharding = pytest.importorskip("grpo_jax.sharding")
    _, _, path = checkpoint
    config, expected = weights.load_hf(path)
    for data, fsdp in [(4, 2), (1, 8)]:
        mesh = sharding.make_mesh(data=data, fsdp=fsdp)
        config_m, params = weights.load_hf(path, mesh=mesh)
        assert config_m == config
        target = sharding.param_shardings(mesh, jax.eval_shape(lambda: expected))
        for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(target)):
            assert x.sharding == s
        _assert_trees_equal(params, expected)


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def llama_dir(tmp_path):
    _random_torch_model("llama").save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _edit_config(path: pathlib.Path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_dir_and_config(tmp_path, llama_dir):
    with pytest.raises(ValueError, match=r"nowhere/config\.json: file missing"):
        weights.load_hf(tmp_path / "nowhere")
    (llama_dir / "config.json").unlink()
    with pytest.raises(ValueError, match=r"ckpt/config\.json: file missing"):
        weights.load_hf(llama_dir)


def test_missing_safetensors_file(llama_dir):
    (llama_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"ckpt/model\.safetensors: file missing"):
        weights.load_hf(llama_dir)


def test_missing_shard_listed_in_index(tmp_path):
    _random_torch_model("llama").save_pretrained(tmp_path, max_shard_size="40KB")
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    name, shard = sorted(weight_map.items())[-1]
    (tmp_path / shard).unlink()
    with pytest.raises(ValueError, match=rf"{shard}: file missing .*index\.json for tensor ") as err:
        weights.load_hf(tmp_path)
    assert any(n in str(err.value) for n, f in weight_map.items() if f == shard)


def test_unsupported_model_type_and_rope_scaling(llama_dir):
    _edit_config(llama_dir, model_type="gpt2")
    with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'gpt2'; supported: llama, qwen2"):
        weights.load_hf(llama_dir)
    _edit_config(llama_dir, model_type="llama",
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0})
    with pytest.raises(ValueError, match=r"config\.json: RoPE scaling 'llama3' is not implemented"):
        weights.load_hf(llama_dir)


def _rewrite_safetensors(path: pathlib.Path, edit):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def test_wrong_shape_names_file_tensor_and_shapes(llama_dir):
    name = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_safetensors(llama_dir, lambda t: t.update({name: np.zeros((16, 64), np.float32)}))
    with pytest.raises(ValueError, match=rf"ckpt/model\.safetensors: tensor {name} has shape \[16, 64\], "
                                         r"expected \[8, 64\]"):
        weights.load_hf(llama_dir)


def test_missing_and_unexpected_tensor(llama_dir):
    _rewrite_safetensors(llama_dir, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(64, np.float32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor model\.layers\.0\.self_attn\.o_proj\.bias"):
        weights.load_hf(llama_dir)
    _rewrite_safetensors(llama_dir, lambda t: [t.pop("model.layers.0.self_attn.o_proj.bias"), t.pop("lm_head.weight")])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor lm_head\.weight missing"):
        weights.load_hf(llama_dir)
