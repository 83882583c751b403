"""The quick start (`make train`): a tiny Qwen2-shaped model learns 2-digit addition on a laptop CPU.

    python -m grpo_jax.train --config experiments/quickstart.py --workdir runs/quickstart

A random-init 4-layer Qwen2-architecture model (d=128, GQA 4/2 heads, tied embeddings, q/k/v bias)
with the built-in character tokenizer is first warm-started with SFT on the synthetic arithmetic
task in the `<reasoning>…</reasoning><answer>…</answer>` format, the reasoning being schoolbook
column sums ("7+9=16\n4+3+1=8" for 47+39), stopped early at a modest held-out accuracy, then trained
with GRPO (G = 8, 16 prompts per step, beta = 0.04, lr 1e-4, clip-by-norm 1.0) for 600 steps.
Held-out greedy accuracy is measured on 512 problems never seen in training.

Expected (2-core CPU, measured 2026-12-03, seed 0, 512 distinct held-out problems): SFT stops at step
200 (held-out 33.6 %); GRPO reaches 69 % at step 50 (under a minute of GRPO on a quiet machine),
83 % at 225, 92 % at 300 and 91-96.5 % from step 375 on (evals every 25 steps fluctuate by a few
points). About 10 min wall on a quiet machine (31 min measured beside three other jobs).
See README.md for the curve.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    # SFT until greedy accuracy on 256 held-out validation problems reaches 25 % (checked every 10
    # steps; measured: it stops at step 200, as the module docstring says), at most 1000 steps.
    c.sft.steps = 1000
    c.sft.eval_every = 10
    c.sft.stop_accuracy = 0.25
    c.sft.validation_size = 256  # 128 was noisy enough to stop SFT on a lucky check
    c.sft.batch_size = 64
    c.sft.learning_rate = 3e-3
    c.sft.warmup_steps = 20
    c.optim.learning_rate = 1e-4
    c.train.steps = 600
    c.train.eval_every = 25
    c.train.checkpoint_every = 50
    c.task.eval_size = 512
    c.task.instruction = False  # the format is learnt in SFT; prompts are just "What is 47+39?"
    c.task.working = "columns"  # SFT target "7+9=16\n4+3+1=8", then the answer 86
    c.sampling.max_prompt_length = 16
    c.sampling.max_new_tokens = 32
    return c
