"""`train.compilation_cache`: where JAX's persistent compilation cache lives ("auto": the
environment's, else the user's cache directory; "" off; a path), and that a compile really lands
there, so the next launch loads it (benchmarks/README.md measures the second launch)."""
import os

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.compilation_cache import compilation_cache as cc

from grpo_jax import build
from grpo_jax.config import Config


@pytest.fixture
def restore_cache_settings():
    """This process's own cache (tests/conftest.py's) comes back after the test."""
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    yield
    jax.config.update("jax_enable_compilation_cache", before[1])
    cc.set_cache_dir(before[0])
    cc.reset_cache()


def test_the_directory_the_key_names(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.compilation_cache_dir("auto") == str(tmp_path / "xdg" / "grpo_jax" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.compilation_cache_dir("auto") == str(tmp_path / "home" / ".cache" / "grpo_jax" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert build.compilation_cache_dir("auto") == str(tmp_path / "env")  # a cache the user set up wins
    assert build.compilation_cache_dir("") is None
    assert build.compilation_cache_dir("~/c") == str(tmp_path / "home" / "c")
    assert Config().train.compilation_cache == "auto"  # on by default


def test_a_compile_is_stored_in_the_configured_directory_and_off_stores_nothing(tmp_path, restore_cache_settings):
    config = Config()
    config.train.compilation_cache = str(tmp_path / "cache")
    assert build.use_compilation_cache(config) == str(tmp_path / "cache")
    jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()  # a program new to the cache
    stored = os.listdir(tmp_path / "cache")
    assert stored, "the compile should have been written to the cache"
    config.train.compilation_cache = ""
    assert build.use_compilation_cache(config) is None
    jax.jit(lambda x: jnp.cos(x) * 1.75 - 0.5)(jnp.arange(5.0)).block_until_ready()
    assert os.listdir(tmp_path / "cache") == stored  # off: nothing more stored
