"""DeepSeek-R1-Zero GRPO (DeepSeek-AI, Nature 645, 2025; Methods, "Training details").

As recalled from the Nature Methods section (check against the paper before citing): learning rate
3e-6, KL coefficient beta = 0.001, clip ratio epsilon = 10 (clipping is almost never active),
sampling temperature 1, G = 16 outputs per question, 32 questions per step (batch 512), max length
32,768 tokens, the <think> format, accuracy + format rules as reward, each rollout split into 16 minibatches with one
optimizer step each (K = 16). Not reproduced here: the reference model refresh every 400 steps.

Lengths: 1024 prompt tokens (longer prompts are dropped at data load and counted), 32,768 new
tokens (the paper's; lower it with --config.sampling.max_new_tokens for anything smaller than a pod).

    python -m grpo_jax.train --config experiments/r1.py --workdir runs/r1 \
        --config.task.name=gsm8k --config.task.data_path=PATH/gsm8k --config.model.path=HF_DIR \
        --config.sampling.max_new_tokens=1024

Pinned by tests/test_presets.py, which also runs it for 2 steps on a tiny Qwen2 checkpoint.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.grpo.group_size = 16
    c.grpo.epsilon = 10.0
    c.grpo.beta = 0.001
    c.grpo.loss_type = "grpo"
    c.optim.learning_rate = 3e-6
    c.sampling.temperature = 1.0
    c.sampling.max_prompt_length = 1024
    c.sampling.max_new_tokens = 32768
    c.train.prompts_per_step = 32
    c.train.steps_per_generation = 16
    c.task.prompt_style = "think"
    c.rewards.weights["format"] = 1.0
    return c
