"""Each paper preset pinned by its loss on the hand example of test_losses.py.

Hand example (epsilon-independent parts): row 0 A = +1, ratios [1.5, 0.9], mask [1, 1];
row 1 A = -1, ratios [0.5, 2.0], mask [1, 0]; ref - logps = [ln 2, 0] on row 0 (k3 = 1 - ln 2).
"""

import math
import pathlib

import jax.numpy as jnp
import pytest

from grpo_jax.advantages import group_advantages
from grpo_jax.config import load_config
from grpo_jax.losses import grpo_loss

from test_losses import ADV, LOGPS, MASK, OLD

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
K = 1 - math.log(2.0)
REF = LOGPS + jnp.array([[math.log(2.0), 0.0], [0.0, 0.0]])


def preset_loss(name):
    c = load_config(EXPERIMENTS / f"{name}.py")
    g = c.grpo
    loss, _ = grpo_loss(jnp.asarray(LOGPS), jnp.asarray(OLD), REF if g.beta > 0 else None,
                        jnp.asarray(ADV), jnp.asarray(MASK), epsilon=g.epsilon,
                        epsilon_high=g.epsilon_high, beta=g.beta, loss_type=g.loss_type,
                        importance_level=g.importance_level,
                        max_completion_length=c.sampling.max_new_tokens)
    return c, float(loss)


@pytest.mark.parametrize("name, expected", [
    # eps 0.2, beta 0.04, mean of row means: row 0 (1.2 - 0.04 K + 0.9) / 2, row 1 -0.8.
    ("deepseekmath", -(((1.2 - 0.04 * K) + 0.9) / 2 - 0.8) / 2),
    # eps 10: nothing clipped; beta 0.001.
    ("r1", -(((1.5 - 0.001 * K) + 0.9) / 2 - 0.5) / 2),
    # eps 0.2 / 0.28, beta 0, token mean: 1.5 -> 1.28.
    ("dapo", -(1.28 + 0.9 - 0.8) / 3),
    # beta 0, masked sum / (N * max_new_tokens = 2 * 3000).
    ("dr_grpo", -(1.2 + 0.9 - 0.8) / (2 * 3000)),
    # sequence ratio sqrt(1.35) -> 1.0004; row 1 ratio 0.5 -> 0.9997 with A < 0.
    ("gspo", -(1.0004 - 0.9997) / 2),
    # the defaults: eps 0.2, beta 0.04, grpo
    ("base", -(((1.2 - 0.04 * K) + 0.9) / 2 - 0.8) / 2),
])
def test_preset_loss(name, expected):
    _, loss = preset_loss(name)
    # abs 1e-7: GSPO's 1.0004 - 0.9997 cancels to 7e-4 in f32 (ulp(1) = 1.2e-7).
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name, group_size, scale, expected", [
    ("deepseekmath", 64, "group", None),
    ("r1", 16, "group", None),
    ("dapo", 16, "group", None),
    ("dr_grpo", 8, "none", [0.5, -0.5]),
    ("gspo", 8, "group", None),
])
def test_preset_group_and_scale(name, group_size, scale, expected):
    c = load_config(EXPERIMENTS / f"{name}.py")
    assert (c.grpo.group_size, c.grpo.scale_rewards) == (group_size, scale)
    adv = group_advantages(jnp.array([1.0, 0.0]), 2, scale=c.grpo.scale_rewards, eps=c.grpo.advantage_eps)
    if expected is not None:
        assert adv.tolist() == expected


# --- every preset runs: 2 steps on a tiny HF Qwen2 with a chat template and GSM8K-shaped data ----

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
PRESETS = ["deepseekmath", "r1", "dapo", "dr_grpo", "gspo"]


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory):
    """A tiny random Qwen2 checkpoint written by transformers, with a character tokenizer that has
    ChatML turns (`<|im_end|>` ends a turn; the eos is `<eos>`), and GSM8K-shaped JSONL data with
    one question too long for any preset's prompt limit."""
    import json
    import string

    import torch
    import transformers

    from grpo_jax import tokenizer as tok_lib

    root = tmp_path_factory.mktemp("tiny_chat")
    tok = tok_lib.char_tokenizer(string.digits + string.ascii_letters + string.punctuation + " \n")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    model_dir = root / "model"
    tok.save_pretrained(model_dir)
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=4096, tie_word_embeddings=True)
    transformers.Qwen2ForCausalLM(cfg).save_pretrained(model_dir)
    (model_dir / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id]}))
    data = root / "gsm8k"
    data.mkdir()
    rows = [{"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
             "answer": f"He has {a}+{b}={a + b} apples.\n#### {a + b}"} for a in range(2, 9) for b in range(3, 9)]
    rows.append({"question": "A very long question. " * 200 + "How many?", "answer": "#### 1"})
    for split, part in (("train", rows[:-9] + rows[-1:]), ("test", rows[-9:-1])):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return model_dir, data


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_two_steps_on_a_tiny_hf_model(name, tiny_chat_model, tmp_path):
    # The preset's own algorithm (G, epsilon, beta, loss, K, dynamic sampling, ...), model.attention=auto
    # (xla on this CPU) and chunked rollouts; only the scale is shrunk: 2 prompts per step, 8 new
    # tokens, a 640-token prompt limit (R1's template makes 469-token prompts), one device, so the 7B plan's minibatches
    # (train.num_minibatches) do not divide the batch and the rollouts are chunked one group per
    # sampler call (sampling.batch_size = G) instead of the plan's chunk. What the CPU needs: f32
    # compute and unrolled layers (bf16 matmuls and a scanned decode are slower on XLA:CPU,
    # ENVIRONMENT.md; tests/test_scale.py checks they change no number).
    from grpo_jax import metrics as metrics_lib
    from grpo_jax import train

    model_dir, data = tiny_chat_model
    preset = load_config(EXPERIMENTS / f"{name}.py")
    overrides = [
        f"model.path={model_dir}", "task.name=gsm8k", f"task.data_path={data}", "task.chat_template=true",
        "task.eval_size=4", "train.eval_batch_size=4", "train.eval_every=2", "train.steps=2",
        "train.prompts_per_step=2", "sampling.max_new_tokens=8", "sampling.max_prompt_length=640",
        "rewards.overlong_cache=4", "grpo.dynamic_sampling_max_rounds=2", "mesh.data=1", "mesh.fsdp=1",
        "train.checkpoint_every=2", "train.num_minibatches=1", f"sampling.batch_size={preset.grpo.group_size}",
        "model.dtype=float32", "model.scan_layers=false", "model.remat=none"]
    rows = train.run(["--config", str(EXPERIMENTS / f"{name}.py"), "--workdir", str(tmp_path)]
                     + [f"--config.{o}" for o in overrides])
    steps = [r for r in metrics_lib.read_metrics(tmp_path) if r["step"] >= 1]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps)
    assert rows[0]["prompts_dropped_train"] == 1  # the long question, dropped at load, counted
    if preset.grpo.dynamic_sampling:
        assert all("dynamic_kept_fraction" in r for r in steps)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_prompt_limit_fits_gsm8k_through_a_chat_template(name, shared_data):
    # With the Qwen3 tokenizer (ids identical to Qwen2.5) and its chat template, no GSM8K training
    # prompt in the preset's own style is dropped at load: the old limit of 64 dropped nearly all.
    from grpo_jax import config as cfg_lib
    from grpo_jax import tokenizer as tok_lib
    from grpo_jax import tasks

    tokenizer_dir = shared_data.parent / "tokenizers" / "qwen3"
    if not tokenizer_dir.is_dir():
        pytest.skip(f"needs the shared Qwen3 tokenizer at {tokenizer_dir}")
    c = load_config(EXPERIMENTS / f"{name}.py")
    c.task.name, c.task.data_path, c.task.chat_template = "gsm8k", str(shared_data / "gsm8k"), True
    c = cfg_lib.validate(c)
    task, counts = tasks.fit_prompts(tasks.from_config(c), tok_lib.load_tokenizer(tokenizer_dir), c)
    assert counts == {"prompts_dropped_train": 0, "prompts_dropped_eval": 0}
    assert c.sampling.max_new_tokens >= 1024


# --- at scale: the published lengths, and the switches the 7B plan in each docstring relies on -------

PUBLISHED = {"deepseekmath": (512, 1024), "r1": (1024, 32768), "dapo": (2048, 20480), "dr_grpo": (1024, 3000),
             "gspo": (1024, 2048)}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_runs_at_scale_on_its_planned_slice(name):
    """Each preset keeps its paper's lengths and carries what makes them fit with Qwen2.5-7B: FSDP over
    every chip, f32 master weights with bf16 compute, scan + full remat, the backend's attention kernel,
    a tensor-parallel sampler; and its config is valid on the TPU slice its docstring plans (the chips
    of `--topology v5p-8` etc., with the TPU backend: "auto" is splash there)."""
    import importlib.util
    import re

    from grpo_jax import config as cfg_lib
    from grpo_jax import plan

    path = EXPERIMENTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"preset_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    assert (c.sampling.max_prompt_length, c.sampling.max_new_tokens) == PUBLISHED[name]
    assert (c.mesh.data, c.mesh.fsdp) == (1, -1)
    assert (c.model.param_dtype, c.model.dtype, c.model.scan_layers, c.model.remat, c.model.attention) == (
        "float32", "bfloat16", True, "full", "auto")
    assert c.sampling.weight_layout == "tensor" and c.train.shared_prefix
    topology = re.search(r"--topology (\S+)", module.__doc__).group(1)
    _, name_xy, _ = plan.parse_topology(topology)
    chips = math.prod(int(d) for d in name_xy.split(":")[1].split("x"))
    c.model.path = "models/Qwen2.5-7B-Instruct"  # what a run passes (the architecture is the checkpoint's)
    cfg_lib.validate(c, num_devices=chips, platform="tpu")
