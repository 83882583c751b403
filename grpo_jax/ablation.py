"""What the ablation notebooks share: the quick start's warm-started policy, computed once, and the
sweep command that trains every cell from it.

Every notebook in notebooks/ ablates GRPO from the same starting point, the quick start's SFT warm
start (`experiments/quickstart.py`, the trainer's own SFT stage and early-stopping rule). So they
share it, and train their grid with the sweep program (`python -m grpo_jax.sweep`: sampler, host
verifiers, advantages and step of the trainer, vmapped over the cells), then read it with
`grpo_jax.report`:

    nb = ablation.notebook_setup()                       # SFT once; later calls restore it
    root = ablation.run_sweep(nb, "group_size", grid=["grpo.group_size=2,4,8"], seeds=3)
    report.write_report(root)

`warm_start` keeps the SFT params in an Orbax checkpoint under `workdir/sft/<key>`, where key is a
hash of exactly what SFT depends on (model, task, sft and sampling sections, seed, clip norm), so a
notebook with other settings never picks up a stale warm start, and a finished one is restored in
seconds instead of re-running SFT. Beside it, `model/` holds the same policy as a Hugging Face
directory (weights in f32, the character tokenizer): the sweep's cells start from it with
`model.path` (and `sft.steps=0`), every seed from the same warm start, as the notebooks did before.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
from typing import Any, Callable, NamedTuple, Sequence

import jax

from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import build, sft


class Start(NamedTuple):
    setup: build.Setup  # config, mesh, tokenizer, model_config, task (setup.params: the random init)
    params: Any  # the warm-started policy: plain single-device arrays
    eos_id: int
    sft_steps: int  # SFT steps actually run (fewer than sft.steps when it stopped early)
    validation_accuracy: float | None  # the held-out validation accuracy SFT stopped at (None: not checked)
    restored: bool  # True: read from the cache, SFT not re-run
    model_dir: pathlib.Path  # the same policy as a Hugging Face directory (f32 weights + tokenizer)


SFT_IGNORED_SAMPLING = ("min_p", "truncated_logps")


def sft_key(config: cfg_lib.Config) -> str:
    """Hash of the settings the SFT warm start depends on (and of nothing GRPO-only)."""
    d = cfg_lib.to_dict(config)
    relevant = {k: d[k] for k in ("model", "task", "sft", "sampling")}
    # Sampling keys only GRPO's sampler and scoring read: left out, so they neither move the warm start
    # nor invalidate the warm starts cached before they existed.
    relevant["sampling"] = {k: v for k, v in relevant["sampling"].items() if k not in SFT_IGNORED_SAMPLING}
    relevant |= {"seed": config.train.seed, "max_grad_norm": config.optim.max_grad_norm,
                 "eval_batch_size": config.train.eval_batch_size}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(config: cfg_lib.Config, workdir: str | pathlib.Path, *,
               log: Callable[[str], None] = print) -> Start:
    """The SFT warm start for `config` (the trainer's own SFT stage), run once per distinct SFT
    setting and cached under `workdir/sft/<sft_key(config)>`, with its Hugging Face twin in
    `model/` there (written once, atomically)."""
    from grpo_jax import weights as weights_lib

    workdir = pathlib.Path(workdir)
    s = build.setup(config, workdir)
    directory = workdir / "sft" / sft_key(config)
    with ckpt_lib.Checkpointer(directory / "checkpoint", max_to_keep=1) as ckpt:
        if ckpt.latest_step() is not None:
            params, meta = ckpt.restore(ckpt_lib.abstract_like(s.params))
            log(f"warm start restored from {os.path.relpath(directory)} (SFT step {meta['sft_steps']}, "
                f"validation accuracy {meta['validation_accuracy']})")
            steps, accuracy, restored = meta["sft_steps"], meta["validation_accuracy"], True
        else:
            seen = {"step": 0, "accuracy": None}

            def record(step, metrics):
                seen["step"] = max(seen["step"], step)
                if "sft_validation_accuracy" in metrics:
                    seen["accuracy"] = metrics["sft_validation_accuracy"]
                    log(f"SFT step {step}: validation accuracy {metrics['sft_validation_accuracy']:.3f}")

            params = sft.warm_start(s, record)
            steps, accuracy, restored = seen["step"], seen["accuracy"], False
            ckpt.save(steps, params, {"sft_steps": steps, "validation_accuracy": accuracy,
                                      "sft_key": sft_key(config)}, force=True)
            ckpt.wait()
    params = jax.device_get(params)
    model_dir = directory / "model"
    if not (model_dir / "config.json").is_file() and jax.process_index() == 0:
        tmp = directory / f"model.tmp{os.getpid()}"
        weights_lib.save_hf(tmp, s.model_config, params)  # f32: the policy exactly
        s.tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, model_dir)
    return Start(s, params, s.tokenizer.eos_token_id, steps, accuracy, restored, model_dir)


class Notebook(NamedTuple):
    config: cfg_lib.Config  # the quick start's config (shrunk when small)
    start: Start  # its SFT warm start, shared by every notebook
    small: bool  # GRPO_JAX_NOTEBOOK_SMALL=1: a tiny model and a few steps (CI), no learning visible
    workdir: pathlib.Path  # where the shared warm start and the notebooks' sweeps live
    experiment: pathlib.Path  # experiments/quickstart.py of this checkout


# The size a notebook's sweep shrinks to under GRPO_JAX_NOTEBOOK_SMALL=1 (CI): a smoke test of every
# cell of the grid, nothing learnt.
SMALL_OVERRIDES = ("train.steps=2", "train.prompts_per_step=2", "grpo.group_size=4", "task.eval_size=16",
                   "train.eval_batch_size=16", "train.eval_every=2", "train.checkpoint_every=2",
                   "train.samples_every=0", "grpo.num_iterations=1")


def notebook_setup(*, log: Callable[[str], None] = print) -> Notebook:
    """The set-up every ablation notebook starts with, in one call (no sys.path edits):
    matplotlib on its file backend, the quick start's config (`experiments/quickstart.py` of this
    checkout) and its shared SFT warm start (`warm_start`), under runs/notebooks of the checkout.

    Environment: GRPO_JAX_NOTEBOOK_SMALL=1 shrinks the model and SFT to a smoke test (CI);
    GRPO_JAX_NOTEBOOK_WORKDIR moves the shared warm start (and the sweeps) elsewhere.
    """
    import warnings

    import matplotlib

    from grpo_jax import platforms
    platforms.skip_absent_tpu()  # no libtpu (and its stderr noise) on a machine without a TPU
    matplotlib.use("Agg")
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in a plain kernel
    root = pathlib.Path(__file__).resolve().parents[1]
    experiment = root / "experiments" / "quickstart.py"
    if not experiment.is_file():
        raise FileNotFoundError(f"{experiment}: the notebooks run from a checkout of grpo_jax "
                                f"(pip install -e .), whose experiments/ they read")
    small = os.environ.get("GRPO_JAX_NOTEBOOK_SMALL") == "1"
    workdir = pathlib.Path(os.environ.get("GRPO_JAX_NOTEBOOK_WORKDIR")
                           or root / "runs" / ("notebooks_small" if small else "notebooks"))
    config = cfg_lib.load_config(experiment)
    if small:
        m = config.model
        m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.head_dim, m.intermediate_size = 32, 2, 2, 1, 16, 64
        config.sft.steps = 3
    return Notebook(config, warm_start(config, workdir, log=log), small, workdir, experiment)


def sweep_argv(nb: Notebook, name: str, *, grid: Sequence[str], seeds: int, overrides: Sequence[str] = (),
               cells_per_program: int = 0) -> list:
    """The `python -m grpo_jax.sweep` arguments of a notebook's grid: the quick start's experiment,
    every cell starting from the shared warm start (`model.path` = its HF directory, `sft.steps=0`),
    `overrides` on top (ignored at the small size, which uses SMALL_OVERRIDES), into
    `nb.workdir/sweeps/<name>`."""
    extra = list(SMALL_OVERRIDES if nb.small else overrides)
    argv = ["--config", os.path.relpath(nb.experiment), "--workdir", str(nb.workdir / "sweeps" / name),
            "--seeds", str(seeds),
            f"--config.model.path={nb.start.model_dir}", "--config.sft.steps=0"]
    argv += [a for g in grid for a in ("--grid", g)] + [f"--config.{o}" for o in extra]
    return argv + (["--cells_per_program", str(cells_per_program)] if cells_per_program else [])


def run_sweep(nb: Notebook, name: str, *, grid: Sequence[str], seeds: int, overrides: Sequence[str] = (),
              cells_per_program: int = 0, log: Callable[[str], None] = print) -> pathlib.Path:
    """Runs (or, when its sweep.json is there, resumes: a finished sweep trains nothing) a notebook's
    grid (`sweep_argv`) and returns its directory, for `grpo_jax.report`."""
    from grpo_jax import sweep

    import contextlib
    import time

    argv = sweep_argv(nb, name, grid=grid, seeds=seeds, overrides=overrides, cells_per_program=cells_per_program)
    root = pathlib.Path(argv[argv.index("--workdir") + 1])
    shown = [os.path.relpath(a) if os.path.isabs(a) else a for a in argv]
    log("python -m grpo_jax.sweep " + " ".join(a.replace(str(nb.start.model_dir), "WARM_START") for a in shown))
    root.mkdir(parents=True, exist_ok=True)
    # The sweep's per-step lines go to a file beside it, not into the notebook.
    t0 = time.perf_counter()
    with open(root / "sweep.log", "a") as out, contextlib.redirect_stderr(out):
        code = sweep.main(argv)
    lines = (root / "sweep.log").read_text().splitlines()
    if code != 0:
        raise RuntimeError(f"the sweep into {root} failed: " + "\n".join(lines[-20:]))
    log(f"{len(json.loads((root / sweep.SWEEP_FILE).read_text())['cells'])} cells trained or resumed in "
        f"{time.perf_counter() - t0:.0f} s (log: {os.path.relpath(root / 'sweep.log')})")
    return root


def show(fig) -> None:
    """Display a Figure in a notebook as a PNG (works under the Agg backend, as CI runs it)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=70)
    plt.close(fig)
    display(Image(data=buffer.getvalue()))


def show_report(root: str | pathlib.Path, *, bootstrap: int = 2000, seed: int = 0) -> pathlib.Path:
    """`grpo_jax.report` on a sweep directory, displayed in the notebook: the markdown (accuracy with
    intervals, paired differences and their verdicts, per-group diagnostics) and its two figures.
    Returns the report's path."""
    from IPython.display import Image, Markdown, display

    from grpo_jax import report

    path = report.write_report(root, bootstrap=bootstrap, seed=seed)
    where = os.path.relpath(path.parent, pathlib.Path.cwd())
    display(Markdown(path.read_text().replace("](", "](" + where + "/")))
    for figure in ("accuracy.png", "curves.png"):
        if (path.parent / figure).is_file():
            display(Image(filename=str(path.parent / figure)))
    return path
