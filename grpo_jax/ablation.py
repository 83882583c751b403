"""What the ablation notebooks share: the quick start's warm-started policy, computed once, and plots.

Every notebook in notebooks/ ablates GRPO from the same starting point, the quick start's SFT warm
start (`experiments/quickstart.py`, the trainer's own SFT stage and early-stopping rule). So they
share it:

    start = ablation.warm_start(config, "runs/notebooks")   # SFT once; later calls restore it
    prompts = ablation.prompt_batches(start, batch_size=16)  # iteration s -> its 16 problems
    ... sweep.run_sweep(..., start.params, prompts, ...)
    ablation.show(ablation.plot_curves(history, labels, ["reward_mean", "kl"], "G ablation"))

`warm_start` keeps the SFT params in an Orbax checkpoint under `workdir/sft/<key>`, where key is a
hash of exactly what SFT depends on (model, task, sft and sampling sections, seed, clip norm), so a
notebook with other settings never picks up a stale warm start, and a finished one is restored in
seconds instead of re-running SFT.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import build, sft, sweep


class Start(NamedTuple):
    setup: build.Setup  # config, mesh, tokenizer, model_config, task (setup.params: the random init)
    params: Any  # the warm-started policy: plain single-device arrays
    reward_fn: Callable  # the arithmetic verifier in JAX: (tokens, mask, answers, answer_mask) -> f32[N]
    eos_id: int
    sft_steps: int  # SFT steps actually run (fewer than sft.steps when it stopped early)
    validation_accuracy: float | None  # the held-out validation accuracy SFT stopped at (None: not checked)
    restored: bool  # True: read from the cache, SFT not re-run


def sft_key(config: cfg_lib.Config) -> str:
    """Hash of the settings the SFT warm start depends on (and of nothing GRPO-only)."""
    d = cfg_lib.to_dict(config)
    relevant = {k: d[k] for k in ("model", "task", "sft", "sampling")}
    relevant |= {"seed": config.train.seed, "max_grad_norm": config.optim.max_grad_norm,
                 "eval_batch_size": config.train.eval_batch_size}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def warm_start(config: cfg_lib.Config, workdir: str | pathlib.Path, *,
               log: Callable[[str], None] = print) -> Start:
    """The quick start's SFT warm start for `config` (arithmetic task), run once per distinct SFT
    setting and cached under `workdir/sft/<sft_key(config)>`."""
    if config.task.name != "arithmetic":
        raise cfg_lib.ConfigError(f"config key `task.name` = {config.task.name!r}: the ablation sweeps "
                                  "need a verifier in JAX, which exists for 'arithmetic' only")
    workdir = pathlib.Path(workdir)
    s = build.setup(config, workdir)
    directory = workdir / "sft" / sft_key(config)
    with ckpt_lib.Checkpointer(directory, max_to_keep=1) as ckpt:
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
    tables = sweep.verifier_tables(s.tokenizer, s.model_config.vocab_size)
    return Start(s, jax.device_get(params), lambda *a: sweep.arithmetic_reward_jax(*a, tables=tables),
                 s.tokenizer.eos_token_id, steps, accuracy, restored)


class Notebook(NamedTuple):
    config: cfg_lib.Config  # the quick start's config (shrunk when small)
    start: Start  # its SFT warm start, shared by every notebook
    small: bool  # GRPO_JAX_NOTEBOOK_SMALL=1: a tiny model and a few steps (CI), no learning visible
    workdir: pathlib.Path  # where the shared warm start lives


def notebook_setup(*, log: Callable[[str], None] = print) -> Notebook:
    """The set-up every ablation notebook starts with, in one call (no sys.path edits):
    matplotlib on its file backend, the quick start's config (`experiments/quickstart.py` of this
    checkout) and its shared SFT warm start (`warm_start`), under runs/notebooks of the checkout.

    Environment: GRPO_JAX_NOTEBOOK_SMALL=1 shrinks the model and SFT to a smoke test (CI);
    GRPO_JAX_NOTEBOOK_WORKDIR moves the shared warm start elsewhere.
    """
    import warnings

    import matplotlib
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
    return Notebook(config, warm_start(config, workdir, log=log), small, workdir)


def prompt_batches(start: Start, batch_size: int) -> Callable[[int], sweep.Prompts]:
    """Iteration s -> its `batch_size` training problems (a pure function of s, as in the trainer)."""
    s = start.setup

    def prompts(step: int) -> sweep.Prompts:
        examples = [s.task.train_example(i) for i in range(step * batch_size, (step + 1) * batch_size)]
        return sweep.encode_batch(s.tokenizer, examples, max_prompt_length=s.config.sampling.max_prompt_length,
                                  prompt_fn=s.task.prompt)

    return prompts


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average along axis 0 (the first window-1 points average what exists)."""
    values = np.asarray(values, np.float64)
    if window <= 1:
        return values
    c = np.cumsum(values, axis=0)
    out = c.copy()
    out[window:] = c[window:] - c[:-window]
    counts = np.minimum(np.arange(1, len(values) + 1), window).reshape(-1, *([1] * (values.ndim - 1)))
    return out / counts


def plot_curves(history: Sequence[dict], labels: Sequence[str], keys: Sequence[str], title: str, *,
                window: int = 1, groups: Sequence[int] | None = None):
    """One panel per metric key, one line per configuration, from `sweep.run_sweep`'s history.
    `groups[c]` (optional) gives configuration c's line index: configurations sharing a group (e.g.
    seeds of one setting) are averaged into one line, labelled by the group's first label.
    `window`: trailing moving average over iterations. Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    groups = list(range(len(labels))) if groups is None else list(groups)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = np.stack([np.asarray(h[key]) for h in history])  # [iterations, C]
        for g in dict.fromkeys(groups):
            members = [c for c, gc in enumerate(groups) if gc == g]
            ax.plot(smooth(values[:, members].mean(axis=1), window), label=labels[members[0]])
        ax.set_title(key)
        ax.set_xlabel("iteration")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def show(fig) -> None:
    """Display a Figure in a notebook as a PNG (works under the Agg backend, as CI runs it)."""
    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=70)
    plt.close(fig)
    display(Image(data=buffer.getvalue()))


def held_out_accuracy(start: Start, stacked_params, *, size: int = 256) -> np.ndarray:
    """Greedy accuracy on the first `size` reported held-out problems for each configuration of a
    sweep's final params (leading configuration axis C) -> f64[C]. The same metric the trainer's
    `eval_accuracy` reports, so a sweep's outcome reads on the quick start's scale."""
    from grpo_jax import evaluate as eval_lib

    s = start.setup
    c = s.config
    task = s.task._replace(eval_examples=s.task.eval_examples[:size])
    count = jax.tree.leaves(stacked_params)[0].shape[0]
    out = []
    for i in range(count):
        params = jax.tree.map(lambda x: x[i], stacked_params)
        out.append(eval_lib.evaluate(s.model_config, params, s.tokenizer, task, key=jax.random.key(0),
                                     batch_size=c.train.eval_batch_size,
                                     max_prompt_length=c.sampling.max_prompt_length,
                                     max_new_tokens=c.sampling.max_new_tokens, put=s.put,
                                     weight_layout=c.sampling.weight_layout,
                                     length_buckets=c.train.length_buckets)["eval_accuracy"])
    return np.asarray(out)
