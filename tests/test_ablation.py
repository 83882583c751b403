"""grpo_jax.ablation: the shared warm start is computed once and restored bit-identically, keyed by
exactly what SFT depends on; its Hugging Face twin is the same policy; the notebooks' sweep command."""
import hashlib
import json
import pathlib

import jax
import numpy as np

from grpo_jax import ablation
from grpo_jax import config as cfg_lib
from grpo_jax.config import Config


def _config(**sft):
    c = Config()
    m = c.model
    m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size = 32, 1, 2, 1, 16, 64
    c.task.instruction = False
    c.task.eval_size, c.sft.validation_size = 8, 8
    c.sampling.max_prompt_length, c.sampling.max_new_tokens = 16, 24
    c.sft.steps, c.sft.batch_size, c.sft.learning_rate = 3, 8, 1e-3
    for k, v in sft.items():
        setattr(c.sft, k, v)
    return c


def test_warm_start_runs_sft_once_then_restores_it(tmp_path):
    logs = []
    first = ablation.warm_start(_config(), tmp_path, log=logs.append)
    assert not first.restored and first.sft_steps == 3
    second = ablation.warm_start(_config(), tmp_path, log=logs.append)
    assert second.restored and second.sft_steps == 3 and "restored" in logs[-1]
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(second.params), strict=True):
        np.testing.assert_array_equal(a, b)  # bit-identical
    # SFT really ran: the params moved away from the random init.
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max())
             for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(first.setup.params))]
    assert max(moved) > 1e-4
    # A different SFT setting is a different warm start; a GRPO-only setting is not.
    other = ablation.warm_start(_config(steps=4), tmp_path, log=logs.append)
    assert not other.restored and other.sft_steps == 4
    grpo_only = _config()
    grpo_only.grpo.beta, grpo_only.optim.learning_rate = 0.0, 1.0
    assert ablation.sft_key(grpo_only) == ablation.sft_key(_config()) != ablation.sft_key(_config(steps=4))


def test_warm_start_model_dir_is_the_policy_and_the_sweep_starts_from_it(tmp_path):
    """The warm start's Hugging Face twin loads back (weights and tokenizer) as the very policy, and
    the notebooks' sweep command points every cell at it with SFT off."""
    from grpo_jax import weights
    from grpo_jax import tokenizer as tok_lib

    start = ablation.warm_start(_config(), tmp_path, log=lambda _: None)
    mc, params = weights.load_hf(start.model_dir)
    assert mc.vocab_size == start.setup.model_config.vocab_size
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # f32 export: exact
    tok = tok_lib.load_tokenizer(start.model_dir)
    text = "What is 47+39?"
    assert tok(text)["input_ids"] == start.setup.tokenizer(text)["input_ids"]
    assert tok.eos_token_id == start.eos_id
    nb = ablation.Notebook(_config(), start, False, tmp_path, pathlib.Path("experiments/quickstart.py"))
    argv = ablation.sweep_argv(nb, "g", grid=["grpo.group_size=2,4"], seeds=3, overrides=["train.steps=7"])
    assert argv[argv.index("--workdir") + 1] == str(tmp_path / "sweeps" / "g")
    assert f"--config.model.path={start.model_dir}" in argv and "--config.sft.steps=0" in argv
    assert argv[argv.index("--grid") + 1] == "grpo.group_size=2,4" and "--config.train.steps=7" in argv
    small = ablation.sweep_argv(nb._replace(small=True), "g", grid=[], seeds=1, overrides=["train.steps=7"])
    assert "--config.train.steps=7" not in small and "--config.train.steps=2" in small


def test_sft_key_ignores_grpo_only_sampling_keys():
    # sampling.min_p and sampling.truncated_logps (issue 26) only reach GRPO's sampler and scoring: they
    # must not move the warm start's key (a key over every sampling field did, and the notebooks'
    # cached warm starts and sweeps were refused as "a different config").
    base = _config()
    truncated = _config()
    truncated.sampling.min_p, truncated.sampling.truncated_logps = 0.1, False
    assert ablation.sft_key(truncated) == ablation.sft_key(base)
    # Computed by hand over the fields that existed before them: the key of every earlier cache.
    d = cfg_lib.to_dict(base)
    old = {k: d[k] for k in ("model", "task", "sft", "sampling")}
    old["sampling"] = {k: v for k, v in old["sampling"].items() if k not in ("min_p", "truncated_logps")}
    old |= {"seed": base.train.seed, "max_grad_norm": base.optim.max_grad_norm,
            "eval_batch_size": base.train.eval_batch_size}
    assert ablation.sft_key(base) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    changed = _config()
    changed.sampling.max_new_tokens += 1  # a sampling key SFT's validation does read
    assert ablation.sft_key(changed) != ablation.sft_key(base)
