"""The sweep program (`python -m grpo_jax.sweep`): a grid of configurations x seeds for any task with
host verifiers, the cells that differ only in vmappable keys trained as ONE program, each cell an
ordinary workdir that equals the same configuration trained alone by `grpo_jax.train`, preemptible
(SIGTERM) and resumable, packed by the plan's memory, and bad grids refused before any work, naming
the key.

One tiny configuration (tests/test_train.py's, 2 GRPO steps) with a short SFT warm start, so the
rewards and advantages are real; format credit varies early on.
"""
import json
import pathlib

import jax
import numpy as np
import pytest

from grpo_jax import ConfigError
from grpo_jax import build
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import report, sweep, train
from grpo_jax import weights as weights_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
    "model.head_dim=16", "model.intermediate_size=64", "sft.steps=30", "sft.batch_size=16",
    "sft.learning_rate=1e-2", "sft.warmup_steps=0", "train.steps=2", "train.prompts_per_step=4",
    "grpo.group_size=4", "task.eval_size=16", "train.eval_batch_size=16", "train.eval_every=1",
    "train.checkpoint_every=1", "optim.learning_rate=1e-3", "optim.schedule_steps=2", "train.samples_every=1",
    "rewards.weights.format=1.0", "sft.eval_every=15", "sft.validation_size=16",
]
# 2 learning rates x 2 seeds at temperature 0.8 = 4 cells, one program, on a 4 x 2 mesh (the grid test
# below plans 16-cell grids without running them).
GRID = ["--grid", "optim.learning_rate=1e-3,3e-3", "--grid", "sampling.temperature=0.8", "--seeds", "2"]
MESH = ["--config.mesh.data=4", "--config.mesh.fsdp=2"]
# Timing, the program's size, and the update's padded widths (one width for all cells: the bucket of
# the longest completion of any cell) are what a cell's row may differ in from its run alone.
NOT_COMPARED = ("sample_seconds", "reward_seconds", "update_seconds", "step_seconds", "sweep_cells",
                "update_prompt_width", "update_completion_width")


def _sweep_argv(workdir, *extra):
    return ["--config", QUICKSTART, "--workdir", str(workdir), *GRID, *[f"--config.{o}" for o in TINY], *MESH,
            *extra]


def _rows(workdir):
    return [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in metrics_lib.read_metrics(workdir)]


def _assert_rows_close(got, want, *, tol):
    assert [sorted(r) for r in got] == [sorted(r) for r in want]
    for g, w in zip(got, want):
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, rel=tol, abs=tol), (w["step"], key)
            else:
                assert g[key] == value, (w["step"], key)


def _cell_dir(workdir, lr, temperature, seed):
    cells = json.loads((workdir / sweep.SWEEP_FILE).read_text())["cells"]
    match = [c for c in cells if c["values"] == {"optim.learning_rate": lr, "sampling.temperature": temperature}
             and c["seed"] == seed]
    assert len(match) == 1, match
    return workdir / match[0]["workdir"]


def _policy(workdir, config):
    """The policy's params of the workdir's latest checkpoint, on one device."""
    s = build.setup(config, workdir, for_eval=True)
    return jax.device_get(s.params)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The grid of 2 steps preempted during step 1 (SIGTERM to this process: the program finishes the
    step, saves every cell at it and the sweep stops, returning 0), then resumed to 2 by the same
    command: the run every test below reads (the comparison with runs alone then also shows the
    preemption and the resume exact)."""
    import os
    import signal

    from grpo_jax import rollout

    workdir = tmp_path_factory.mktemp("sweep") / "grid"
    score = rollout.score

    def score_then_sigterm(*args, **kwargs):  # the notice arrives while step 1's batch is scored
        os.kill(os.getpid(), signal.SIGTERM)
        return score(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rollout, "score", score_then_sigterm)
        assert sweep.main(_sweep_argv(workdir)) == 0
    for cell in json.loads((workdir / sweep.SWEEP_FILE).read_text())["cells"]:
        with ckpt_lib.Checkpointer(workdir / cell["workdir"] / "checkpoints") as ckpt:
            assert ckpt.latest_step() == 1  # stopped after step 1 of 2, every cell saved there
    assert sweep.main(_sweep_argv(workdir)) == 0
    return workdir


def test_a_cell_of_the_vmapped_program_is_its_configuration_trained_alone(swept, tmp_path):
    """Cell (lr 3e-3, temperature 0.8, seed 1) of the 4-cell program on a 4 x 2 mesh, stopped after
    step 1 and resumed, equals `grpo_jax.train` on that configuration on one device in one go: every
    metric row (SFT, eval, per-problem eval scores and groups included), and the trained parameters."""
    cell = _cell_dir(swept, 3e-3, 0.8, 1)
    alone = tmp_path / "alone"
    train.run(["--config", QUICKSTART, "--workdir", str(alone)] + [f"--config.{o}" for o in TINY]
              + ["--config.optim.learning_rate=3e-3", "--config.sampling.temperature=0.8", "--config.train.seed=1",
                 "--config.mesh.data=1", "--config.mesh.fsdp=1"])
    want = _rows(alone)
    assert any(r.get("advantage_abs_mean", 0) > 0 for r in want), "the update should see real advantages"
    _assert_rows_close(_rows(cell), want, tol=1e-4)
    for name in metrics_lib.DETAIL_FILES:
        got, ref = metrics_lib.read_detail(cell, name), metrics_lib.read_detail(alone, name)
        assert [r["step"] for r in got] == [r["step"] for r in ref] and ref, name
        for g, r in zip(got, ref):
            for key in r:
                np.testing.assert_allclose(np.asarray(g[key], float), np.asarray(r[key], float), atol=1e-4,
                                           err_msg=f"{name} {key}")
    config = cfg_lib.from_dict(json.loads((cell / "config.json").read_text()))
    assert (config.optim.learning_rate, config.sampling.temperature, config.train.seed) == (3e-3, 0.8, 1)
    single = cfg_lib.apply_overrides(config, ["mesh.data=1", "mesh.fsdp=1"])
    # Sharded vs one device sums in other orders; Adam divides each update by sqrt(v), so an entry
    # whose gradient is round-off (~0) can move by up to lr per update either way. All others agree.
    got, want = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(_policy(w, single))]) for w in (cell, alone))
    off = np.abs(got - want) > 2e-5
    assert off.mean() < 1e-3 and np.abs(got - want).max() <= 2 * 3e-3, (off.sum(), np.abs(got - want).max())


def test_the_sweep_directory_is_what_the_report_and_the_tools_read(swept, capsys):
    record = json.loads((swept / sweep.SWEEP_FILE).read_text())
    assert record["grid"] == {"optim.learning_rate": ["1e-3", "3e-3"], "sampling.temperature": ["0.8"]}
    assert record["seeds"] == [0, 1] and len(record["cells"]) == 4
    assert len({c["label"] for c in record["cells"]}) == 2
    for c in record["cells"]:
        workdir = swept / c["workdir"]
        steps = [r["step"] for r in metrics_lib.read_metrics(workdir) if "reward_mean" in r]
        assert steps == [1, 2]
        assert [r["step"] for r in metrics_lib.read_detail(workdir, "eval_problems.jsonl")] == [0, 1, 2]
        with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
            assert ckpt.all_steps() == [0, 1, 2]
    # Cells of the same seed start from the same SFT warm start and sample with the same key: the two
    # learning rates see the very same completions at step 1, and the same loss before any update.
    same = [metrics_lib.read_metrics(_cell_dir(swept, lr, 0.8, 0)) for lr in (1e-3, 3e-3)]
    step1 = [next(r for r in rows if r["step"] == 1) for rows in same]
    assert step1[0]["reward_mean"] == step1[1]["reward_mean"]
    assert step1[0]["loss"] == pytest.approx(step1[1]["loss"], abs=1e-6)
    assert report.main([str(swept), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "RESULT report=" in out and "configurations=2" in out
    assert (swept / "report" / "report.md").exists()


def test_programs_hold_what_one_program_can_carry(tmp_path):
    cells = sweep.expand_grid(QUICKSTART, TINY, sweep.parse_grid(["grpo.loss_type=grpo,bnpo", "grpo.beta=0,0.04",
                                                                   "grpo.group_size=2,4"]), 2, tmp_path)
    assert len(cells) == 16 and cells[0].workdir.parent == tmp_path / "cells"
    programs = sweep.plan_programs(cells)
    assert [len(p) for p in programs] == [8, 8]  # the loss type splits; beta, G and the seed do not
    assert {p[0].config.grpo.loss_type for p in programs} == {"grpo", "bnpo"}
    assert [len(p) for p in sweep.plan_programs(cells, cells_per_program=3)] == [3, 3, 2, 3, 3, 2]
    # DAPO's dynamic sampling is a host loop per cell: each runs alone (the trainer itself).
    dapo = sweep.expand_grid(QUICKSTART, TINY + ["grpo.dynamic_sampling=true"],
                             sweep.parse_grid(["grpo.beta=0,0.04"]), 1, tmp_path)
    assert [len(p) for p in sweep.plan_programs(dapo)] == [1, 1]


def test_programs_are_packed_as_the_plan_says_they_fit(tmp_path, monkeypatch):
    """`--fit`: each program of more cells than fit the devices' memory is split into programs of the
    largest C the plan tool finds (`plan.plan(config, local topology, cells=C)`, compiled: pinned by
    tests/test_plan.py). The plan is asked about the program as it samples: G_max rows per prompt."""
    from grpo_jax import plan

    asked = []

    def fake_plan(config, topo, *, cells, out):
        asked.append((config.grpo.group_size, cells, topo.name, topo.hbm_gib))
        return {"max_cells": 3 if cells > 3 else cells, "per_chip_gib": 1.5 * cells}

    monkeypatch.setattr(plan, "plan", fake_plan)
    cells = sweep.expand_grid(QUICKSTART, TINY, sweep.parse_grid(["grpo.loss_type=grpo,bnpo", "grpo.group_size=2,4"]),
                              4, tmp_path)  # 2 programs of 8 cells
    dapo = sweep.expand_grid(QUICKSTART, TINY + ["grpo.dynamic_sampling=true"], {}, 1, tmp_path / "d")
    logs = []
    programs = sweep.fit_programs(sweep.plan_programs(cells) + sweep.plan_programs(dapo), memory_gib=2.5,
                                  log=logs.append)
    assert [[c.index for c in p] for p in programs] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9, 10], [11, 12, 13],
                                                        [14, 15], [0]]
    assert asked == [(4, 8, "local", 2.5), (4, 8, "local", 2.5)]  # the DAPO cell runs alone: nothing to ask
    assert "8 cells need 12.00 GiB per device of 2.50: 3 per program" in logs[0]
    # A resume packs the cells as the first launch did, whatever this machine's memory.
    workdir = tmp_path
    sweep._write_sweep_file(workdir, QUICKSTART, TINY, {"k": []}, 4, cells, programs[:6])
    sweep._write_sweep_file(workdir, QUICKSTART, TINY, {"k": []}, 4, cells)  # the grid's check on a resume
    assert [[c.index for c in p] for p in sweep._recorded_programs(workdir, cells)] == \
        [[c.index for c in p] for p in programs[:6]]
    assert sweep._recorded_programs(workdir, cells[:8]) is None  # not these cells: pack afresh
    local = plan.local_topology()
    assert local.name == "local" and local.devices == jax.devices() and local.hbm_gib > 0
    assert plan.local_topology(memory_gib=3.0).hbm_gib == 3.0


@pytest.mark.parametrize("extra, match", [
    (["--grid", "grpo.nope=1,2"], r"grpo\.nope"),
    (["--grid", "grpo.beta=0,-1"], r"grpo\.beta"),
    (["--grid", "grpo.beta=0,"], r"--grid grpo\.beta: empty value"),
    (["--grid", "train.seed=0,1"], r"--seeds"),
    (["--grid", "grpo.loss_type=grpo,bnpo", "--one_program"], r"grpo\.loss_type cannot vary inside one program"),
    (["--seeds", "0"], r"--seeds 0"),
    (["--grid", "mesh.data=16,4"], r"mesh\.data"),
    (["--memory_gib", "0"], r"--memory_gib 0"),
])
def test_bad_grids_are_refused_before_any_work(tmp_path, capsys, extra, match):
    workdir = tmp_path / "grid"
    argv = ["--config", QUICKSTART, "--workdir", str(workdir), *[f"--config.{o}" for o in TINY], *extra]
    assert sweep.main(argv) == 2
    import re
    assert re.search(match, capsys.readouterr().err)
    assert not workdir.exists()


def test_another_grid_in_a_used_sweep_directory_is_refused(swept, capsys):
    argv = ["--config", QUICKSTART, "--workdir", str(swept), "--grid", "grpo.beta=0,0.04", "--seeds", "2",
            *[f"--config.{o}" for o in TINY]]
    assert sweep.main(argv) == 2
    assert "holds another grid" in capsys.readouterr().err


def test_scaled_updates_are_the_cells_learning_rate():
    """The learning rate enters the program as a factor on AdamW's updates (weight decay and the
    schedule included): equal to the optimizer built with the cell's own rate."""
    from grpo_jax import sweep as sw
    from grpo_jax import train_step as ts

    params = {"w": jax.random.normal(jax.random.key(0), (4, 3)), "b": jax.numpy.ones(3)}
    grads = jax.tree.map(lambda x: 0.1 * x + 0.01, params)

    def opt(lr):
        return ts.make_optimizer(learning_rate=lr, max_grad_norm=1.0, b1=0.9, b2=0.99, weight_decay=0.1,
                                 warmup_steps=2, schedule="cosine", total_steps=5)

    mine, theirs = sw._scaled_updates(opt(1e-3), jax.numpy.float32(3.0)), opt(3e-3)
    s1, s2 = mine.init(params), theirs.init(params)
    for _ in range(3):
        u1, s1 = mine.update(grads, s1, params)
        u2, s2 = theirs.update(grads, s2, params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
    assert jax.tree.structure(s1) == jax.tree.structure(s2)
