"""LoRA: only the adapters train (and sit in the optimizer state), the base stays bitwise unchanged
and is the reference with the adapters off, and both exports (folded weights; a PEFT adapter
directory) reproduce the adapted model's logits in transformers."""
import dataclasses
import json
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import model as model_lib
from grpo_jax import sharding
from grpo_jax import train_step as ts
from grpo_jax import weights

CFG = model_lib.ModelConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=16, intermediate_size=128, tie_embeddings=False, attention_bias=True,
                            lora_rank=4, lora_alpha=8.0)
TOKENS = jnp.array([[5, 7, 9, 11, 13, 2], [0, 0, 4, 8, 15, 16]], jnp.int32)
MASK = jnp.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], jnp.int32)


def _params_and_adapters(seed=0, nonzero_b=False):
    params = model_lib.init_params(CFG, jax.random.key(seed))
    adapters = model_lib.init_lora(CFG, jax.random.key(seed + 1))
    if nonzero_b:  # a trained-looking adapter: B != 0
        leaves, tree = jax.tree.flatten(adapters)
        keys = jax.random.split(jax.random.key(seed + 2), len(leaves))
        adapters = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return params, adapters


def test_fresh_adapters_change_nothing_and_hand_checked_delta():
    params, adapters = _params_and_adapters()
    base = model_lib.apply(CFG, params, TOKENS, attention_mask=MASK)
    on = model_lib.apply(CFG, model_lib.merge_lora(params, adapters), TOKENS, attention_mask=MASK)
    np.testing.assert_array_equal(np.asarray(on), np.asarray(base))  # B = 0
    # One projection by hand: x W + b + (alpha / r) (x A) B.
    _, trained = _params_and_adapters(nonzero_b=True)
    p = model_lib.merge_lora(params, trained)["layers"][0]["self_attn"]["q_proj"]
    x = jax.random.normal(jax.random.key(9), (3, 64))
    want = x @ p["kernel"] + p["bias"] + (CFG.lora_alpha / CFG.lora_rank) * (x @ p["lora_a"] @ p["lora_b"])
    np.testing.assert_allclose(model_lib._linear(p, x, jnp.float32, CFG.lora_alpha / CFG.lora_rank), want,
                               rtol=1e-5, atol=1e-5)


def _batch(seed=0, n=8, p=5, t=4):
    rng = np.random.default_rng(seed)
    return ts.Batch(jnp.asarray(rng.integers(3, 96, (n, p)), jnp.int32), jnp.ones((n, p), jnp.int32),
                    jnp.asarray(rng.integers(3, 96, (n, t)), jnp.int32), jnp.ones((n, t), jnp.float32),
                    jnp.asarray(rng.normal(size=n), jnp.float32))


def test_lora_step_trains_only_adapters_and_leaves_the_base_bitwise():
    mesh = sharding.make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    before = jax.device_get(params)
    adapters = model_lib.init_lora(CFG, jax.random.key(1))
    opt = ts.make_optimizer(learning_rate=1e-2)
    state = ts.init_state(adapters, opt, mesh)
    step = ts.jit_train_step(
        ts.build_train_step(CFG, opt, use_reference=True, lora=True, num_iterations=2), mesh,
        ts.state_shardings(mesh, opt, jax.eval_shape(lambda a: a, adapters)),
        sharding.param_shardings(mesh, params))
    hp = ts.make_hparams(epsilon=0.2, beta=0.04, temperature=1.0)
    for i in range(3):
        state, metrics = step(state, params, _batch(i), hp)
    chex.assert_trees_all_equal(jax.device_get(params), before)  # the base: bitwise unchanged
    moved = [float(jnp.abs(b).max()) for b in jax.tree.leaves(
        jax.tree.map(lambda a: a, state.params)) if b.shape[0] == CFG.lora_rank]
    assert min(moved) > 0  # every B left zero: the adapters trained
    assert float(metrics["kl"]) > 0  # the reference (adapters off) now differs from the policy
    # The optimizer state holds the adapters' moments only.
    mu = state.opt_state[1][0].mu
    assert jax.tree.structure(mu) == jax.tree.structure(adapters)


def test_lora_optimizer_state_is_under_two_percent_of_full():
    big = dataclasses.replace(CFG, vocab_size=512, hidden_size=256, intermediate_size=1024, num_layers=4,
                              lora_rank=8, lora_targets=("q", "v"))
    opt = ts.make_optimizer(learning_rate=1e-3)

    def size(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    full = size(jax.eval_shape(opt.init, jax.eval_shape(lambda: model_lib.init_params(big, jax.random.key(0)))))
    lora = size(jax.eval_shape(opt.init, jax.eval_shape(lambda: model_lib.init_lora(big, jax.random.key(0)))))
    assert lora / full < 0.02, lora / full  # measured 0.0054


def test_merged_export_and_peft_adapter_reproduce_the_adapted_logits(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    params, adapters = _params_and_adapters(nonzero_b=True)
    adapted = model_lib.merge_lora(params, adapters)
    ours = np.asarray(model_lib.apply(CFG, adapted, TOKENS, attention_mask=MASK))
    # 1. Folded into the weights: a plain checkpoint, in our loader and in transformers.
    weights.save_hf(tmp_path / "merged", CFG, adapted)
    cfg2, merged = weights.load_hf(tmp_path / "merged")
    assert cfg2.lora_rank == 0 and not weights._has_lora(merged)
    np.testing.assert_allclose(np.asarray(model_lib.apply(cfg2, merged, TOKENS, attention_mask=MASK)), ours,
                               atol=1e-4)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        got = hf(input_ids=torch.tensor(np.asarray(TOKENS), dtype=torch.long),
                 attention_mask=torch.tensor(np.asarray(MASK))).logits.numpy()
    real = np.asarray(MASK, bool)
    np.testing.assert_allclose(got[real], ours[real], atol=1e-4)
    # 2. A PEFT adapter directory on the base model.
    weights.save_hf(tmp_path / "base", CFG, params)
    weights.save_hf(tmp_path / "adapter", CFG, adapted, adapter_only=True, base_model=str(tmp_path / "base"))
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    with_adapter = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = with_adapter(input_ids=torch.tensor(np.asarray(TOKENS), dtype=torch.long),
                           attention_mask=torch.tensor(np.asarray(MASK))).logits.numpy()
    np.testing.assert_allclose(got[real], ours[real], atol=1e-4)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        weights.save_hf(tmp_path / "x", CFG, params, adapter_only=True)


def test_lora_through_the_program_resumes_exactly_and_checkpoints_only_the_adapters(tmp_path):
    from grpo_jax import metrics as metrics_lib
    from grpo_jax import train

    from test_train import QUICKSTART, TINY, rows_without_timing

    args = ["--config", QUICKSTART] + [f"--config.{o}" for o in TINY + [
        "sft.steps=0", "model.lora_rank=4", "model.lora_targets=q,v,down", "optim.learning_rate=1e-2",
        "train.steps=3", "train.checkpoint_every=1", "train.eval_every=3", "mesh.data=2", "mesh.fsdp=2"]]
    train.run(args + ["--workdir", str(tmp_path / "straight")])
    train.run(args + ["--workdir", str(tmp_path / "resumed")], stop_after=1)
    train.run(args + ["--workdir", str(tmp_path / "resumed")])
    straight, resumed = rows_without_timing(tmp_path / "straight"), rows_without_timing(tmp_path / "resumed")
    assert straight == resumed
    assert straight[-1]["kl"] > 0  # the policy (adapters on) moved away from the base (adapters off)
    # What a checkpoint holds: the adapters and their Adam moments, no copy of the base or reference
    # (Orbax's tree metadata lists every saved array by its path).
    import json
    saved = json.loads((tmp_path / "straight" / "checkpoints" / "3" / "state" / "_METADATA").read_text())
    paths = list(saved["tree_metadata"])
    arrays = [p for p in paths if "lora_" in p]
    assert arrays and len(arrays) >= 3 * 2 * 2 * 3  # (params, mu, nu) x 2 layers x (a, b) x 3 targets
    assert not [p for p in paths if any(w in p for w in ("'ref'", "kernel", "embedding", "scale", "bias"))], paths
    assert metrics_lib.read_metrics(tmp_path / "straight")[-1]["step"] == 3


def test_lora_base_is_stored_in_the_compute_dtype_and_the_adapters_in_the_param_dtype(tmp_path):
    """The frozen base is only read through casts to the compute dtype, so a bf16-compute LoRA run
    stores it in bf16 (half the memory of a 7B base); the trained adapters keep f32 master weights."""
    from grpo_jax import build
    from grpo_jax import config as cfg_lib

    from test_train import QUICKSTART, TINY

    config = cfg_lib.load_config(QUICKSTART, TINY + ["sft.steps=0", "model.lora_rank=4", "model.dtype=bfloat16"])
    s = build.setup(config, tmp_path)
    assert {x.dtype for x in jax.tree.leaves(s.params)} == {jnp.dtype(jnp.bfloat16)}
    adapters = build.init_adapters(s)
    assert {x.dtype for x in jax.tree.leaves(adapters)} == {jnp.dtype(jnp.float32)}


def test_folded_export_is_the_trained_policy_exactly(tmp_path, capsys):
    # The LoRA run stores its base in the compute dtype (bf16). Folding (alpha / r) A B into that bf16
    # kernel and rounding back erased most of a small update (a delta of std 1e-4 on weights of std
    # 0.02 kept 68 % of its entries), and config.json said float32 over bf16 tensors. The export now
    # folds in f32 and writes f32: the loaded kernels are base + delta to f32 round-off.
    params, adapters = _params_and_adapters()
    base16 = model_lib.cast_params(params, jnp.bfloat16)
    leaves, tree = jax.tree.flatten(adapters)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    # B ~ 5e-4: deltas of ~1e-4, small against the weights (std ~0.02-0.1), as in a real LoRA run
    adapters = jax.tree.unflatten(tree, [x + 5e-4 * jax.random.normal(k, x.shape) * (x.ndim == 2 and not x.any())
                                         for x, k in zip(leaves, keys)])
    adapted = model_lib.merge_lora(base16, adapters)
    weights.save_hf(tmp_path / "f32", CFG, adapted)
    cfg2, loaded = weights.load_hf(tmp_path / "f32")
    assert cfg2.param_dtype == "float32"
    scale = CFG.lora_alpha / CFG.lora_rank
    q = adapted["layers"][0]["self_attn"]["q_proj"]
    delta = np.asarray(q["lora_a"], np.float32) @ np.asarray(q["lora_b"], np.float32) * scale
    assert 1e-5 < np.abs(delta).mean() < 1e-3
    want = np.asarray(q["kernel"], np.float32) + delta
    np.testing.assert_allclose(np.asarray(loaded["layers"][0]["self_attn"]["q_proj"]["kernel"]), want, rtol=1e-6, atol=1e-8)
    # bf16 on request: config.json says so, and what rounding loses is reported
    weights.save_hf(tmp_path / "bf16", CFG, adapted, dtype="bfloat16")
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    lost = float(re.search(r"loses ([0-9.]+) %", capsys.readouterr().err).group(1))
    assert 5.0 < lost < 95.0, lost
    cfg3, _ = weights.load_hf(tmp_path / "bf16", param_dtype=jnp.bfloat16)
    assert cfg3.param_dtype == "bfloat16"
