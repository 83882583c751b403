"""Checkpoint loading / saving at logit parity with transformers (torch CPU, f32).

Tiny random Qwen2 (tied, q/k/v bias) and Llama (untied, GQA, head_dim != hidden/heads, odd rope
theta) checkpoints are written by transformers' own save_pretrained. Every parameter, norm scales
and biases included, is re-drawn at a scale where logits are O(1), so a mis-mapped tensor shows.
"""
import dataclasses
import json
import pathlib

import chex
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
    chex.assert_trees_all_equal(params_a, params_b, strict=True)


def test_save_hf_round_trip(checkpoint, tmp_path):
    _, m, path = checkpoint
    config, params = weights.load_hf(path)
    out = weights.save_hf(tmp_path / "saved", config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(m)
    np.testing.assert_array_equal(_torch_logits(reloaded), _torch_logits(m))  # same weights, same torch
    config2, params2 = weights.load_hf(out)
    assert config2 == config
    chex.assert_trees_all_equal(params2, params, strict=True)
    # Saving again over the same path replaces it atomically and leaves no temporary directory.
    weights.save_hf(out, config, params)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_save_hf_of_fresh_bf16_params(tmp_path):
    config = model.ModelConfig(vocab_size=96, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               head_dim=16, intermediate_size=48, tie_embeddings=False, dtype="bfloat16",
                               param_dtype="bfloat16")
    params = model.init_params(config, jax.random.key(1))
    weights.save_hf(tmp_path, config, params)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.dtype == torch.bfloat16 and type(hf).__name__ == "LlamaForCausalLM"
    q = params["layers"][0]["self_attn"]["q_proj"]["kernel"]
    np.testing.assert_array_equal(hf.model.layers[0].self_attn.q_proj.weight.detach().float().numpy(),
                                  np.asarray(q, np.float32).T)
    config2, params2 = weights.load_hf(tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert config2 == config
    chex.assert_trees_all_equal(params2, params, strict=True)


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
    config16, params16 = weights.load_hf(tmp_path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert (config16.dtype, config16.param_dtype) == ("bfloat16", "bfloat16")
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
    np.testing.assert_array_equal(np.asarray(params16["lm_head"]["kernel"], np.float32),
                                  np.asarray(params["lm_head"]["kernel"]))


def test_bf16_compute_keeps_f32_params_by_default(checkpoint, tmp_path):
    """load_hf(dtype=bf16) alone = bf16 compute over f32 (master) params, the same values as an f32
    load; save_hf writes the weights as stored (f32) and the round trip keeps both dtypes."""
    _, m, path = checkpoint
    config, params = weights.load_hf(path)
    config16, params16 = weights.load_hf(path, dtype=jnp.bfloat16)
    assert (config16.dtype, config16.param_dtype) == ("bfloat16", "float32")
    assert config16 == dataclasses.replace(config, dtype="bfloat16")
    chex.assert_trees_all_equal(params16, params, strict=True)  # every leaf f32, bit for bit
    # The forward does run in bf16: close to transformers' f32 logits, but not at f32 parity
    # (measured max |diff| 0.12 / 0.09 on logits up to 6.2 / 5.2, qwen2 / llama: ~2%).
    ref = _torch_logits(m)
    err = np.abs(_our_logits(config16, params16)[REAL] - ref[REAL]).max()
    assert 1e-4 < err < 0.05 * np.abs(ref[REAL]).max(), err
    out = weights.save_hf(tmp_path / "saved", config16, params16)
    saved = json.loads((out / "config.json").read_text())
    assert saved["torch_dtype"] == saved["dtype"] == "float32"
    config2, params2 = weights.load_hf(out, dtype=jnp.bfloat16)
    assert config2 == config16
    chex.assert_trees_all_equal(params2, params16, strict=True)


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
        # fsdp shards the big kernels: the placement is not a trivial replication
        assert not params["embed_tokens"]["embedding"].sharding.is_fully_replicated
        chex.assert_trees_all_equal(params, expected, strict=True)


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
    with pytest.raises(ValueError, match=r"config\.json: unsupported model_type 'gpt2'; supported: llama, qwen2, "
                                         r"qwen3"):
        weights.load_hf(llama_dir)
    # llama3 scaling loads (tests/test_families.py); the other RoPE scalings are refused by name.
    _edit_config(llama_dir, model_type="llama",
                 rope_parameters={"rope_type": "yarn", "rope_theta": 500.0, "factor": 8.0})
    with pytest.raises(ValueError, match=r"config\.json: RoPE scaling 'yarn' \(rope_parameters\.rope_type\) "
                                         r"is not implemented by grpo_jax\.model; implemented: default, llama3"):
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
    extra = "model.layers.0.self_attn.o_proj.bias"
    _rewrite_safetensors(llama_dir, lambda t: t.update({extra: np.zeros(64, np.float32)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor " + extra.replace(".", r"\.")):
        weights.load_hf(llama_dir)
    _rewrite_safetensors(llama_dir, lambda t: [t.pop(extra), t.pop("lm_head.weight")])
    with pytest.raises(ValueError, match=r"model\.safetensors: tensor lm_head\.weight missing"):
        weights.load_hf(llama_dir)


# --------------------------------------------------------------------------- GGUF (tiny, written here)

_GGUF_MODULES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
                 "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
                 "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
                 "post_attention_layernorm": "ffn_norm"}


def _llama_cpp_permute(w, n_heads):
    """What llama.cpp's convert_hf_to_gguf does to Q/K rows (rotate_half -> interleaved RoPE)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_tiny_gguf(path, m, *, arch="llama", drop=(), replace=None, extra=None):
    """The torch Llama `m` as llama.cpp would convert it: permuted Q/K, Q8_0 matrices, F32 norms
    (and F32 down_proj, whose 80-wide rows do not split into Q8_0's blocks of 32)."""
    import gguf

    cfg = m.config
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_key_length(cfg.head_dim)  # llama.cpp writes these when head_dim != hidden / heads
    writer.add_value_length(cfg.head_dim)
    # transformers' GGUF loader also builds a tokenizer config: give it a trivial vocabulary.
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"t{i}" for i in range(cfg.vocab_size)])
    writer.add_token_merges([])
    writer.add_token_types([1] * cfg.vocab_size)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    for name, w in m.state_dict().items():
        w = w.numpy()
        parts = name.split(".")
        gname = top.get(name) or f"blk.{parts[2]}.{_GGUF_MODULES['.'.join(parts[3:-1])]}.weight"
        if gname in drop:
            continue
        if gname.endswith("attn_q.weight"):
            w = _llama_cpp_permute(w, cfg.num_attention_heads)
        elif gname.endswith("attn_k.weight"):
            w = _llama_cpp_permute(w, cfg.num_key_value_heads)
        if replace and gname in replace:
            w = replace[gname]
        if w.ndim == 2 and w.shape[1] % 32 == 0:  # Q8_0 blocks of 32 along a row; else F32 (as llama.cpp)
            q8 = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gname, q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gname, w)
    for gname, w in (extra or {}).items():
        writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_llama():
    return _random_torch_model("llama", seed=3)


def test_load_gguf_matches_transformers_gguf_loading(tiny_llama, tmp_path):
    path = _write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama)
    config, params = weights.load_gguf(path)
    from_hf = weights._config_from_hf(tiny_llama.config.to_dict(), file=tmp_path, dtype="float32")
    assert config == dataclasses.replace(from_hf, rms_norm_eps=config.rms_norm_eps)  # GGUF stores eps as f32
    assert config.rms_norm_eps == pytest.approx(1e-5) and config.num_kv_heads == 1 and config.head_dim == 8
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="tiny.gguf",
                                                           dtype=torch.float32).eval()
    state, original = hf.state_dict(), tiny_llama.state_dict()
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, transposed = weights._hf_name(keypath)
        ours = np.asarray(leaf).T if transposed else np.asarray(leaf)
        # Bit-identical to transformers' own GGUF loading (an independent un-permutation) ...
        np.testing.assert_array_equal(ours, state[name].numpy(), err_msg=name)
        # ... and within Q8_0 rounding of the torch original: half a step (step = block max|w| / 127)
        # plus up to 127 * 2^-11 of a step from storing the step in f16, so < 0.6 steps. A wrong
        # Q/K row order would be off by O(0.3), about 80 steps.
        w = original[name].numpy()
        assert np.abs(ours - w).max() <= 0.6 * np.abs(w).max() / 127, name
    np.testing.assert_allclose(_our_logits(config, params)[REAL], _torch_logits(hf)[REAL], atol=1e-4, rtol=0)
    # dtype alone is the compute dtype: the params stay f32 (param_dtype asks for bf16 storage).
    config16, params16 = weights.load_gguf(path, dtype=jnp.bfloat16)
    assert config16 == dataclasses.replace(config, dtype="bfloat16")
    chex.assert_trees_all_equal(params16, params, strict=True)
    _, params_bf16 = weights.load_gguf(path, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params_bf16))


def test_load_gguf_bad_input(tiny_llama, tmp_path):
    with pytest.raises(ValueError, match=r"none\.gguf: file missing"):
        weights.load_gguf(tmp_path / "none.gguf")
    path = _write_tiny_gguf(tmp_path / "gpt.gguf", tiny_llama, arch="gpt2")
    with pytest.raises(ValueError, match=r"gpt\.gguf: unsupported GGUF architecture 'gpt2'; supported: llama"):
        weights.load_gguf(path)
    path = _write_tiny_gguf(tmp_path / "drop.gguf", tiny_llama, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match=r"drop\.gguf: tensor blk\.1\.ffn_up\.weight missing"):
        weights.load_gguf(path)
    path = _write_tiny_gguf(tmp_path / "shape.gguf", tiny_llama,
                            replace={"blk.0.attn_v.weight": np.zeros((32, 64), np.float32)})
    with pytest.raises(ValueError, match=r"shape\.gguf: tensor blk\.0\.attn_v\.weight has shape \[32, 64\], "
                                         r"expected \[8, 64\]"):
        weights.load_gguf(path)
    # llama.cpp writes Llama 3.x RoPE scaling as per-frequency divisors: refused, not silently dropped.
    path = _write_tiny_gguf(tmp_path / "llama3.gguf", tiny_llama,
                            extra={"rope_freqs.weight": np.ones(4, np.float32)})
    with pytest.raises(ValueError, match=r"llama3\.gguf: tensor rope_freqs\.weight \(llama\.cpp's Llama 3\.x "
                                         r"RoPE scaling\) is not implemented by load_gguf"):
        weights.load_gguf(path)


def test_gguf_is_parsed_once_per_file_version(tiny_llama, tmp_path, monkeypatch):
    """The metadata parse (seconds for a real vocabulary) happens once per process and file: a run's
    header read, its weight load and a second set-up share it; a rewritten file is parsed again."""
    import gguf

    parsed = []
    real = gguf.GGUFReader
    monkeypatch.setattr(gguf, "GGUFReader", lambda path, *a, **k: parsed.append(path) or real(path, *a, **k))
    path = _write_tiny_gguf(tmp_path / "tiny.gguf", tiny_llama)
    config, params = weights.load_gguf(path)
    config2, params2 = weights.load_gguf(path)
    assert len(parsed) == 1 and config2 == config
    chex.assert_trees_all_equal(params2, params, strict=True)
    hidden = tiny_llama.config.hidden_size
    _write_tiny_gguf(tmp_path / "new.gguf", tiny_llama,
                     replace={"output_norm.weight": np.full(hidden, 2.0, np.float32)}).replace(path)
    _, params3 = weights.load_gguf(path)
    assert len(parsed) == 2
    np.testing.assert_array_equal(np.asarray(params3["norm"]["scale"]), 2.0)


# --------------------------------------------------------------------------- GGUF (SmolLM2-135M-Instruct)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    """(config, params, tokenizer, jitted apply): loaded once for the module's GGUF tests."""
    from grpo_jax.tokenizer import load_tokenizer

    config, params = weights.load_gguf(smollm2_gguf)
    forward = jax.jit(lambda p, t, m: model.apply(config, p, t, attention_mask=m))
    return config, params, load_tokenizer(smollm2_gguf), forward


PROMPT = "What is 2+3? Answer with a number."
NEW_TOKENS = 8


def _chat_ids(tok):
    return tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                   tokenize=True, return_dict=True)["input_ids"]


@pytest.mark.slow
def test_gguf_matches_transformers_gguf_loading(smollm2_gguf, smollm2):
    config, params, tok, forward = smollm2
    assert (config.num_layers, config.hidden_size, config.num_heads, config.num_kv_heads) == (30, 576, 9, 3)
    assert config.tie_embeddings and config.rope_theta == 100000.0 and "lm_head" not in params
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
    # Same Q4_1 data, same dequantiser: every tensor must agree bit for bit. This pins the Q/K
    # un-permutation and the [in, out] transposes independently of the forward pass.
    state = hf.state_dict()
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, transposed = weights._hf_name(keypath)
        ref = state[name].numpy()
        np.testing.assert_array_equal(np.asarray(leaf).T if transposed else np.asarray(leaf), ref, err_msg=name)
    # Logits: ours on a left-padded row (the width the greedy test below reuses) vs transformers
    # unpadded. Measured max abs error 1.2e-4 over all 42 positions, logits up to |38|: only f32
    # summation order differs over 30 layers, so 1e-3 (~3e-5 of the logit range) has 8x headroom.
    ids = _chat_ids(tok)
    n, width = len(ids), len(ids) + NEW_TOKENS
    tokens = np.zeros((1, width), np.int32)
    tokens[0, -n:] = ids
    mask = (np.arange(width) >= width - n).astype(np.int32)[None]
    ours = np.asarray(forward(params, tokens, mask))[0, -n:]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    err = np.abs(ours - ref).max()
    assert err <= 1e-3, err
    assert ours[-1].argmax() == ref[-1].argmax()


@pytest.mark.slow
def test_gguf_greedy_decodes_a_sensible_answer(smollm2):
    config, params, tok, forward = smollm2
    ids = _chat_ids(tok)
    width = len(ids) + NEW_TOKENS  # fixed width, left-padded: one compile for the whole loop
    out = []
    for _ in range(NEW_TOKENS):
        seq = ids + out
        tokens = np.zeros((1, width), np.int32)
        tokens[0, -len(seq):] = seq
        mask = (np.arange(width) >= width - len(seq)).astype(np.int32)[None]
        nxt = int(np.asarray(forward(params, tokens, mask))[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    answer = tok.decode(out, skip_special_tokens=True)
    assert "5" in answer, answer
