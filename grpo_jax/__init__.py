"""grpo_jax: Group Relative Policy Optimization in pure JAX."""

__version__ = "0.1.0"
