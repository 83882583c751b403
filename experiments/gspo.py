"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071).

One importance ratio per sequence, the length-normalised likelihood ratio
exp(mean_t (logp - old_logp)), clipped in a much narrower band: epsilon_low = 3e-4,
epsilon_high = 4e-4 (the paper's setting), no KL term, each rollout batch split into 4 minibatches
with one optimizer step each (K = 4): the band only matters off-policy, i.e. from the second of
those steps on (at K = 1, mu = 1 the ratio is exactly 1).

Lengths: the paper does not state them for this recipe; 1024 prompt tokens and 2048 new tokens
are our choice for GSM8K / MATH-style tasks (longer prompts are dropped at data load and counted).

    python -m grpo_jax.train --config experiments/gspo.py --workdir runs/gspo \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.importance_level = "sequence"
    c.grpo.epsilon = 3e-4
    c.grpo.epsilon_high = 4e-4
    c.grpo.beta = 0.0
    c.train.steps_per_generation = 4
    c.sampling.max_prompt_length = 1024
    c.sampling.max_new_tokens = 2048
    return c
