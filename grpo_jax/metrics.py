"""metrics.jsonl, TensorBoard events, Weights & Biases and a progress bar / log lines for one run's workdir.

Sinks (`train.loggers`, `LOGGERS`; `from_config` builds the writer a config asks for):
  jsonl         workdir/metrics.jsonl, always on: resume, `grpo_jax.report` and the tests read it, so a
                list without it is refused (config validation) rather than added silently
  tensorboard   workdir/tb (tensorboardX): scalars, and the completion samples as text
  wandb         one Weights & Biases run (optional: `pip install 'grpo_jax[wandb]'`; imported only
                when asked for). Its config is the run's whole config; each `write` is
                `run.log(row, step=step)`; the completion samples go into a `wandb.Table` per sample
                name (columns step, text; key "samples/<name>", log_mode "INCREMENTAL": each log
                adds the new rows). The run id lives in workdir/wandb_id.txt, so a resumed run
                continues the same wandb run (`resume="allow"`); steps a crashed run logged past its
                checkpoint are not logged again (wandb keeps a run's steps increasing; exact resume
                gives the same values anyway, metrics.jsonl is rewritten as below). Mode, API key
                etc. are wandb's own environment variables (WANDB_MODE=offline: no account, no
                network; `wandb sync` uploads later). Its files go under workdir/wandb unless
                WANDB_DIR says otherwise. Rows sharing a step (the SFT warm start logs at step 0)
                merge into one wandb history row, the last value of a key winning.

`workdir/metrics.jsonl` holds one JSON object per line, of two kinds:
  scalar rows   {"step": 12, "reward_mean": 0.41, "loss": ..., ...}      (`MetricsWriter.write`)
  sample rows   {"step": 12, "sample": "completion_0", "text": "..."}    (`MetricsWriter.write_text`)
A sample row is told apart by its "sample" key; `read_metrics` returns the scalar rows by default
so "one object per step" holds for readers, and `kind="samples"` gives the completion samples.

Non-finite numbers: JSON has no NaN, so NaN / +inf / -inf are written as the strings "NaN",
"Infinity", "-Infinity" (the spellings Python's json and JavaScript use) rather than null, so a
NaN loss stays distinguishable from a missing metric; `read_metrics` turns them back into floats
(so a string-valued scalar that reads exactly "NaN" would come back as a float: don't log one).

Crash safety: every write is flushed and fsynced, so a crash loses at most the line being written;
a truncated last line (crash mid-write) is dropped when the file is next opened or read. Resuming
from the checkpoint at step k (`resume_step=k`) drops the rows a crashed run wrote after step k,
by rewriting the file to a temporary and `os.replace`-ing it, so a resumed run's metrics.jsonl is
row for row what a straight run writes. TensorBoard is told the same through `purge_step`.

Per-item detail, beside it (`MetricsWriter.write_detail`), one JSON object per line with a "step":
  eval_problems.jsonl  {"step": 25, "ids": [0, 1, ...], "correct": [1.0, 0.0, ...]}: each held-out
                       problem's greedy score at every eval, so two runs (or a sweep's cells) can be
                       compared problem by problem (`grpo_jax.report`'s paired differences)
  groups.jsonl         {"step": 3, "reward_mean": [B], "reward_std": [B], "clip_fraction": [B],
                       "adv_length_corr": r}: per-group statistics of every logged step
They are repaired on resume exactly like metrics.jsonl.

Progress on stderr: on a terminal a tqdm bar; otherwise (`make train > log 2>&1`, a batch job) one
plain line per written row, e.g.
  step 25/600 | reward 0.612 | acc 0.721 | kl 0.013 | clip 0.002 | len 21.4 | 0.97 s/step | eta 9m18s
  sft step 20 | loss 1.23 | tok acc 0.812          sft step 40 | val acc 0.75
Absent keys are left out (`acc` only on eval rows); a row with none of them prints nothing.
"""
from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import secrets
import statistics
import sys
from typing import Any, Sequence

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"
DETAIL_FILES = ("eval_problems.jsonl", "groups.jsonl")  # MetricsWriter.write_detail
TB_DIR = "tb"
LOGGERS = ("jsonl", "tensorboard", "wandb")  # train.loggers (module docstring)
WANDB_ID_FILE = "wandb_id.txt"  # the wandb run id of this workdir: a resumed run continues that run
WANDB_INSTALL = "pip install 'wandb>=0.31' (or pip install 'grpo_jax[wandb]')"

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def parse_loggers(text: str) -> tuple[str, ...]:
    """train.loggers ("jsonl,wandb") -> ("jsonl", "wandb"): comma-separated, spaces and empty parts
    dropped, order kept. Checking the names is `loggers_problem`'s."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def wandb_installed() -> bool:
    """Whether `import wandb` would succeed, without importing it (it is slow to import and only
    wanted when asked for). `sys.modules["wandb"] = None`, which makes the import fail, says no."""
    if "wandb" in sys.modules:
        return sys.modules["wandb"] is not None
    return importlib.util.find_spec("wandb") is not None


def loggers_problem(names: Sequence[str]) -> str | None:
    """Why the logger `names` cannot be used (a phrase for the error), or None when they can:
    unknown or repeated names, no jsonl (module docstring: always on), wandb not installed."""
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        return f"unknown logger(s) {unknown}: must be a comma-separated subset of {LOGGERS}"
    if len(set(names)) != len(names):
        return "a logger is named twice"
    if "jsonl" not in names:
        return ("must include jsonl: metrics.jsonl is what resume, grpo_jax.report and the tests read "
                "(e.g. jsonl,wandb)")
    if "wandb" in names and not wandb_installed():
        return f"asks for wandb, which is not installed: {WANDB_INSTALL}"
    return None


def fetch(tree) -> Any:
    """Device scalars -> Python numbers, in ONE `jax.device_get` for the whole (nested) dict.

    Floating values become `float`, integers `int`, booleans `bool`. A non-scalar leaf is a
    ValueError naming its key: metrics are scalars, and a silent `.mean()` would hide a bug.
    """
    host = jax.device_get(tree)

    def leaf(path, x):
        if isinstance(x, (bool, int, float, str)) or x is None:
            return x
        a = np.asarray(x)
        if a.ndim != 0:
            raise ValueError(f"metric {jax.tree_util.keystr(path)} is not a scalar: shape {a.shape}")
        v = a.reshape(()).item()
        if a.dtype.kind == "f":
            return float(v)
        return v  # int / bool from .item() already

    return jax.tree_util.tree_map_with_path(leaf, host)


def _encode(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _decode_row(row: dict) -> dict:
    if "sample" in row:
        return row  # text is text, even if it reads "NaN"
    return {k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()}


def _parse_lines(path: pathlib.Path) -> tuple[list[tuple[str, dict]], bool]:
    """[(raw line, record)] of the complete lines, and whether a truncated last line was dropped.

    Only the LAST line may be partial (a crash mid-write). Any other unparsable line means the file
    is damaged in a way we did not cause: raise rather than silently drop data.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    # After the final "\n" split leaves "" ; anything else there is an unterminated last line.
    tail, lines = lines[-1], lines[:-1]
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {number} is not valid JSON ({e}): {line[:80]!r}") from e
        if not isinstance(record, dict) or "step" not in record:
            raise ValueError(f"{path}: line {number} is not a metrics record with a 'step': {line[:80]!r}")
        out.append((line, record))
    return out, bool(tail.strip())


def read_detail(workdir, name: str) -> list[dict]:
    """The records of workdir/`name` (one of DETAIL_FILES), in file order ([] when absent); a step
    written twice (none after a resume's repair, but a copied file may hold one) keeps its last."""
    path = pathlib.Path(workdir) / name
    if not path.exists():
        return []
    by_step = {}
    for _, record in _parse_lines(path)[0]:
        by_step.pop(record["step"], None)
        by_step[record["step"]] = _decode_row(record)
    return list(by_step.values())


def read_metrics(path, *, kind: str = "scalars") -> list[dict]:
    """Rows of a metrics.jsonl (or of `path/metrics.jsonl` when `path` is a workdir).

    `kind`: "scalars" (default, one row per logged step), "samples" (completion samples) or "all"
    (both, in file order). Non-finite strings come back as floats; a truncated last line is dropped.
    """
    if kind not in ("scalars", "samples", "all"):
        raise ValueError(f"read_metrics: kind must be 'scalars', 'samples' or 'all', got {kind!r}")
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    rows = [_decode_row(record) for _, record in _parse_lines(path)[0]]
    if kind == "scalars":
        return [r for r in rows if "sample" not in r]
    if kind == "samples":
        return [r for r in rows if "sample" in r]
    return rows


def _fsync_dir(directory: pathlib.Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _repair(path: pathlib.Path, resume_step: int | None) -> None:
    """Drops a truncated last line and, when resuming, every row with step > resume_step.

    Rewrites through a temporary file + os.replace, so a crash here leaves either the old file or
    the new one, never a mixture. Does nothing (no rewrite) when nothing would change.
    """
    if not path.exists():
        return
    records, truncated = _parse_lines(path)
    keep = [line for line, record in records if resume_step is None or record["step"] <= resume_step]
    if not truncated and len(keep) == len(records):
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in keep))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _num(v) -> str:
    """3 significant digits, compactly: 0.612, 0.013, 21.4, 1e-05; >= 1000 as a whole number."""
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def _duration(seconds: float) -> str:
    """20s, 9m34s, 1h02m, 2d03h (rounded to the second, then truncated to two units)."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# (row key, label) in line order; a key that is absent (or not a number) is left out.
_GRPO_FIELDS = (("reward_mean", "reward"), ("eval_accuracy", "acc"), ("kl", "kl"),
                ("clip_fraction", "clip"), ("completion_length", "len"))
_SFT_FIELDS = (("sft_loss", "loss"), ("sft_token_accuracy", "tok acc"), ("sft_validation_accuracy", "val acc"))
_RECENT_ROWS = 5  # s/step is the (low) median step_seconds of the last 5 rows that have one


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class MetricsWriter:
    """Appends scalar rows / text samples to workdir/metrics.jsonl, TensorBoard, wandb and progress.

    `loggers`: the sinks (names of `LOGGERS`, or their comma-separated string; module docstring),
    jsonl among them. None: `tensorboard` says (the older switch: True / None gives jsonl +
    tensorboard, False jsonl alone); give one of the two, not both. With wandb: `run_config` (the
    run's whole config as a dict) is the wandb run's config, and `wandb_project`, `wandb_name`
    ("" = the workdir's name), `wandb_entity` ("" = wandb's default) and `wandb_group` (None = none,
    or wandb's WANDB_RUN_GROUP) name it. `from_config` fills them from a Config.

    `resume_step=k`: the run resumes from the checkpoint at step k; rows with step > k are removed
    first (a run starting over from scratch in a used workdir passes 0). `resume_step=None`
    appends to whatever is there.
    `progress`: how progress shows on stderr. None (default): a tqdm bar when stderr is a terminal,
    else plain lines; "bar" (or True): the bar; "lines": one plain line per `write` (module
    docstring); False: neither. `progress_total` (the run's steps) gives "step k/total" and the ETA:
    (total - step) x the low median (`statistics.median_low`) of `step_seconds` over the last 5
    rows that have it: one slow row (a step that compiled) moves neither; eval and checkpoint time
    are not in step_seconds, so not in the ETA.
    `is_primary`: only one process of a multi-process run writes (default: jax.process_index() == 0);
    the others get a writer that does nothing (no wandb run either).
    Resuming (`resume_step` >= 0, or None) with wandb continues the run whose id is in
    workdir/wandb_id.txt, its sample tables refilled from metrics.jsonl; `resume_step` < 0 (starting
    over: every row dropped) or no id file starts a new wandb run and records its id.
    """

    def __init__(self, workdir, *, loggers: Sequence[str] | str | None = None, tensorboard: bool | None = None,
                 progress_total: int | None = None, resume_step: int | None = None,
                 progress: bool | str | None = None, is_primary: bool | None = None,
                 run_config: dict | None = None, wandb_project: str = "grpo_jax", wandb_name: str = "",
                 wandb_entity: str = "", wandb_group: str | None = None):
        if progress not in (None, True, False, "bar", "lines"):
            raise ValueError(f"MetricsWriter: progress must be None, True, False, 'bar' or 'lines', "
                             f"got {progress!r}")
        if loggers is None:
            loggers = ("jsonl",) if tensorboard is False else ("jsonl", "tensorboard")
        elif tensorboard is not None:
            raise ValueError("MetricsWriter: give `loggers` or `tensorboard`, not both (tensorboard is "
                             "one of the loggers)")
        self.loggers = parse_loggers(loggers) if isinstance(loggers, str) else tuple(loggers)
        problem = loggers_problem(self.loggers)
        if problem:
            raise ValueError(f"MetricsWriter: loggers {self.loggers}: {problem}")
        self.workdir = pathlib.Path(workdir)
        self.path = self.workdir / METRICS_FILE
        self.is_primary = jax.process_index() == 0 if is_primary is None else bool(is_primary)
        self._file = self._tb = self._bar = self._wandb = None
        self._tables = {}  # sample name -> its wandb.Table
        self._lines = False
        self._total = progress_total
        self._recent_seconds = collections.deque(maxlen=_RECENT_ROWS)
        if not self.is_primary:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        for path in (self.path, *(self.workdir / name for name in DETAIL_FILES)):
            _repair(path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")
        if "tensorboard" in self.loggers:
            from tensorboardX import SummaryWriter

            # purge_step makes TensorBoard discard events a crashed run logged after the checkpoint.
            purge = None if resume_step is None else resume_step + 1
            self._tb = SummaryWriter(logdir=str(self.workdir / TB_DIR), purge_step=purge)
        if "wandb" in self.loggers:
            self._start_wandb(resume_step, run_config=run_config, project=wandb_project, name=wandb_name,
                              entity=wandb_entity, group=wandb_group)
        if progress is None:
            # A bar only where a person watches both streams; `make train > log` gets plain lines.
            progress = "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines"
        self._lines = progress == "lines"
        if progress is True or progress == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=progress_total, initial=resume_step or 0, unit="step", dynamic_ncols=True)

    def _start_wandb(self, resume_step, *, run_config, project, name, entity, group) -> None:
        """Starts (or, resuming, continues) this workdir's wandb run: module docstring."""
        try:
            import wandb
        except ImportError as e:
            raise ImportError(f"MetricsWriter: the loggers include wandb, which is not installed: "
                              f"{WANDB_INSTALL}") from e
        id_path = self.workdir / WANDB_ID_FILE
        run_id = None
        if id_path.exists() and (resume_step is None or resume_step >= 0):
            run_id = id_path.read_text(encoding="utf-8").strip() or None
        if run_id is None:
            # wandb's own id alphabet (lower-case letters and digits), 8 of them as wandb draws.
            run_id = "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8))
            tmp = id_path.with_name(id_path.name + ".tmp")
            tmp.write_text(run_id + "\n", encoding="utf-8")
            os.replace(tmp, id_path)
        # reinit="create_new": a sweep program holds one run per cell in one process, each logged
        # through its own run object (never the module-level wandb.log, which means the latest run).
        self._wandb = wandb.init(
            project=project or None, entity=entity or None, name=name or self.workdir.name,
            group=group or None, id=run_id, resume="allow", config=run_config, reinit="create_new",
            dir=None if os.environ.get("WANDB_DIR") else str(self.workdir))
        # The samples already in metrics.jsonl (after the resume's repair): a resumed run's tables
        # hold the whole run, not only what this process adds.
        if self.path.exists():
            for row in read_metrics(self.path, kind="samples"):
                self._table(row["sample"]).add_data(row["step"], row["text"])

    def _table(self, name: str):
        if name not in self._tables:
            import wandb

            self._tables[name] = wandb.Table(columns=["step", "text"], log_mode="INCREMENTAL")
        return self._tables[name]

    def _wandb_log(self, step: int, data: dict) -> None:
        # A resumed run replays the steps a crashed run logged past its checkpoint; wandb drops a step
        # below its current one with a warning per call, so they are skipped here, quietly.
        if step >= self._wandb.step:
            self._wandb.log(data, step=step)

    def _append(self, record: dict) -> None:
        line = json.dumps(record, allow_nan=False)
        self._file.write(line + "\n")
        # flush + fsync per record: a crash loses at most the line being written.
        self._file.flush()
        os.fsync(self._file.fileno())

    def write(self, step: int, scalars: dict) -> dict:
        """Logs `{"step": step, **scalars}`; device arrays are fetched in one transfer. Returns the row."""
        step = int(step)
        values = fetch(dict(scalars))
        for key, v in values.items():
            if isinstance(v, dict):
                raise ValueError(f"metrics at step {step}: {key!r} is a dict; flatten it (e.g. 'eval/{key}')")
        if "step" in values or "sample" in values:
            raise ValueError(f"metrics at step {step}: 'step' and 'sample' are reserved keys")
        row = {"step": step, **values}
        if not self.is_primary:
            return row
        self._append({k: _encode(v) for k, v in row.items()})
        if self._tb is not None:
            for key, v in values.items():
                if isinstance(v, (int, float)):  # bools too; strings are JSON-only
                    self._tb.add_scalar(key, float(v), step)
            self._tb.flush()
        if self._wandb is not None:
            self._wandb_log(step, values)
        if self._bar is not None:
            shown = {k: f"{values[k]:.4g}" for k in ("reward_mean", "kl") if isinstance(values.get(k), (int, float))}
            self._bar.set_postfix(shown, refresh=False)
            self._bar.update(max(0, step - self._bar.n))
        if self._lines:
            line = self._line(step, values)
            if line:
                print(line, file=sys.stdout, flush=True)  # the log: `make train > log` keeps it
        return row

    def _line(self, step: int, values: dict) -> str | None:
        """The plain progress line for one row (module docstring), or None when it shows nothing."""
        if any(k.startswith("sft_") for k in values):  # the SFT warm start logs at GRPO step 0
            parts = [f"{label} {_num(values[k])}" for k, label in _SFT_FIELDS if _is_number(values.get(k))]
            if not parts:
                return None
            head = f"sft step {values['sft_step']}" if _is_number(values.get("sft_step")) else "sft"
            return " | ".join([head, *parts])
        parts = []
        for k, label in _GRPO_FIELDS:
            if _is_number(values.get(k)):
                parts.append(f"{label} {_num(values[k])}")
            if k == "eval_accuracy":  # then pass@k / maj@k of the same eval, when configured
                parts += [f"{name[len('eval_'):]} {_num(v)}" for prefix in ("eval_pass@", "eval_maj@")
                          for name, v in values.items() if name.startswith(prefix) and _is_number(v)]
        seconds = values.get("step_seconds")
        if _is_number(seconds) and math.isfinite(seconds):
            self._recent_seconds.append(float(seconds))
            per_step = statistics.median_low(self._recent_seconds)  # an observed value, even of 2
            parts.append(f"{_num(per_step)} s/step")
            if self._total is not None:
                parts.append(f"eta {_duration(max(0, self._total - step) * per_step)}")
        if not parts:
            return None
        head = f"step {step}/{self._total}" if self._total is not None else f"step {step}"
        return " | ".join([head, *parts])

    def write_detail(self, name: str, step: int, record: dict) -> None:
        """Appends `{"step": step, **record}` to workdir/`name` (one of DETAIL_FILES; module
        docstring); arrays become lists, non-finite floats the strings metrics.jsonl uses."""
        if name not in DETAIL_FILES:
            raise ValueError(f"write_detail: {name!r} is not one of {DETAIL_FILES}")
        if not self.is_primary:
            return

        def plain(v):
            if isinstance(v, (np.ndarray, jax.Array, list, tuple)):
                return [plain(x) for x in np.asarray(v).tolist()]
            return _encode(float(v)) if isinstance(v, (float, np.floating)) else v.item() if isinstance(
                v, np.generic) else v

        line = json.dumps({"step": int(step), **{k: plain(v) for k, v in record.items()}}, allow_nan=False)
        with open(self.workdir / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def write_text(self, step: int, name: str, text: str) -> None:
        """Logs a completion sample as `{"step": step, "sample": name, "text": text}` (+ TB text)."""
        if not self.is_primary:
            return
        self._append({"step": int(step), "sample": str(name), "text": str(text)})
        if self._tb is not None:
            self._tb.add_text(str(name), str(text), int(step))
            self._tb.flush()
        if self._wandb is not None:
            table = self._table(str(name))
            table.add_data(int(step), str(text))
            self._wandb_log(int(step), {f"samples/{name}": table})

    def close(self) -> None:
        """Closes every sink; the wandb run is finished (uploaded, or written out offline)."""
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._file is not None:
            self._file.close()
        self._file = self._tb = self._bar = self._wandb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def from_config(config, workdir, *, wandb_group: str | None = None, **kwargs) -> MetricsWriter:
    """The writer of a run with `config` (a grpo_jax.config.Config) in `workdir`: the sinks of
    train.loggers; with wandb, the whole config as the run's config and train.wandb_project /
    wandb_name / wandb_entity naming it (`wandb_group`: a sweep's directory name, grouping its
    cells). `kwargs` go to MetricsWriter (progress_total, resume_step, progress, is_primary)."""
    t = config.train
    return MetricsWriter(workdir, loggers=parse_loggers(t.loggers), run_config=dataclasses.asdict(config),
                         wandb_project=t.wandb_project, wandb_name=t.wandb_name, wandb_entity=t.wandb_entity,
                         wandb_group=wandb_group, **kwargs)
