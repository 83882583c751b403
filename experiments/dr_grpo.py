"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", arXiv:2503.20783).

GRPO "done right": no division by the per-group reward std (scale_rewards="none") and no division
by each completion's length (loss_type="dr_grpo": masked sum / (N * max_completion_length)), both of
which bias GRPO (towards easy/hard questions, and towards long wrong answers). Their runs: no KL
(beta = 0), epsilon = 0.2, G = 8, 128 prompts per step, learning rate 1e-6, temperature 1, max
3,000 generated tokens, one optimizer step per rollout (their train and rollout batch sizes are
equal: K = 1).

Lengths: 1024 prompt tokens (longer prompts are dropped at data load and counted), 3,000 new tokens.

    python -m grpo_jax.train --config experiments/dr_grpo.py --workdir runs/dr_grpo \
        --config.task.name=math500 --config.task.data_path=PATH/math500 \
        --config.task.train_data_path=PATH/math --config.model.path=HF_DIR

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 8
    c.grpo.epsilon = 0.2
    c.grpo.beta = 0.0
    c.grpo.loss_type = "dr_grpo"
    c.grpo.scale_rewards = "none"
    c.optim.learning_rate = 1e-6
    c.train.prompts_per_step = 128
    c.train.steps_per_generation = 1
    c.sampling.max_prompt_length = 1024
    c.sampling.max_new_tokens = 3000
    return c
