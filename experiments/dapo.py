"""DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, token-level loss, overlong shaping, no KL.

Published: epsilon_low = 0.2, epsilon_high = 0.28 (clip-higher), token-level policy-gradient loss
(sum over all tokens of the batch / number of tokens: our "bnpo"), no KL term (beta = 0),
G = 16, 512 prompts per batch, learning rate 1e-6, max generation 20,480 tokens of which the last
4,096 are the soft overlong punishment interval. Not reproduced: dynamic sampling (refilling the
batch with groups whose rewards are not all equal) and the 16 minibatch updates per rollout.

    python -m grpo_jax.train --config experiments/dapo.py --workdir runs/dapo \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR

Pinned by tests/test_presets.py.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 16
    c.grpo.epsilon = 0.2
    c.grpo.epsilon_high = 0.28
    c.grpo.beta = 0.0
    c.grpo.loss_type = "bnpo"
    c.optim.learning_rate = 1e-6
    c.train.prompts_per_step = 512
    c.sampling.max_new_tokens = 20480
    c.rewards.overlong = 1.0
    c.rewards.overlong_cache = 4096
    return c
