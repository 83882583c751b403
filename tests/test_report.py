"""grpo_jax.report: hierarchical-bootstrap accuracy, paired differences, diagnostics, the report files
and the command line, on synthetic sweep directories (numpy only: no JAX program is compiled)."""
import json
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import report
from grpo_jax.metrics import MetricsWriter

B = 200  # bootstrap replicates where the exact number does not matter


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _write_cell(workdir, *, correct=None, rows=None, groups=None, eval_accuracy=True, steps=4):
    """A training workdir: metrics.jsonl (through MetricsWriter: the trainer's own format),
    eval_problems.jsonl from `correct` {step: f[M]} (ids 0..M-1), groups.jsonl from `groups`.

    `rows` default: training rows 1..steps with the curve metrics, plus eval_accuracy rows at the
    eval steps (the mean of `correct`) unless eval_accuracy=False."""
    workdir = pathlib.Path(workdir)
    correct = {} if correct is None else correct
    if rows is None:
        rows = [{"step": t, "reward_mean": 0.1 * t, "kl": 0.01 * t, "clip_fraction": 0.0,
                 "completion_length": 20.0 + t} for t in range(1, steps + 1)]
        if eval_accuracy:
            rows += [{"step": t, "eval_accuracy": float(np.mean(c))} for t, c in correct.items()]
    with MetricsWriter(workdir, tensorboard=False, progress=False, is_primary=True) as writer:
        for r in rows:
            writer.write(r["step"], {k: v for k, v in r.items() if k != "step"})
    if correct:
        _write_jsonl(workdir / report.EVAL_PROBLEMS_FILE,
                     [{"step": t, "ids": list(range(len(c))), "correct": [float(x) for x in c]}
                      for t, c in correct.items()])
    if groups is not None:
        _write_jsonl(workdir / report.GROUPS_FILE, groups)
    return workdir


def _write_sweep(root, cells, grid=None):
    """cells: [(label, seed, kwargs for _write_cell)] -> SWEEP_DIR in the sweep writer's layout."""
    root = pathlib.Path(root)
    entries = []
    for i, (label, seed, kwargs) in enumerate(cells):
        workdir = f"cells/{i:03d}"
        _write_cell(root / workdir, **kwargs)
        entries.append({"workdir": workdir, "label": label, "seed": seed, "values": {"name": label}})
    seeds = sorted({seed for _, seed, _ in cells})
    (root / "sweep.json").write_text(json.dumps({"config": "experiments/x.py", "grid": grid or {"name": []},
                                                 "seeds": seeds, "cells": entries}))
    return root


def _in_memory(configs, step=0):
    """A Sweep without files: configs {label: f[S, M] correct} at one eval step."""
    cells = []
    for label, x in configs.items():
        for seed, row in enumerate(np.asarray(x, np.float64)):
            cells.append(report.Cell(label=label, seed=seed, workdir=pathlib.Path(label), values={}, metrics=[],
                                     eval_problems={step: (np.arange(row.size), row)}, groups=None))
    return report.Sweep(cells=tuple(cells), source="sweep", path=pathlib.Path("."), config=None, grid={},
                        notes=(), default_out=pathlib.Path("report"))


def _by_label(table):
    return {r["configuration"]: r for r in table}


# --------------------------------------------------------------------------------------------------
def test_accuracy_hand_checked_and_collapsing_intervals(tmp_path):
    m = 10
    same = np.array([1.0] * 7 + [0.0] * 3)  # the same 7 of 10 problems right in every seed
    sweep = report.load(_write_sweep(tmp_path, [
        *(("A", s, {"correct": {0: np.zeros(m), 4: same}}) for s in range(3)),
        *(("all", s, {"correct": {0: np.zeros(m), 4: np.ones(m)}}) for s in range(3)),
        *(("none", s, {"correct": {0: np.zeros(m), 4: np.zeros(m)}}) for s in range(3)),
        ("mixed", 0, {"correct": {0: np.zeros(m), 4: [1, 1, 0, 0, 1, 0, 0, 0, 0, 0]}}),
        ("mixed", 1, {"correct": {0: np.zeros(m), 4: [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]}}),
    ]))
    assert sweep.configurations == ["A", "all", "none", "mixed"]
    table = _by_label(report.accuracy_table(sweep, bootstrap=2000))
    a = table["A"]["accuracy"][4]
    assert a["mean"] == pytest.approx(0.7) and a["seeds"] == 3 and a["problems"] == m and a["per_problem"]
    # Seeds are identical, so each replicate is Binomial(10, 0.7) / 10 (problem resampling alone):
    # P(X <= 3) = 0.011 < 0.025 < P(X <= 4) = 0.047 -> lo = 0.4 exactly; P(X <= 9) = 0.972 -> hi 0.9 or 1.
    assert a["lo"] == 0.4 and a["hi"] in (0.9, 1.0)
    assert table["A"]["accuracy"][0] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "std": 0.0, "seeds": 3,
                                         "problems": m, "per_problem": True}
    assert (table["all"]["accuracy"][4]["lo"], table["all"]["accuracy"][4]["hi"]) == (1.0, 1.0)
    assert (table["none"]["accuracy"][4]["lo"], table["none"]["accuracy"][4]["hi"]) == (0.0, 0.0)
    assert table["mixed"]["accuracy"][4]["mean"] == pytest.approx(4 / 20)
    assert table["mixed"]["seeds"] == 2

    pairs = {(p["a"], p["b"]): p for p in report.paired_differences(sweep, bootstrap=B)}
    assert len(pairs) == 6  # 4 configurations, every pair
    everything = pairs[("all", "none")]
    assert (everything["difference"], everything["lo"], everything["hi"]) == (1.0, 1.0, 1.0)
    assert everything["separable"] and everything["verdict"] == "separable" and everything["p"] == 0.0
    mixed = pairs[("A", "mixed")]
    assert mixed["seeds"] == 2 and "paired on the 2 seed(s)" in mixed["note"]
    assert mixed["difference"] == pytest.approx(0.7 - 4 / 20)


def test_seed_variance_enters_the_interval():
    # Seed 0 gets every problem right, seed 1 none: resampling problems alone would say [0.5, 0.5];
    # resampling seeds gives {0, 0} (mean 0), {0, 1} (0.5), {1, 1} (1) with probabilities 1/4, 1/2, 1/4.
    sweep = _in_memory({"A": [np.ones(100), np.zeros(100)]})
    (row,) = report.accuracy_table(sweep, bootstrap=2000)
    assert row["accuracy"][0]["mean"] == 0.5
    assert (row["accuracy"][0]["lo"], row["accuracy"][0]["hi"]) == (0.0, 1.0)


def test_identical_configurations_difference_is_exactly_zero():
    x = np.random.default_rng(0).random((3, 30)) < 0.5
    sweep = _in_memory({"A": x, "B": x.copy()})
    (p,) = report.paired_differences(sweep, bootstrap=B)
    assert (p["difference"], p["lo"], p["hi"], p["p"]) == (0.0, 0.0, 0.0, 1.0)
    assert not p["separable"] and p["verdict"] == "not separable at this size (3 seeds x 30 problems)"


def test_large_difference_separable_same_distribution_not():
    rng = np.random.default_rng(1)
    m, s = 200, 3
    difficulty = rng.random(m)  # per-problem probability of a right answer: very unequal problems
    sweep = _in_memory({
        "strong": rng.random((s, m)) < 0.8,
        "weak": rng.random((s, m)) < 0.2,
        "same1": rng.random((s, m)) < difficulty,
        "same2": rng.random((s, m)) < difficulty,
    })
    pairs = {(p["a"], p["b"]): p for p in report.paired_differences(sweep, bootstrap=2000)}
    big = pairs[("strong", "weak")]
    assert big["separable"] and 0.4 < big["lo"] < 0.6 < big["hi"] and big["p"] == 0.0
    same = pairs[("same1", "same2")]
    assert not same["separable"] and same["lo"] < 0 < same["hi"]
    assert same["verdict"] == "not separable at this size (3 seeds x 200 problems)"
    assert same["p"] > 0.05
    # The minimum detectable difference is 2.8 bootstrap std: a few points at 3 x 200.
    assert same["mdd"] == pytest.approx(2.8 * same["std"]) and 0.02 < same["mdd"] < 0.15
    # With a baseline: each other configuration minus the baseline.
    against = report.paired_differences(sweep, baseline="weak", bootstrap=B)
    assert [(p["a"], p["b"]) for p in against] == [("strong", "weak"), ("same1", "weak"), ("same2", "weak")]


def test_pairing_finds_a_difference_that_the_two_intervals_cannot():
    # Huge problem-to-problem variance (half the problems always right, half never), and A differs
    # from B by exactly one problem per seed (problem 100 + k in seed k): A - B = 1/200 exactly.
    m, s = 200, 10
    base = np.zeros((s, m))
    base[:, :100] = 1.0
    a = base.copy()
    a[np.arange(s), 100 + np.arange(s)] = 1.0
    sweep = _in_memory({"A": a, "B": base})
    acc = _by_label(report.accuracy_table(sweep, bootstrap=2000))
    ia, ib = acc["A"]["accuracy"][0], acc["B"]["accuracy"][0]
    assert ia["mean"] - ib["mean"] == pytest.approx(1 / m)
    assert ia["lo"] < ib["hi"] and ib["lo"] < ia["hi"]  # unpaired: the intervals overlap widely
    (p,) = report.paired_differences(sweep, bootstrap=2000)
    assert p["difference"] == pytest.approx(1 / m)
    assert p["lo"] > 0 and p["separable"]  # paired: the shared problems cancel


def test_deterministic_and_seeded():
    rng = np.random.default_rng(2)
    x = {"A": rng.random((3, 40)) < 0.6, "B": rng.random((3, 40)) < 0.5}
    sweep = _in_memory(x)
    first = report.accuracy_table(sweep, bootstrap=B, seed=3), report.paired_differences(sweep, bootstrap=B, seed=3)
    assert first == (report.accuracy_table(sweep, bootstrap=B, seed=3),
                     report.paired_differences(sweep, bootstrap=B, seed=3))
    assert first[0][0]["accuracy"][0]["mean"] == pytest.approx(x["A"].mean())
    other = report.paired_differences(sweep, bootstrap=B, seed=4)[0]
    assert (other["difference"], other["lo"], other["hi"]) != (first[1][0]["difference"], first[1][0]["lo"],
                                                               first[1][0]["hi"])
    assert other["difference"] == first[1][0]["difference"]  # the seed moves the interval, not the estimate


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.data())
def test_intervals_contain_the_estimate_and_stay_in_range(num_seeds, num_problems, data):
    values = st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0, 1)
    matrix = st.lists(st.lists(values, min_size=num_problems, max_size=num_problems),
                      min_size=num_seeds, max_size=num_seeds)
    sweep = _in_memory({"A": data.draw(matrix), "B": data.draw(matrix)})
    for row in report.accuracy_table(sweep, bootstrap=64, seed=data.draw(st.integers(0, 2**40))):
        a = row["accuracy"][0]
        assert 0.0 <= a["lo"] <= a["mean"] <= a["hi"] <= 1.0
    (p,) = report.paired_differences(sweep, bootstrap=64)
    assert -1.0 <= p["lo"] <= p["difference"] <= p["hi"] <= 1.0
    assert 0.0 <= p["p"] <= 1.0 and p["mdd"] >= 0.0
    assert p["separable"] == (p["lo"] > 0 or p["hi"] < 0)


# --------------------------------------------------------------------------------------------------
def test_diagnostics_hand_checked(tmp_path):
    seed0 = [
        {"step": 1, "reward_mean": [0.0, 0.3, 0.6, 1.0], "reward_std": [0.0, 0.4, 0.5, 0.0],
         "clip_fraction": [0.1, 0.2, 0.3, 0.4], "adv_length_corr": 0.5},
        {"step": 3, "reward_mean": [9, 9, 9, 9], "reward_std": [0, 0, 0, 0],  # a crashed run's line:
         "clip_fraction": [9, 9, 9, 9], "adv_length_corr": 9.0},           # the resumed one below wins
        {"step": 3, "reward_mean": [-0.2, 0.25, 0.75, 1.3], "reward_std": [0.1, 0.0, 0.2, 0.3],
         "clip_fraction": [0.5, 0.6, 0.7, 0.8], "adv_length_corr": None},
    ]
    # No clip_fraction; 3e-8: the f32 round-off std of equal rewards counts as zero.
    seed1 = [{"step": 2, "reward_mean": [0.5, 0.5], "reward_std": [0.0, 3e-8], "adv_length_corr": -0.1}]
    sweep = report.load(_write_sweep(tmp_path, [("A", 0, {"groups": seed0}), ("A", 1, {"groups": seed1}),
                                                ("B", 0, {})]))
    rows = {d["part"]: d for d in report.diagnostics(sweep)}
    assert [d["configuration"] for d in report.diagnostics(sweep)] == ["A"] * 3  # B has no groups.jsonl
    full = rows["all"]
    assert (full["seeds"], full["steps"], full["groups"]) == (2, 3, 10)
    assert full["zero_std_fraction"] == pytest.approx(5 / 10)
    assert full["adv_length_corr"] == pytest.approx((0.5 - 0.1) / 2)
    bins = full["clip_by_difficulty"]
    assert [b["bin"] for b in bins] == ["[0, 0.25)", "[0.25, 0.5)", "[0.5, 0.75)", "[0.75, 1]"]
    assert [b["groups"] for b in bins] == [2, 2, 1, 3]  # -0.2 -> first bin, 1.3 -> last, 0.25 / 0.75 up
    assert [b["clip_fraction"] for b in bins] == pytest.approx([0.3, 0.4, 0.3, (0.4 + 0.7 + 0.8) / 3])
    # Logged steps 1..3, middle 2: early = steps 1 and 2, late = step 3.
    assert rows["early"]["zero_std_fraction"] == pytest.approx(4 / 6)
    assert rows["late"]["zero_std_fraction"] == pytest.approx(1 / 4) and rows["late"]["adv_length_corr"] is None
    assert [b["groups"] for b in rows["early"]["clip_by_difficulty"]] == [1, 1, 1, 1]


def test_fallback_to_eval_accuracy_and_last_line_wins(tmp_path):
    rows = lambda acc: [{"step": 5, "eval_accuracy": acc}, {"step": 5, "reward_mean": 0.5}]  # noqa: E731
    root = _write_sweep(tmp_path / "sweep", [("A", s, {"rows": rows(acc)}) for s, acc in enumerate([0.5, 0.6, 0.7])]
                        + [("B", 0, {"rows": rows(0.4)})])
    sweep = report.load(root)
    table = _by_label(report.accuracy_table(sweep, bootstrap=B))
    a = table["A"]["accuracy"][5]
    assert not a["per_problem"] and a["problems"] is None and a["mean"] == pytest.approx(0.6)
    assert 0.5 <= a["lo"] < 0.6 < a["hi"] <= 0.7  # seeds only: replicates are means of 3 draws of the seeds
    assert table["B"]["accuracy"][5]["lo"] is None  # one seed, no per-problem data: no interval
    (p,) = report.paired_differences(sweep, bootstrap=B)
    assert p["seeds"] == 1 and p["lo"] is None and not p["separable"] and "no interval" in p["note"]
    text = report.write_report(root, bootstrap=B).read_text()
    assert "no cell has eval_problems.jsonl" in text and "metrics' eval_accuracy" in text
    assert "no cell has groups.jsonl" in text and "No cell has a groups.jsonl." in text

    # A resumed run wrote step 5 twice: the last line counts.
    workdir = _write_cell(tmp_path / "run", correct={5: np.zeros(4)})
    with open(workdir / report.EVAL_PROBLEMS_FILE, "a") as f:
        f.write(json.dumps({"step": 5, "ids": [0, 1, 2, 3], "correct": [1, 1, 1, 0]}) + "\n")
    (row,) = report.accuracy_table(report.load(workdir), bootstrap=B)
    assert row["accuracy"][5]["mean"] == 0.75 and row["accuracy"][5]["per_problem"]


# --------------------------------------------------------------------------------------------------
def _two_config_sweep(root):
    rng = np.random.default_rng(5)
    return _write_sweep(root, [
        (label, s, {"correct": {0: rng.random(50) < 0.3, 4: rng.random(50) < p},
                    "groups": [{"step": t, "reward_mean": [0.0, 0.5], "reward_std": [0.0, 0.5],
                                "clip_fraction": [0.0, 0.1], "adv_length_corr": 0.1} for t in range(1, 5)]})
        for label, p in (("beta=0", 0.9), ("beta=0.04", 0.1)) for s in range(2)])


def test_cli_writes_the_report(tmp_path, capsys):
    root = _two_config_sweep(tmp_path / "sweep")
    assert report.main([str(root), "--bootstrap", "200", "--baseline", "beta=0.04"]) == 0
    out = capsys.readouterr().out
    for name in ("report.md", "curves.png", "accuracy.png"):
        assert (root / "report" / name).stat().st_size > 0
    last = out.strip().splitlines()[-1]
    assert last == f"RESULT report={root / 'report' / 'report.md'} configurations=2 separable_pairs=1"
    text = (root / "report" / "report.md").read_text()
    assert text.strip() in out
    assert "| configuration | seeds | problems | acc@0 | acc@4 |" in text
    assert re.search(r"\| beta=0 \| beta=0.04 \| 2 x 50 \| \+0\.\d+ \[", text)
    assert "![curves.png](curves.png)" in text and "![accuracy.png](accuracy.png)" in text
    assert "| beta=0 | all | 2 | 8 | 16 | 0.500 |" in text  # diagnostics: 4 steps x 2 seeds x 2 groups
    # --steps picks the columns and the headline (step 0: both near 30 %, not separable).
    assert report.main([str(root), "--bootstrap", "200", "--steps", "0"]) == 0
    assert capsys.readouterr().out.strip().endswith("configurations=2 separable_pairs=0")


@pytest.mark.parametrize("args, culprit", [
    (["{tmp}/nowhere"], "no such directory: '{tmp}/nowhere'"),
    (["{tmp}/empty"], "'{tmp}/empty' is neither a sweep"),
    (["{tmp}/sweep", "--baseline", "beta=7"], "--baseline 'beta=7' is not a configuration"),
    (["{tmp}/sweep", "--steps", "0,999"], "step 999: no cell has an eval at that step (eval steps: 0, 4)"),
    (["{tmp}/sweep", "--steps", "last"], "--steps wants comma-separated integers, got 'last'"),
])
def test_cli_bad_input_names_the_culprit(tmp_path, capsys, args, culprit):
    (tmp_path / "empty").mkdir()
    _two_config_sweep(tmp_path / "sweep")
    assert report.main([a.format(tmp=tmp_path) for a in args]) == 2
    captured = capsys.readouterr()
    assert culprit.format(tmp=tmp_path) in captured.err and captured.out == ""
    assert not (tmp_path / "sweep" / "report").exists()  # refused before any work


def test_plain_workdirs_compared(tmp_path, capsys):
    runs = tmp_path / "runs"
    m = 100
    good = np.arange(m) < 80
    _write_cell(runs / "a", correct={0: np.zeros(m), 10: good}, steps=10)
    _write_cell(runs / "b", correct={0: np.zeros(m), 10: np.arange(m) < 20}, steps=10)
    sweep = report.load([runs / "a", runs / "b"])
    assert sweep.configurations == ["a", "b"] and sweep.source == "workdirs"
    assert report.main([str(runs / "a"), str(runs / "b"), "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].endswith("configurations=2 separable_pairs=1")
    text = (runs / "report" / "report.md").read_text()
    assert "ignore seed variance" in text and "| a | b | 1 x 100 | +0.600 [" in text
    assert "| a | 1 | 100 | 0.000 [0.000, 0.000] | 0.800 [" in text
