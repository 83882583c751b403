"""Experiment configs: each module's get_config() states only what differs from grpo_jax.config."""
