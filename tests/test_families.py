"""Model families at logit parity with transformers (torch CPU, f32): Qwen3 and Llama 3.x.

Tiny random checkpoints are written by transformers' own save_pretrained, every parameter re-drawn at a
scale where logits are O(1) (norm scales, Qwen3's per-head q/k norms included), as in test_weights.py.
- Qwen3: per-head q/k RMSNorm before RoPE, no q/k/v bias, head_dim 24 != hidden / heads = 16, tied.
- Llama 3.x: the "llama3" RoPE scaling with original_max_position_embeddings 32 and head_dim 16 at
  theta 1e4, so the batch (48 positions) runs past the low-frequency wavelength threshold (32 / 1): the
  scaling changes the logits by O(1) there, which the test checks along with parity.
Qwen2 / Qwen2.5 / SmolLM2 (Llama) and GGUF stay covered by test_weights.py.
"""
import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from grpo_jax import model, sampling, weights  # noqa: E402
from grpo_jax.model import RopeScaling  # noqa: E402

B, L = 3, 48  # one shape for every full forward here (each new shape costs a compile)
PADS = (5, 0, 11)  # left padding per row
LLAMA3 = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=32)

_CONFIGS = {
    "qwen3": lambda: transformers.Qwen3Config(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, tie_word_embeddings=True, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000.0}),
    "llama3": lambda: transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=False, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 32}),
}


def _random_torch_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    m = transformers.AutoModelForCausalLM.from_config(_CONFIGS[kind]())
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name:  # input / post-attention / final norms, and Qwen3's q_norm / k_norm
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.15)
    return m.eval()


def _batch(seed=0):
    """Left-padded tokens i32[B, L] (pads hold junk ids) and mask [B, L]."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 128, (B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    for r, pad in enumerate(PADS):
        mask[r, :pad] = 0
    return tokens, mask


TOKENS, MASK = _batch()
REAL = MASK.astype(bool)


def _torch_logits(m, tokens=TOKENS, mask=MASK) -> np.ndarray:
    # Explicit positions = ours (cumsum of the mask), so both sides rotate by the same absolute angles.
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        return m(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                 position_ids=torch.tensor(positions, dtype=torch.long)).logits.float().numpy()


_apply = jax.jit(model.apply, static_argnums=0)


def _our_logits(config, params, tokens=TOKENS, mask=MASK) -> np.ndarray:
    return np.asarray(_apply(config, params, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))


@pytest.fixture(scope="module", params=["qwen3", "llama3"])
def checkpoint(request, tmp_path_factory):
    """(kind, torch model, its save_pretrained directory)."""
    m = _random_torch_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    m.save_pretrained(path)
    return request.param, m, path


# --------------------------------------------------------------------------- loading, logit parity


def test_load_hf_matches_transformers(checkpoint):
    kind, m, path = checkpoint
    config, params = weights.load_hf(path)
    attn = params["layers"][0]["self_attn"]
    if kind == "qwen3":
        assert config.qk_norm and not config.attention_bias and config.rope_scaling is None
        assert config.head_dim == 24 != config.hidden_size // config.num_heads  # Qwen3's explicit head_dim
        assert attn["q_norm"]["scale"].shape == attn["k_norm"]["scale"].shape == (24,)
        assert "bias" not in attn["q_proj"] and config.tie_embeddings and "lm_head" not in params
        np.testing.assert_array_equal(np.asarray(attn["k_norm"]["scale"]),
                                      m.model.layers[0].self_attn.k_norm.weight.detach().numpy())
    else:
        assert not config.qk_norm and "q_norm" not in attn
        assert config.rope_scaling == LLAMA3 and config.rope_theta == 10000.0
    ref = _torch_logits(m)
    assert np.abs(ref[REAL]).max() > 1.0  # logits are not all ~0: the comparison has teeth
    ours = _our_logits(config, params)
    err = np.abs(ours[REAL] - ref[REAL]).max()
    print(f"{kind}: max |ours - transformers| = {err:.2e} (logits up to {np.abs(ref[REAL]).max():.1f})")
    assert err <= 1e-4, err
    if kind == "llama3":
        # The scaling matters here: plain RoPE at the same theta moves the logits far more than the
        # tolerance (measured max 5.3), also at positions 40+, past original_max_position_embeddings.
        plain = _our_logits(dataclasses.replace(config, rope_scaling=None), params)
        print(f"llama3: scaled vs unscaled max |diff| = {np.abs(ours - plain)[REAL].max():.2f}")
        assert np.abs(ours - plain)[REAL].max() > 1e-3
        assert np.abs(ours[1, 40:] - plain[1, 40:]).max() > 1e-3


def test_rope_inv_freq_equals_transformers():
    """Our llama3 inverse frequencies == transformers' `_compute_llama3_parameters`, and all three bands
    (kept, interpolated, divided by factor) occur at these settings."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = _CONFIGS["llama3"]()
    ref = ROPE_INIT_FUNCTIONS["llama3"](hf_config, "cpu")[0].numpy()
    ours = np.asarray(model.rope_inv_freq(16, theta=10000.0, scaling=LLAMA3))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)
    plain = np.asarray(model.rope_inv_freq(16, theta=10000.0))
    ratio = plain / ours
    assert ratio[0] == 1.0  # wavelength 2 pi < 32 / 4: kept
    assert 1.0 < ratio[1] < 8.0  # wavelength 19.9: interpolated
    np.testing.assert_allclose(ratio[2:], 8.0, rtol=1e-6)  # wavelength >= 62.8 > 32 / 1: divided by 8


# --------------------------------------------------------------------------- decode path


def test_cached_prefill_and_decode_match_full_forward(checkpoint):
    """apply_with_cache (prefill 30 slots, then 18 single-token steps, positions up to 47) == apply."""
    _, _, path = checkpoint
    config, params = weights.load_hf(path)
    tokens, mask = jnp.asarray(TOKENS), jnp.asarray(MASK)
    full = _our_logits(config, params)
    positions = model.positions_from_mask(mask)
    step = jax.jit(model.apply_with_cache, static_argnums=0)
    p = 30
    logits, cache = step(config, params, tokens[:, :p], positions[:, :p], model.init_cache(config, B, L), 0, mask)
    got = [logits]
    for t in range(p, L):
        logits, cache = step(config, params, tokens[:, t:t + 1], positions[:, t:t + 1], cache, t, mask)
        got.append(logits)
    got = np.asarray(jnp.concatenate(got, axis=1))
    np.testing.assert_allclose(got[REAL], full[REAL], atol=1e-4, rtol=0)


def test_greedy_sample_equals_transformers_generate(checkpoint):
    """sampling.sample at temperature 0 (KV cache, prefill + decode loop) gives transformers'
    generate(do_sample=False) tokens on left-padded prompts (positions up to 45 for the longest)."""
    _, m, path = checkpoint
    config, params = weights.load_hf(path)
    p, new = 40, 6
    tokens, mask = TOKENS[:, :p], MASK[:, :p]
    m.generation_config.eos_token_id = None  # run all `new` steps; our eos_id=-1 never matches either
    m.generation_config.pad_token_id = 0
    with torch.no_grad():
        ref = m.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                         do_sample=False, max_new_tokens=new, min_new_tokens=new)[:, p:].numpy()
    out = sampling.sample(config, params, jnp.asarray(tokens), jnp.asarray(mask), jax.random.key(0),
                          max_new_tokens=new, eos_id=-1, temperature=0.0)
    assert ref.shape == (B, new)
    np.testing.assert_array_equal(np.asarray(out.tokens), ref)
    assert len(np.unique(ref)) > 3  # not one repeated token


# --------------------------------------------------------------------------- save_hf, config forms


def test_save_hf_round_trip(checkpoint, tmp_path):
    _, m, path = checkpoint
    config, params = weights.load_hf(path)
    out = weights.save_hf(tmp_path / "saved", config, params)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded) is type(m)  # Qwen3ForCausalLM / LlamaForCausalLM
    assert reloaded.config.rope_parameters == m.config.rope_parameters
    assert reloaded.config.head_dim == m.config.head_dim
    np.testing.assert_array_equal(_torch_logits(reloaded), _torch_logits(m))  # same weights, same torch
    config2, params2 = weights.load_hf(out)
    assert config2 == config
    chex.assert_trees_all_equal(params2, params, strict=True)


def test_save_hf_of_fresh_params_loads_in_transformers(tmp_path):
    """A Qwen3 + llama3-scaled random init (no checkpoint behind it) saves to a Qwen3ForCausalLM with
    our logits (Qwen3 takes any RoPE type in transformers)."""
    config = model.ModelConfig(vocab_size=128, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                               head_dim=24, intermediate_size=48, qk_norm=True, rope_scaling=LLAMA3,
                               max_position_embeddings=128)
    params = model.init_params(config, jax.random.key(1))
    assert params["layers"][0]["self_attn"]["q_norm"]["scale"].shape == (24,)
    params = jax.tree.map(lambda x: x * 4.0, params)  # logits O(1), norm scales != 1
    weights.save_hf(tmp_path, config, params)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "Qwen3ForCausalLM" and hf.config.rope_parameters["rope_type"] == "llama3"
    ref = _torch_logits(hf)
    assert np.abs(ref[REAL]).max() > 0.5
    assert np.abs(_our_logits(config, params)[REAL] - ref[REAL]).max() <= 1e-4
    with pytest.raises(ValueError, match="qk_norm with attention_bias"):
        weights.save_hf(tmp_path / "bad", dataclasses.replace(config, attention_bias=True), params)


def _edit_config(path, drop=(), **changes):
    cfg = json.loads((path / "config.json").read_text())
    for key in drop:
        cfg.pop(key, None)
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture()
def llama3_dir(tmp_path):
    _random_torch_model("llama3").save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_legacy_rope_scaling_key(llama3_dir):
    """transformers 4 files: rope_theta + rope_scaling {"rope_type" or "type": "llama3", ...}; a missing
    original_max_position_embeddings falls back to max_position_embeddings, as transformers does."""
    expected, _ = weights.load_hf(llama3_dir)
    legacy = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 32}
    _edit_config(llama3_dir, drop=["rope_parameters"], rope_theta=10000.0, rope_scaling=legacy)
    assert weights.load_hf(llama3_dir)[0] == expected
    legacy = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    _edit_config(llama3_dir, rope_scaling=legacy, max_position_embeddings=32)
    assert weights.load_hf(llama3_dir)[0] == dataclasses.replace(expected, max_position_embeddings=32)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "yarn", "longrope"])
def test_other_rope_types_are_refused(llama3_dir, rope_type):
    _edit_config(llama3_dir, rope_parameters={"rope_type": rope_type, "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(ValueError, match=rf"ckpt/config\.json: RoPE scaling '{rope_type}' "
                                         r"\(rope_parameters\.rope_type\) is not implemented"):
        weights.load_hf(llama3_dir)
    _edit_config(llama3_dir, drop=["rope_parameters"], rope_scaling={"type": rope_type, "factor": 4.0})
    with pytest.raises(ValueError, match=rf"RoPE scaling '{rope_type}' \(rope_scaling\.rope_type\)"):
        weights.load_hf(llama3_dir)


def test_bad_llama3_parameters(llama3_dir):
    _edit_config(llama3_dir, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0})
    with pytest.raises(ValueError, match=r"config\.json: rope_parameters \(rope_type 'llama3'\) lacks "
                                         r"low_freq_factor, high_freq_factor"):
        weights.load_hf(llama3_dir)
    _edit_config(llama3_dir, rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                                              "low_freq_factor": 4.0, "high_freq_factor": 1.0})
    with pytest.raises(ValueError, match=r"config\.json: rope_parameters: .*high_freq_factor=1\.0 > low"):
        weights.load_hf(llama3_dir)


def test_qwen3_config_mapping():
    """head_dim: taken as written, or transformers' Qwen3 default 128 when absent (not hidden / heads);
    a qwen3 o_proj bias or sliding window is refused."""
    hf = {"model_type": "qwen3", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
          "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2}
    cfg = weights._config_from_hf(hf, file="c.json", dtype="float32")
    assert cfg.qk_norm and not cfg.attention_bias and cfg.head_dim == 128
    assert transformers.Qwen3Config(**{k: v for k, v in hf.items() if k != "model_type"}).head_dim == 128
    assert weights._config_from_hf({**hf, "head_dim": 8}, file="c.json", dtype="float32").head_dim == 8
    with pytest.raises(ValueError, match=r"c\.json: attention_bias=true \(Qwen3 puts a bias on o_proj too\)"):
        weights._config_from_hf({**hf, "attention_bias": True}, file="c.json", dtype="float32")
    with pytest.raises(ValueError, match=r"c\.json: use_sliding_window=true is not implemented"):
        weights._config_from_hf({**hf, "use_sliding_window": True}, file="c.json", dtype="float32")


def test_model_config_rope_scaling_is_hashable_and_validated():
    base = dict(vocab_size=8, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1, head_dim=8,
                intermediate_size=8)
    a = model.ModelConfig(**base, rope_scaling=LLAMA3)
    b = model.ModelConfig(**base, rope_scaling=dataclasses.asdict(LLAMA3))  # a dict (JSON) is converted
    assert a == b and hash(a) == hash(b) and isinstance(b.rope_scaling, RopeScaling)
    assert model.ModelConfig(**dataclasses.asdict(a)) == a  # asdict round trip
    with pytest.raises(ValueError, match=r"rope_type='yarn'"):
        RopeScaling(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0,
                    original_max_position_embeddings=32, rope_type="yarn")
    with pytest.raises(ValueError, match="rope_scaling="):
        model.ModelConfig(**base, rope_scaling=("llama3", 8.0))


def test_load_with_mesh(checkpoint):
    """The 1-D q_norm / k_norm scales place (replicated) like the other norms."""
    sharding = pytest.importorskip("grpo_jax.sharding")
    _, _, path = checkpoint
    config, expected = weights.load_hf(path)
    mesh = sharding.make_mesh(data=2, fsdp=4)
    _, params = weights.load_hf(path, mesh=mesh)
    target = sharding.param_shardings(mesh, jax.eval_shape(lambda: expected))
    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(target)):
        assert x.sharding == s
    chex.assert_trees_all_equal(params, expected, strict=True)
