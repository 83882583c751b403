"""DAPO (Yu et al. 2025, arXiv:2503.14476): clip-higher, token-level loss, overlong shaping, no KL.

Published: epsilon_low = 0.2, epsilon_high = 0.28 (clip-higher), token-level policy-gradient loss
(sum over all tokens of the batch / number of tokens: our "bnpo"), no KL term (beta = 0),
G = 16, 512 prompts per batch, learning rate 1e-6, max generation 20,480 tokens of which the last
4,096 are the soft overlong punishment interval, 16 optimizer steps per rollout (mini-batches of
32 prompts: K = 16), and dynamic sampling: groups whose rewards are all equal carry no gradient, so
3x the prompts are sampled per round (the verl recipe's gen_prompt_bsz = 3 x train_prompt_bsz) and
only groups with signal fill the batch, resampling up to 10 rounds. Overlong *filtering* (masking
truncated completions) is the paper's alternative to the soft punishment and is off, as in its
final recipe (--config.grpo.mask_truncated_completions=true switches it on).

Lengths: 2,048 prompt tokens (the verl recipe's max_prompt_length; longer prompts are dropped at
data load and counted), 20,480 new tokens.

    python -m grpo_jax.train --config experiments/dapo.py --workdir runs/dapo \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
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
    c.train.steps_per_generation = 16
    c.grpo.dynamic_sampling = True
    c.grpo.dynamic_sampling_factor = 3.0
    c.grpo.dynamic_sampling_max_rounds = 10
    c.sampling.max_prompt_length = 2048
    c.sampling.max_new_tokens = 20480
    c.rewards.weights["overlong"] = 1.0
    c.rewards.overlong_cache = 4096
    return c
