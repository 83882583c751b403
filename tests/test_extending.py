"""Extending without editing the library: a task and a reward from a user's module, named in an
experiment file; and the package's import graph has no cycle (library modules never import the
program)."""
import ast
import pathlib

import numpy as np
import pytest

from grpo_jax import config as cfg_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import train

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "grpo_jax"

EXPERIMENT = '''
"""A user's experiment: their own task and reward by import path."""
from grpo_jax.config import Config


def get_config():
    c = Config()
    c.task.name = "custom_task_module:make_task"
    c.task.eval_size = 16
    c.rewards.weights = {"correctness": 1.0, "custom_task_module:short_answer": 0.5}
    c.model.hidden_size, c.model.num_layers, c.model.num_heads, c.model.num_kv_heads = 32, 2, 2, 1
    c.model.head_dim, c.model.intermediate_size = 16, 64
    c.train.steps, c.train.prompts_per_step, c.grpo.group_size = 2, 4, 4
    c.train.eval_every, c.train.eval_batch_size = 2, 16
    c.sampling.max_prompt_length, c.sampling.max_new_tokens = 96, 16
    c.sft.validation_size = 8
    c.mesh.data, c.mesh.fsdp = 1, 1
    return c
'''


def test_custom_task_and_reward_from_an_experiment_file(tmp_path):
    experiment = tmp_path / "my_experiment.py"
    experiment.write_text(EXPERIMENT)
    train.run(["--config", str(experiment), "--workdir", str(tmp_path / "run")])
    rows = [r for r in metrics_lib.read_metrics(tmp_path / "run") if r["step"] >= 1]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # Both components are reported under their own names and weighted into the reward.
        assert r["reward_mean"] == pytest.approx(r["reward_correctness"] + 0.5 * r["reward_short_answer"],
                                                 abs=1e-6)
    assert rows[-1]["eval_examples"] == 16  # the custom task's held-out problems


def test_custom_names_are_checked_before_any_work(tmp_path):
    c = cfg_lib.Config()
    c.task.name = "custom_task_module:no_such_function"
    from grpo_jax import tasks
    with pytest.raises(cfg_lib.ConfigError, match=r"`task.name` = 'custom_task_module:no_such_function'.*has no"):
        tasks.from_config(cfg_lib.validate(c))
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ["rewards.weights.formatt=1"])
    with pytest.raises(cfg_lib.ConfigError, match=r"`rewards.weights.formatt`.*'correctness', 'format', 'overlong'"):
        cfg_lib.validate(c)
    c = cfg_lib.apply_overrides(cfg_lib.Config(), ['rewards.weights={"no_such_module:f": 1.0}'])
    from grpo_jax import rewards
    with pytest.raises(cfg_lib.ConfigError, match=r"`rewards.weights.no_such_module:f`.*cannot import"):
        rewards.from_config(cfg_lib.validate(c), None)


def _imports(path: pathlib.Path) -> set[str]:
    """grpo_jax modules imported at module level (the import-time graph) by one source file."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
    out = set()
    for node in ast.parse(path.read_text()).body:  # top-level statements only
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative import
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("grpo_jax.")}


def test_no_import_cycle_and_no_library_module_imports_the_program():
    files = {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {m: {i for i in _imports(p) if i in files and i != m} for m, p in files.items()}
    # Any module, function-level imports included, may not import the program.
    for m, p in files.items():
        if m != "grpo_jax.train":
            assert "grpo_jax.train" not in {n.module for n in ast.walk(ast.parse(p.read_text()))
                                            if isinstance(n, ast.ImportFrom) and n.module} | \
                   {f"grpo_jax.{a.name}" for n in ast.walk(ast.parse(p.read_text()))
                    if isinstance(n, ast.ImportFrom) and n.module == "grpo_jax" for a in n.names}, m
    # No cycle: a depth-first search finds no back edge.
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            assert state.get(n) != "open", " -> ".join(path + [n])
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert len(graph) > 20 and np.mean([len(v) for v in graph.values()]) > 1  # the graph is real
