"""Every notebook in notebooks/ runs top to bottom (small size: GRPO_JAX_NOTEBOOK_SMALL=1) without a
cell error. The kernel is `python3` from the venv running the tests."""
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch, tmp_path_factory, request):
    if path.stem.startswith(("05", "07")):
        request.getfixturevalue("smollm2_gguf")  # skips, naming the package, when SmolLM2 is not installed
    if path.stem.startswith("07"):  # runs the model's programs: skips, as tests/test_sandbox.py, without it
        from grpo_jax.sandbox import Sandbox, SandboxUnavailable
        try:
            Sandbox(1).close()
        except SandboxUnavailable as error:
            pytest.skip(f"no namespace sandbox on this machine: {error}")
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    monkeypatch.setenv("GRPO_JAX_NOTEBOOK_SMALL", "1")
    # One SFT warm start shared by the notebooks, as for a user, but never in the checkout's runs/.
    monkeypatch.setenv("GRPO_JAX_NOTEBOOK_WORKDIR", str(tmp_path_factory.getbasetemp() / "notebooks"))
    # The kernel inherits this process's environment: one CPU device is what a laptop user has.
    monkeypatch.setenv("XLA_FLAGS", "")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name="python3", timeout=300,
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs) \
        or path.stem.startswith("01")  # the ablations plot
