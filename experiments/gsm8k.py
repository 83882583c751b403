"""GRPO on GSM8K from a local Hugging Face checkpoint (Qwen2 / Llama family).

    python -m grpo_jax.train --config experiments/gsm8k.py --workdir runs/gsm8k \
        --config.model.path=PATH/TO/Qwen2.5-0.5B-Instruct --config.task.data_path=PATH/TO/gsm8k

`task.data_path` is a directory holding train.jsonl / test.jsonl in the GSM8K release format
(question / answer with "#### N"); the team's copy lives in shared/data/gsm8k. The chat template of
the checkpoint's tokenizer wraps the prompt; completions use the <reasoning>/<answer> format and are
scored by exact numeric match (plus a small format reward).

Expected result: not measured here — no pretrained HF checkpoint is reachable offline on the
machines this was written on, and a 0.5B model needs an accelerator for a useful number of steps.
The recipe follows the seeds' settings (G = 8, beta = 0.04, lr 1e-6, 512 new tokens).
"""
from grpo_jax.config import Config


def get_config() -> Config:
    c = Config()
    c.task.name = "gsm8k"
    c.task.chat_template = True
    c.task.eval_size = 500
    c.rewards.weights["format"] = 0.1
    c.sampling.max_prompt_length = 320
    c.sampling.max_new_tokens = 512
    c.optim.learning_rate = 1e-6
    c.optim.warmup_steps = 10
    c.train.steps = 500
    c.train.prompts_per_step = 16
    c.train.num_minibatches = 4
    c.train.eval_every = 100
    c.train.eval_batch_size = 64
    return c
