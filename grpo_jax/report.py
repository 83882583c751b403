"""`python -m grpo_jax.report SWEEP_DIR`: compare a sweep's configurations with intervals, curves, diagnostics.

    python -m grpo_jax.report runs/sweeps/NAME [--steps 0,25,50] [--baseline LABEL] [--bootstrap 2000]
    python -m grpo_jax.report runs/a runs/b          ordinary runs: each workdir its own configuration

Reads, per cell (one training workdir; a sweep's cells are listed in SWEEP_DIR/sweep.json with a
label -- same label, same configuration -- and a seed):
    metrics.jsonl        scalar rows (`metrics.read_metrics`): curves, and eval_accuracy as a fallback
    eval_problems.jsonl  {"step", "ids", "correct"} per eval: which held-out problem each cell got right
    groups.jsonl         {"step", "reward_mean"[B], "reward_std"[B], "clip_fraction"[B], "adv_length_corr"}
A step logged twice (a resumed run) counts once: the last line wins. A missing file is said in the
report, and the sections that need it are skipped.

Writes SWEEP_DIR/report/{report.md, curves.png, accuracy.png}, prints the markdown and one
`RESULT report=... configurations=... separable_pairs=...` line.

Statistics (numpy only, seeded, deterministic):
  accuracy   mean over seeds and held-out problems, with a 95 % interval from a hierarchical
             bootstrap: each replicate resamples seeds with replacement, then problems with
             replacement. Both are real sources of variance -- another seed is another training
             run, another problem set another benchmark -- and resampling only one understates the
             interval. With one seed the interval is over problems only, and says so. Without
             eval_problems.jsonl it falls back to the metrics' eval_accuracy and a seeds-only
             bootstrap (no interval at all from one seed). A seed's mean already carries some
             problem noise, so with few problems this errs slightly wide (conservative).
  paired     A - B on the same problems and the same seeds (seed k of A with seed k of B): in each
             replicate both configurations get the same resampled problems and seeds, so what the
             two share (an easy problem is easy for both, a lucky seed's data order is lucky for
             both) cancels. Problem-to-problem variance is usually far larger than the effect, so
             two overlapping per-configuration intervals say little; the paired interval is the
             one to read.
  verdict    "separable" when the paired 95 % interval excludes 0. Otherwise "not separable at this
             size (N seeds x M problems)": not "equal", but that these N x M cannot tell them apart.
             The minimum detectable difference, 2.8 x the bootstrap std of the difference
             (1.96 + 0.84: a 5 % two-sided test with 80 % power), is the size this sweep could
             have seen; p is the two-sided bootstrap fraction 2 min(P*(d <= 0), P*(d >= 0)).
Each step's replicates come from a random stream seeded by (seed, step) alone, so a table, the
paired differences and the plot see the same replicates, whatever is asked in whichever order.

Plots use matplotlib's object API (no pyplot, no global backend switch): safe to call from a
notebook. Without matplotlib the report says so and has no PNGs.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import pathlib
import sys
from typing import NamedTuple, Sequence

import numpy as np

SWEEP_FILE = "sweep.json"
METRICS_FILE = "metrics.jsonl"
EVAL_PROBLEMS_FILE = "eval_problems.jsonl"
GROUPS_FILE = "groups.jsonl"
CURVE_KEYS = ("reward_mean", "kl", "clip_fraction", "entropy", "completion_length")
DIFFICULTY_BINS = (0.0, 0.25, 0.5, 0.75, 1.0)  # group mean reward; the last bin is closed: [0.75, 1]
ZERO_STD = 1e-6  # a group's reward std at or below this is "zero variance" (f32 round-off of equal rewards)
MDD_FACTOR = 2.8  # z_{0.975} + z_{0.80}: a 5 % two-sided test with 80 % power


class ReportError(ValueError):
    """Bad input: a missing directory, an unknown label or step, a malformed file. Names the culprit."""


class Cell(NamedTuple):
    """One (configuration, seed): an ordinary training workdir."""
    label: str  # the configuration; cells with the same label are its seeds
    seed: int
    workdir: pathlib.Path
    values: dict  # the grid values of this configuration ({} for plain workdirs)
    metrics: list  # scalar rows of metrics.jsonl
    eval_problems: dict | None  # step -> (ids i64[M], correct f64[M]); None: no eval_problems.jsonl
    groups: list | None  # groups.jsonl records sorted by step (one per step); None: no groups.jsonl


class Sweep(NamedTuple):
    """What `load` read: the cells, where they came from, and what was missing."""
    cells: tuple  # Cell, in sweep.json order
    source: str  # "sweep" or "workdirs"
    path: pathlib.Path  # the sweep directory, or the workdirs' common parent
    config: str | None  # sweep.json's "config"
    grid: dict  # sweep.json's "grid"
    notes: tuple  # load-time notes (missing files, cells without metrics)
    default_out: pathlib.Path  # where `write_report` writes unless told

    @property
    def configurations(self) -> list:
        """Labels in order of first appearance."""
        return list(dict.fromkeys(c.label for c in self.cells))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------
def _records(path: pathlib.Path) -> dict:
    """step -> record of a detail file (`metrics.read_detail`: a truncated last line dropped, a step
    written twice keeps its last line); a damaged file is a ReportError naming it."""
    from grpo_jax.metrics import read_detail  # imports jax; the report itself needs only numpy

    try:
        return {r["step"]: r for r in read_detail(path.parent, path.name)}
    except ValueError as e:
        raise ReportError(str(e)) from None


def _read_eval_problems(path: pathlib.Path) -> dict:
    out = {}
    for step, r in _records(path).items():
        try:
            ids = np.asarray(r["ids"], dtype=np.int64)
            correct = np.asarray(r["correct"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as e:
            raise ReportError(f"{path}: step {step} needs integer 'ids' and numeric 'correct' ({e})") from None
        if ids.ndim != 1 or ids.shape != correct.shape:
            raise ReportError(f"{path}: step {step} has {ids.size} ids but {correct.size} 'correct' values")
        if not np.all((correct >= 0) & (correct <= 1)):
            raise ReportError(f"{path}: step {step} has 'correct' values outside [0, 1]")
        if len(set(ids.tolist())) != ids.size:
            raise ReportError(f"{path}: step {step} lists a problem id twice")
        out[step] = (ids, correct)
    return out


def _read_groups(path: pathlib.Path) -> list:
    out = []
    for step, r in sorted(_records(path).items()):
        try:
            mean = np.asarray(r["reward_mean"], dtype=np.float64).reshape(-1)
            std = np.asarray(r["reward_std"], dtype=np.float64).reshape(-1)
            clip = None if r.get("clip_fraction") is None else np.asarray(r["clip_fraction"], np.float64).reshape(-1)
        except (KeyError, TypeError, ValueError) as e:
            raise ReportError(f"{path}: step {step} needs numeric 'reward_mean' and 'reward_std' ({e})") from None
        if std.shape != mean.shape or (clip is not None and clip.shape != mean.shape):
            raise ReportError(f"{path}: step {step}: reward_mean, reward_std and clip_fraction differ in length")
        corr = r.get("adv_length_corr")
        corr = float(corr) if isinstance(corr, (int, float)) and math.isfinite(corr) else None
        out.append({"step": step, "reward_mean": mean, "reward_std": std, "clip_fraction": clip,
                    "adv_length_corr": corr})
    return out


def _read_cell(workdir: pathlib.Path, label: str, seed: int, values: dict) -> Cell:
    from grpo_jax.metrics import read_metrics  # imports jax; the report itself needs only numpy

    try:
        rows = read_metrics(workdir)
    except ValueError as e:
        raise ReportError(str(e)) from None
    problems = workdir / EVAL_PROBLEMS_FILE
    groups = workdir / GROUPS_FILE
    return Cell(label=label, seed=int(seed), workdir=workdir, values=dict(values), metrics=rows,
                eval_problems=_read_eval_problems(problems) if problems.exists() else None,
                groups=_read_groups(groups) if groups.exists() else None)


def _run_seed(workdir: pathlib.Path) -> int:
    """train.seed from an ordinary run's config.json; 0 when it has none."""
    try:
        return int(json.loads((workdir / "config.json").read_text())["train"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _check_dir(path: pathlib.Path) -> None:
    if not path.is_dir():
        raise ReportError(f"no such directory: {str(path)!r}")
    if not (path / SWEEP_FILE).exists() and not (path / METRICS_FILE).exists():
        raise ReportError(f"{str(path)!r} is neither a sweep (no {SWEEP_FILE}) nor a run workdir (no {METRICS_FILE})")


def load(path_or_paths) -> Sweep:
    """A sweep directory (with sweep.json), or one or more run workdirs (each with metrics.jsonl;
    each its own configuration, labelled by its directory name, one seed: train.seed of its
    config.json, else 0)."""
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else list(path_or_paths)
    if not paths:
        raise ReportError("no sweep directory or run workdir given")
    paths = [pathlib.Path(p) for p in paths]
    for p in paths:
        _check_dir(p)
    if len(paths) == 1 and (paths[0] / SWEEP_FILE).exists():
        return _load_sweep(paths[0])
    for p in paths:
        if not (p / METRICS_FILE).exists():
            raise ReportError(f"{str(p)!r} is a sweep: report on it alone, not with other directories")
    names = [p.resolve().name for p in paths]
    labels = names if len(set(names)) == len(names) else [str(p) for p in paths]
    if len(set(labels)) != len(labels):
        raise ReportError(f"the same workdir is given twice: {', '.join(map(str, paths))}")
    cells = tuple(_read_cell(p, label, _run_seed(p), {}) for p, label in zip(paths, labels))
    parent = pathlib.Path(os.path.commonpath([str(p.resolve()) for p in paths]))
    return Sweep(cells=cells, source="workdirs", path=parent, config=None, grid={},
                 notes=_missing_notes(cells), default_out=parent / "report")


def _load_sweep(root: pathlib.Path) -> Sweep:
    path = root / SWEEP_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        listed = spec["cells"]
    except (ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{path}: not a sweep description with a 'cells' list ({e})") from None
    cells, notes = [], []
    for i, entry in enumerate(listed):
        if not isinstance(entry, dict) or "workdir" not in entry:
            raise ReportError(f"{path}: cell {i} has no 'workdir'")
        values = entry.get("values") or {}
        label = entry.get("label") or " ".join(f"{k}={v}" for k, v in values.items()) or f"cell {i}"
        workdir = root / entry["workdir"]  # an absolute path stays absolute
        if not (workdir / METRICS_FILE).exists():
            notes.append(f"cell {entry['workdir']} ({label}, seed {entry.get('seed', i)}) has no "
                         f"{METRICS_FILE} yet: left out")
            continue
        cells.append(_read_cell(workdir, str(label), int(entry.get("seed", i)), values))
    if not cells:
        raise ReportError(f"{path}: no cell has a {METRICS_FILE} yet")
    cells = tuple(cells)
    return Sweep(cells=cells, source="sweep", path=root, config=spec.get("config"),
                 grid=dict(spec.get("grid") or {}), notes=tuple(notes) + _missing_notes(cells),
                 default_out=root / "report")


def _missing_notes(cells) -> tuple:
    notes = []
    for filename, attr, what in ((EVAL_PROBLEMS_FILE, "eval_problems", "per-problem accuracy (intervals fall back "
                                  "to metrics' eval_accuracy, seeds only)"),
                                 (GROUPS_FILE, "groups", "per-group diagnostics")):
        missing = [c for c in cells if getattr(c, attr) is None]
        if missing:
            which = "no cell has" if len(missing) == len(cells) else \
                f"{len(missing)} of {len(cells)} cells have no"
            notes.append(f"{which} {filename}: no {what} from {'them' if len(missing) < len(cells) else 'it'}"
                         + ("" if len(missing) == len(cells) else
                            f" ({', '.join(f'{c.label} seed {c.seed}' for c in missing[:4])}"
                            f"{', ...' if len(missing) > 4 else ''})"))
    return tuple(notes)


# --------------------------------------------------------------------------------------------------
# Held-out accuracy: data per step, the shared bootstrap replicates
# --------------------------------------------------------------------------------------------------
def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _metric_by_step(cell: Cell, key: str) -> dict:
    """step -> the last finite value of `key` logged at that step."""
    return {r["step"]: float(r[key]) for r in cell.metrics if _finite(r.get(key))}


def _eval_steps(cell: Cell) -> set:
    return set(cell.eval_problems or ()) | set(_metric_by_step(cell, "eval_accuracy"))


def shared_eval_steps(sweep: Sweep) -> list:
    """Eval steps every cell has (the default `--steps`; the last is the headline)."""
    steps = [_eval_steps(c) for c in sweep.cells]
    return sorted(set.intersection(*steps)) if steps else []


def _all_eval_steps(sweep: Sweep) -> list:
    return sorted(set().union(*(_eval_steps(c) for c in sweep.cells)))


class _StepData(NamedTuple):
    per_problem: bool  # False: metrics' eval_accuracy, one number per cell (seeds-only bootstrap)
    num_problems: int  # M (1 in the fallback)
    rows: dict  # label -> (seeds sorted, f64[S, M] correct, same problem order for every label)
    notes: list


def _step_data(sweep: Sweep, step: int) -> _StepData:
    cells = [c for c in sweep.cells if step in _eval_steps(c)]
    notes = []
    per_problem = all(c.eval_problems is not None and step in c.eval_problems for c in cells)
    if per_problem:
        id_sets = [set(c.eval_problems[step][0].tolist()) for c in cells]
        common = sorted(set.intersection(*id_sets)) if id_sets else []
        if not common:
            per_problem = False
            notes.append(f"step {step}: the cells share no problem id: metrics' eval_accuracy used")
        elif any(len(s) != len(common) for s in id_sets):
            notes.append(f"step {step}: the cells evaluated different problems: the {len(common)} all share are used")
    else:
        notes.append(f"step {step}: not every cell has per-problem results: metrics' eval_accuracy, "
                     f"seeds-only bootstrap")
    by_label = {}
    for c in cells:
        if per_problem:
            ids, correct = c.eval_problems[step]
            order = dict(zip(ids.tolist(), correct.tolist()))
            row = np.array([order[i] for i in common], np.float64)
        else:
            acc = _metric_by_step(c, "eval_accuracy").get(step)
            if acc is None:  # only eval_problems at this step: its mean is the accuracy
                acc = float(c.eval_problems[step][1].mean())
            row = np.array([acc], np.float64)
        by_label.setdefault(c.label, []).append((c.seed, row))
    rows = {}
    for label in sweep.configurations:
        if label in by_label:
            pairs = sorted(by_label[label], key=lambda p: p[0])
            rows[label] = ([s for s, _ in pairs], np.stack([r for _, r in pairs]))
    return _StepData(per_problem, len(common) if per_problem else 1, rows, notes)


class _Draws(NamedTuple):
    problem_counts: np.ndarray  # i64[B, M]: how often each problem is drawn (multinomial, sum M)
    seed_uniform: np.ndarray  # f64[B, S_max]: seeds_k = floor(u_k * S), the first S columns for S seeds


def _draws(seed: int, step: int, num_problems: int, max_seeds: int, bootstrap: int, per_problem: bool) -> _Draws:
    # One stream per (seed, step): the same replicates for every table, pair and plot at that step.
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, step % 2**63]))
    if per_problem:
        counts = rng.multinomial(num_problems, np.full(num_problems, 1.0 / num_problems), size=bootstrap)
    else:
        counts = np.ones((bootstrap, 1), np.int64)
    return _Draws(counts, rng.random((bootstrap, max_seeds)))


def _replicates(x: np.ndarray, draws: _Draws) -> np.ndarray:
    """f64[B]: the bootstrap means of x [S, M], seeds then problems resampled with replacement.

    Integer counts and one division at the end: with x in {0, 1} every replicate is an exact
    fraction, so an all-correct configuration gives exactly 1.0 (an interval of [1, 1]).
    """
    num_seeds, num_problems = x.shape
    picks = np.minimum((draws.seed_uniform[:, :num_seeds] * num_seeds).astype(np.int64), num_seeds - 1)  # [B, S]
    seed_counts = (picks[:, :, None] == np.arange(num_seeds)).sum(1)  # i64[B, S]
    per_problem = seed_counts @ x  # [B, M]: each problem's correct count over the drawn seeds
    return (per_problem * draws.problem_counts).sum(1) / (num_seeds * num_problems)


def _summary(x: np.ndarray, reps: np.ndarray | None, bound: float) -> dict:
    """Point estimate, 95 % percentile interval and bootstrap std, clipped to [-bound, bound].

    The interval is widened to contain the point where Monte Carlo noise puts it just outside
    (a few hundred replicates on tiny data); a percentile interval of a mean is centred on it.
    """
    mean = float(x.sum() / x.size)
    if reps is None:
        return {"mean": mean, "lo": None, "hi": None, "std": None}
    lo, hi = np.quantile(reps, [0.025, 0.975])
    lo, hi = max(-bound, min(float(lo), mean)), min(bound, max(float(hi), mean))
    return {"mean": mean, "lo": lo, "hi": hi, "std": float(reps.std(ddof=1)) if reps.size > 1 else 0.0}


def _check_steps(sweep: Sweep, steps) -> list:
    if steps is None:
        return shared_eval_steps(sweep)
    available = _all_eval_steps(sweep)
    steps = [int(s) for s in steps]
    for s in steps:
        if s not in available:
            raise ReportError(f"step {s}: no cell has an eval at that step (eval steps: "
                              f"{', '.join(map(str, available)) or 'none'})")
    return steps


def _check_baseline(sweep: Sweep, baseline) -> None:
    if baseline is not None and baseline not in sweep.configurations:
        raise ReportError(f"--baseline {baseline!r} is not a configuration of this sweep (labels: "
                          f"{'; '.join(map(repr, sweep.configurations))})")


def _check_bootstrap(bootstrap) -> None:
    if not isinstance(bootstrap, (int, np.integer)) or bootstrap < 2:
        raise ReportError(f"bootstrap must be an integer >= 2, got {bootstrap!r}")


def _accuracy_at(sweep: Sweep, step: int, bootstrap: int, seed: int) -> tuple:
    """({label: summary + seeds, problems, method}, notes) at one eval step."""
    data = _step_data(sweep, step)
    max_seeds = max((x.shape[0] for _, x in data.rows.values()), default=1)
    draws = _draws(seed, step, data.num_problems, max_seeds, bootstrap, data.per_problem)
    out = {}
    for label, (seeds, x) in data.rows.items():
        reps = None if (not data.per_problem and x.shape[0] < 2) else _replicates(x, draws)
        out[label] = {**_summary(x, reps, 1.0), "seeds": x.shape[0], "problems": data.num_problems if
                      data.per_problem else None, "per_problem": data.per_problem}
    return out, data.notes


def accuracy_table(sweep: Sweep, steps=None, *, bootstrap: int = 2000, seed: int = 0) -> list:
    """One dict per configuration: {"configuration", "values", "seeds", "problems", "accuracy":
    {step: {"mean", "lo", "hi", "std", "seeds", "problems", "per_problem"}}}.

    `steps`: eval steps to report (default: those every cell shares). A configuration with no
    eval at a step has no entry for it. lo / hi are None where no interval exists (one seed and no
    per-problem data). "problems" is None in the eval_accuracy fallback.
    """
    _check_bootstrap(bootstrap)
    steps = _check_steps(sweep, steps)
    at = {s: _accuracy_at(sweep, s, bootstrap, seed)[0] for s in steps}
    return _accuracy_rows(sweep, steps, at)


def _accuracy_rows(sweep: Sweep, steps, at: dict) -> list:
    rows = []
    for label in sweep.configurations:
        cells = [c for c in sweep.cells if c.label == label]
        accuracy = {s: at[s][label] for s in steps if label in at[s]}
        problems = [a["problems"] for a in accuracy.values() if a["problems"] is not None]
        rows.append({"configuration": label, "values": cells[0].values, "seeds": len(cells),
                     "problems": problems[-1] if problems else None, "accuracy": accuracy})
    return rows


# --------------------------------------------------------------------------------------------------
# Paired differences
# --------------------------------------------------------------------------------------------------
def _pair_rows(seeds_a: list, seeds_b: list) -> tuple:
    """Row indices (into A's and B's seed-sorted rows) of the paired seeds, and a note or None.

    Seed k of A with seed k of B where both configurations ran seed k; configurations that share
    no seed value (plain workdirs of other seeds) are paired by position in seed order instead.
    """
    common = sorted(set(seeds_a) & set(seeds_b))
    if common and len(set(seeds_a)) == len(seeds_a) and len(set(seeds_b)) == len(seeds_b):
        note = None if len(common) == len(seeds_a) == len(seeds_b) else \
            f"paired on the {len(common)} seed(s) both ran ({', '.join(map(str, common))})"
        return [seeds_a.index(s) for s in common], [seeds_b.index(s) for s in common], note
    n = min(len(seeds_a), len(seeds_b))
    return list(range(n)), list(range(n)), f"no shared seed values: paired by position ({n} pair(s))"


def paired_differences(sweep: Sweep, step=None, *, baseline=None, bootstrap: int = 2000, seed: int = 0) -> list:
    """A - B in held-out accuracy at `step` (default: the last eval step every cell shares), for
    every pair of configurations (A before B in sweep order), or for each A against `baseline`
    (B = the baseline). One dict per pair: {"a", "b", "step", "seeds" (pairs), "problems",
    "difference", "lo", "hi", "std", "p", "mdd", "separable", "verdict", "per_problem", "note"}.
    """
    _check_bootstrap(bootstrap)
    _check_baseline(sweep, baseline)
    if step is None:
        shared = shared_eval_steps(sweep)
        if not shared:
            return []
        step = shared[-1]
    step = _check_steps(sweep, [step])[0]
    data = _step_data(sweep, step)
    labels = [label for label in sweep.configurations if label in data.rows]
    if baseline is None:
        pairs = list(itertools.combinations(labels, 2))
    else:
        pairs = [(label, baseline) for label in labels if label != baseline and baseline in data.rows]
    max_seeds = max((x.shape[0] for _, x in data.rows.values()), default=1)
    draws = _draws(seed, step, data.num_problems, max_seeds, bootstrap, data.per_problem)
    out = []
    for a, b in pairs:
        (seeds_a, xa), (seeds_b, xb) = data.rows[a], data.rows[b]
        rows_a, rows_b, note = _pair_rows(seeds_a, seeds_b)
        d = xa[rows_a] - xb[rows_b]  # [P, M]: seed k of A minus seed k of B, problem by problem
        num_pairs, num_problems = d.shape
        reps = None if (not data.per_problem and num_pairs < 2) else _replicates(d, draws)
        s = _summary(d, reps, 1.0)
        notes = [note] if note else []
        if data.per_problem and num_pairs == 1:
            notes.append("one seed: the interval ignores seed variance")
        if not data.per_problem:
            notes.append("no per-problem data: seeds-only bootstrap" if reps is not None else
                         "one seed and no per-problem data: no interval")
        if reps is None:
            p = None
            separable = False
        else:
            p = float(min(1.0, 2 * min(np.mean(reps <= 0), np.mean(reps >= 0))))
            separable = s["lo"] > 0 or s["hi"] < 0
        size = f"{num_pairs} seeds x {num_problems} problems" if data.per_problem else \
            f"{num_pairs} seeds, no per-problem data"
        out.append({"a": a, "b": b, "step": step, "seeds": num_pairs,
                    "problems": num_problems if data.per_problem else None,
                    "difference": s["mean"], "lo": s["lo"], "hi": s["hi"], "std": s["std"], "p": p,
                    "mdd": None if s["std"] is None else MDD_FACTOR * s["std"],
                    "separable": separable,
                    "verdict": "separable" if separable else f"not separable at this size ({size})",
                    "per_problem": data.per_problem, "note": "; ".join(notes)})
    return out


# --------------------------------------------------------------------------------------------------
# Per-group diagnostics
# --------------------------------------------------------------------------------------------------
def _bin_names() -> list:
    edges = DIFFICULTY_BINS
    return [f"[{lo:g}, {hi:g}{']' if i == len(edges) - 2 else ')'}" for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]


def _group_stats(records: list) -> dict:
    num_bins = len(DIFFICULTY_BINS) - 1
    groups = zero = 0
    corrs = []
    clip_sum, clip_n = np.zeros(num_bins), np.zeros(num_bins, np.int64)
    for r in records:
        std = r["reward_std"]
        finite = np.isfinite(std)
        groups += int(finite.sum())
        zero += int((np.abs(std[finite]) <= ZERO_STD).sum())
        if r["adv_length_corr"] is not None:
            corrs.append(r["adv_length_corr"])
        if r["clip_fraction"] is not None:
            ok = np.isfinite(r["reward_mean"]) & np.isfinite(r["clip_fraction"])
            mean = np.clip(r["reward_mean"][ok], DIFFICULTY_BINS[0], DIFFICULTY_BINS[-1])
            # searchsorted on the inner edges: [0, .25) -> 0, ..., [.75, 1] -> 3 (1.0 joins the last bin)
            index = np.searchsorted(np.asarray(DIFFICULTY_BINS[1:-1]), mean, side="right")
            np.add.at(clip_sum, index, r["clip_fraction"][ok])
            np.add.at(clip_n, index, 1)
    bins = [{"bin": name, "lo": lo, "hi": hi, "groups": int(n), "clip_fraction": float(total / n) if n else None}
            for name, lo, hi, n, total in zip(_bin_names(), DIFFICULTY_BINS, DIFFICULTY_BINS[1:], clip_n, clip_sum)]
    return {"steps": len(records), "groups": groups,
            "zero_std_fraction": zero / groups if groups else None,
            "adv_length_corr": float(np.mean(corrs)) if corrs else None,
            "clip_by_difficulty": bins}


def diagnostics(sweep: Sweep) -> list:
    """Per configuration and part ("all", "early", "late": logged steps up to / past the middle of
    the configuration's logged range), pooled over seeds and steps: {"configuration", "part",
    "seeds" (cells with groups.jsonl), "steps" (records), "groups", "zero_std_fraction",
    "adv_length_corr" (mean of the logged per-step correlations), "clip_by_difficulty": [{"bin",
    "lo", "hi", "groups", "clip_fraction"}]} (groups binned by mean reward, clipped into [0, 1]).
    A configuration without any groups.jsonl gets no rows."""
    out = []
    for label in sweep.configurations:
        cells = [c for c in sweep.cells if c.label == label and c.groups is not None]
        records = [r for c in cells for r in c.groups]
        if not records:
            continue
        steps = [r["step"] for r in records]
        middle = (min(steps) + max(steps)) / 2
        for part, keep in (("all", lambda s: True), ("early", lambda s: s <= middle), ("late", lambda s: s > middle)):
            stats = _group_stats([r for r in records if keep(r["step"])])
            out.append({"configuration": label, "part": part, "seeds": len(cells), **stats})
    return out


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------
def _curves(sweep: Sweep) -> dict:
    """key -> label -> (steps, mean, min, max) over the seeds that logged the key at each step."""
    out = {}
    for key in CURVE_KEYS:
        per_label = {}
        for label in sweep.configurations:
            series = [_metric_by_step(c, key) for c in sweep.cells if c.label == label]
            steps = sorted(set().union(*series))
            if not steps:
                continue
            values = [[s[t] for s in series if t in s] for t in steps]
            per_label[label] = (np.array(steps), np.array([np.mean(v) for v in values]),
                                np.array([np.min(v) for v in values]), np.array([np.max(v) for v in values]))
        if per_label:
            out[key] = per_label
    return out


def _plot_curves(curves: dict, path: pathlib.Path) -> None:
    from matplotlib.figure import Figure  # the object API: no pyplot state, no backend switch

    ncols = min(3, len(curves))
    nrows = math.ceil(len(curves) / ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).reshape(-1)
    for ax, (key, per_label) in zip(axes, curves.items()):
        for i, (label, (steps, mean, lo, hi)) in enumerate(per_label.items()):
            color = f"C{i % 10}"
            ax.plot(steps, mean, color=color, lw=1.2, label=label)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
        ax.set(title=key, xlabel="step")
        ax.grid(alpha=0.3)
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle("mean over seeds; band: min-max over seeds", fontsize=10)
    fig.savefig(path, dpi=90)


def _plot_accuracy(at: dict, path: pathlib.Path, labels: list) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for i, label in enumerate(labels):
        points = [(s, a[label]) for s, a in sorted(at.items()) if label in a]
        if not points:
            continue
        steps = np.array([s for s, _ in points])
        mean = np.array([p["mean"] for _, p in points])
        lo = np.array([np.nan if p["lo"] is None else p["lo"] for _, p in points])
        hi = np.array([np.nan if p["hi"] is None else p["hi"] for _, p in points])
        color = f"C{i % 10}"
        ax.plot(steps, mean, "o-", color=color, ms=3, label=label)
        ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    ax.set(xlabel="step", ylabel="held-out accuracy", ylim=(-0.02, 1.02),
           title="mean over seeds and problems; band: 95 % hierarchical bootstrap")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
def _shown(path) -> str:
    """`path` relative to the working directory where that is shorter (no machine paths in a
    report that gets committed, e.g. a notebook's output)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive
        return str(path)
    return rel if len(rel) < len(str(path)) else str(path)


def _f(x, signed=False) -> str:
    return "n/a" if x is None else (f"{x:+.3f}" if signed else f"{x:.3f}")


def _interval(s: dict, signed=False) -> str:
    if s["lo"] is None:
        return f"{_f(s['mean'], signed)} (no interval)"
    return f"{_f(s['mean'], signed)} [{_f(s['lo'], signed)}, {_f(s['hi'], signed)}]"


def _table(header: list, rows: list) -> list:
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]


def _markdown(sweep, steps, at, acc_notes, pairs, diag, bootstrap, seed, baseline, pngs, png_note) -> str:
    lines = [f"# Report: {_shown(sweep.path)}", ""]
    if sweep.source == "sweep":
        grid = ", ".join(f"{k} in {v}" for k, v in sweep.grid.items()) or "none"
        lines += [f"Sweep of `{sweep.config}`: grid {grid}; {len(sweep.configurations)} configurations, "
                  f"{len(sweep.cells)} cells.", ""]
    else:
        lines += [f"{len(sweep.cells)} run workdirs, each its own configuration (one seed): "
                  + ", ".join(f"`{c.workdir}`" for c in sweep.cells), ""]
    notes = list(sweep.notes) + list(dict.fromkeys(acc_notes))
    single = [label for label in sweep.configurations if sum(c.label == label for c in sweep.cells) == 1]
    if single and len(single) == len(sweep.configurations):
        notes.append("one seed per configuration: intervals resample problems only and ignore seed variance")
    elif single:
        notes.append(f"one seed only ({', '.join(single)}): its intervals ignore seed variance")
    if png_note:
        notes.append(png_note)
    if notes:
        lines += ["Notes:", *(f"- {n}" for n in notes), ""]

    lines += ["## Held-out accuracy", ""]
    if not steps:
        lines += ["No eval step is shared by every cell: no accuracy table (pass --steps to choose some)."
                  if _all_eval_steps(sweep) else "No cell has a held-out evaluation.", ""]
    else:
        rows = _accuracy_rows(sweep, steps, at)
        lines += _table(["configuration", "seeds", "problems", *(f"acc@{s}" for s in steps)],
                        [[r["configuration"], r["seeds"], r["problems"] or "n/a",
                          *(_interval(r["accuracy"][s]) if s in r["accuracy"] else "n/a" for s in steps)]
                         for r in rows])
        lines += ["", f"Mean over seeds and problems [95 % hierarchical bootstrap: seeds, then problems, "
                  f"resampled with replacement; B = {bootstrap}, seed {seed}]. Headline: step {steps[-1]}.", ""]

    lines += ["## Paired differences", ""]
    if not pairs:
        lines += ["Nothing to compare (fewer than two configurations with an eval at the headline step).", ""]
    else:
        against = f" against baseline `{baseline}`" if baseline else ""
        lines += [f"A - B in held-out accuracy at step {pairs[0]['step']}{against}, on the same problems and "
                  f"seeds (seed k of A with seed k of B).", ""]
        lines += _table(["A", "B", "seeds x problems", "A - B [95 %]", "p", "min. detectable", "verdict", "note"],
                        [[p["a"], p["b"], f"{p['seeds']} x {p['problems'] or 'n/a'}", _interval(
                            {"mean": p["difference"], "lo": p["lo"], "hi": p["hi"]}, signed=True),
                          "n/a" if p["p"] is None else (f"< {1 / bootstrap:.2g}" if p["p"] == 0 else f"{p['p']:.3f}"),
                          _f(p["mdd"]), p["verdict"], p["note"]] for p in pairs])
        lines += ["", "separable: the paired interval excludes 0. Not separable: these seeds and problems cannot "
                  "tell the two apart (which is not evidence they are equal). min. detectable = 2.8 x the "
                  "bootstrap std of the difference: roughly the smallest true difference this size would "
                  "detect (5 % two-sided, 80 % power). p: two-sided bootstrap fraction.", ""]

    lines += ["## Curves", ""]
    if pngs:
        lines += [f"![{name}]({name})" for name in pngs] + [""]
        lines += ["Training curves: mean over seeds, band min-max over seeds. Accuracy: band is the 95 % "
                  "hierarchical bootstrap interval.", ""]
    else:
        lines += ["No plots.", ""]

    lines += ["## Per-group diagnostics", ""]
    if not diag:
        lines += ["No cell has a groups.jsonl.", ""]
    else:
        lines += _table(["configuration", "part", "seeds", "steps (all seeds)", "groups", "zero-std fraction",
                         "adv-length corr", *(f"clip {b} (n)" for b in _bin_names())],
                        [[d["configuration"], d["part"], d["seeds"], d["steps"], d["groups"],
                          _f(d["zero_std_fraction"]), _f(d["adv_length_corr"], signed=True),
                          *(f"{_f(b['clip_fraction'])} ({b['groups']})" for b in d["clip_by_difficulty"])]
                         for d in diag])
        lines += ["", "Pooled over seeds and logged steps; early / late: steps up to / past the middle of the "
                  "logged range. zero-std: groups whose rewards are all equal (no gradient signal). "
                  "adv-length corr: mean of the per-step correlations between advantage and completion "
                  "length. clip by difficulty: mean clip_fraction of the groups whose mean reward falls in "
                  "the bin (count in parentheses).", ""]
        if not any(b["groups"] for d in diag for b in d["clip_by_difficulty"]):
            lines += ["(groups.jsonl has no per-group clip_fraction: no clip rate by difficulty.)", ""]
    return "\n".join(lines)


def _report(sweep: Sweep, *, out=None, steps=None, baseline=None, bootstrap: int = 2000, seed: int = 0) -> tuple:
    """Validates, then computes and writes: (report.md path, markdown, separable pairs)."""
    _check_bootstrap(bootstrap)
    _check_baseline(sweep, baseline)
    steps = _check_steps(sweep, steps)
    out = pathlib.Path(out) if out is not None else sweep.default_out
    at, acc_notes = {}, []
    for s in sorted(set(_all_eval_steps(sweep)) | set(steps)):  # the plot's steps, the table's among them
        at[s], notes = _accuracy_at(sweep, s, bootstrap, seed)
        if s in steps:
            acc_notes += notes
    pairs = paired_differences(sweep, steps[-1], baseline=baseline, bootstrap=bootstrap, seed=seed) if steps else []
    diag = diagnostics(sweep)
    out.mkdir(parents=True, exist_ok=True)
    pngs, png_note = [], None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        png_note = "matplotlib is not installed: no plots"
    else:
        curves = _curves(sweep)
        if curves:
            _plot_curves(curves, out / "curves.png")
            pngs.append("curves.png")
        if at:
            _plot_accuracy(at, out / "accuracy.png", sweep.configurations)
            pngs.append("accuracy.png")
    text = _markdown(sweep, steps, at, acc_notes, pairs, diag, bootstrap, seed, baseline, pngs, png_note)
    path = out / "report.md"
    path.write_text(text + "\n", encoding="utf-8")
    return path, text, sum(p["separable"] for p in pairs)


def write_report(path_or_paths, *, out=None, steps=None, baseline=None, bootstrap: int = 2000,
                 seed: int = 0) -> pathlib.Path:
    """Loads a sweep (or run workdirs), writes report.md, curves.png and accuracy.png under `out`
    (default SWEEP_DIR/report, or the workdirs' common parent / report) and returns report.md's path."""
    return _report(load(path_or_paths), out=out, steps=steps, baseline=baseline, bootstrap=bootstrap, seed=seed)[0]


def _parse_steps(text: str | None) -> list | None:
    if text is None or not text.strip():
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ReportError(f"--steps wants comma-separated integers, got {text!r}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpo_jax.report", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="a sweep directory, or one or more run workdirs")
    parser.add_argument("--steps", help="eval steps to report, e.g. 0,25,50 (default: those all cells share; "
                        "the last is the headline)")
    parser.add_argument("--baseline", help="compare each configuration with this label (default: every pair)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap's random stream")
    parser.add_argument("--out", help="output directory (default SWEEP_DIR/report)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help: 0; a usage error: 2 (argparse printed why)
        return int(exit_.code or 0)
    try:
        sweep = load(args.paths)
        path, text, separable = _report(sweep, out=args.out, steps=_parse_steps(args.steps),
                                        baseline=args.baseline, bootstrap=args.bootstrap, seed=args.seed)
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text)
    print(f"RESULT report={path} configurations={len(sweep.configurations)} separable_pairs={separable}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
