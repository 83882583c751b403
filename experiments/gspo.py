"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071).

One importance ratio per sequence, the length-normalised likelihood ratio
exp(mean_t (logp - old_logp)), clipped in a much narrower band: epsilon_low = 3e-4,
epsilon_high = 4e-4 (the paper's setting), no KL term. The band only matters off-policy
(num_iterations > 1 or several minibatch updates per rollout); at mu = 1 the ratio is exactly 1.

    python -m grpo_jax.train --config experiments/gspo.py --workdir runs/gspo \
        --config.grpo.num_iterations=2

Pinned by tests/test_presets.py.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.importance_level = "sequence"
    c.grpo.epsilon = 3e-4
    c.grpo.epsilon_high = 4e-4
    c.grpo.beta = 0.0
    return c
