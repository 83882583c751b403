"""grpo_jax: Group Relative Policy Optimization in pure JAX."""

import importlib
from typing import Any

__version__ = "0.1.0"


class ConfigError(ValueError):
    """A config key has a wrong name, type or value. The message names the key.

    Defined here, at the package root, so that every module that builds a part from its config
    section can raise it without importing `grpo_jax.config` (which imports their constants).
    """


def import_path(name: str, key: str) -> Any:
    """The object named by "package.module:attribute" (a user's own task or verifier), or a
    ConfigError naming the config `key` it came from."""
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"config key `{key}` = {name!r}: cannot import {module_name!r} ({error})") from None
    if not attribute or not hasattr(module, attribute):
        raise ConfigError(f"config key `{key}` = {name!r}: module {module_name!r} has no {attribute!r}")
    return getattr(module, attribute)
