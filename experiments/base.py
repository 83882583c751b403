"""The base experiment: every default from grpo_jax/config.py, nothing changed.

    python -m grpo_jax.train --config experiments/base.py --workdir runs/base

A random-init tiny Qwen2-shaped model on 2-digit addition with no SFT warm start: rewards stay near 0
(nothing to reinforce). It exists as the reference point the other modules differ from; start from
experiments/quickstart.py for a run that learns.
"""
from grpo_jax.config import Config


def get_config() -> Config:
    return Config()
