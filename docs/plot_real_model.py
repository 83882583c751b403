"""Curves of real-model GRPO runs against GRPO wall-clock minutes (issue 18), from their metrics.jsonl.

    python docs/plot_real_model.py runs/smollm2_addition:"seed 0" runs/smollm2_addition_seed1:"seed 1" \
        runs/smollm2_addition_lora:"LoRA r16" --out docs/smollm2_addition.png

Minutes are the sum of the runs' `step_seconds` (sampling + scoring + update; evals and checkpoints
excluded), so runs that evaluated at different intervals compare fairly. Panels: held-out greedy
accuracy and format rate (the eval rows), and per training step the correctness reward, the KL to the
reference and the mean completion length (moving average over `--window` steps). Prints one line per
eval row. A run resumed from a checkpoint without a step-0 eval (its first steps ran with evals off)
gets the step-0 eval of another run: greedy decoding of the same base model on the same held-out
problems gives the same numbers for every seed. `--max-step` drops rows after that step (a run
stopped after its last checkpoint logs a step it will redo).
"""
import argparse
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from grpo_jax import metrics as metrics_lib  # noqa: E402


def minutes(rows):
    """GRPO minutes at each row: cumulative step_seconds (0 for the step-0 eval row)."""
    total, out = 0.0, []
    for r in rows:
        total += r.get("step_seconds", 0.0)
        out.append(total / 60)
    return np.array(out)


def smooth(x, window):
    if len(x) < window:
        return np.asarray(x, float)
    return np.convolve(x, np.ones(window) / window, mode="valid")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="WORKDIR[:LABEL]")
    parser.add_argument("--out", default="docs/smollm2_addition.png")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--max-step", type=int, default=None)
    parser.add_argument("--cores", type=int, default=2, help="CPU cores each run had (the axis label)")
    parser.add_argument("--no-format", action="store_true",
                        help="leave out eval_format (runs of the code task before 2026-12-08 logged the math "
                             "answer style's format score for programs: 0)")
    args = parser.parse_args()

    runs = []
    for spec in args.runs:
        path, _, label = spec.partition(":")
        rows = sorted(metrics_lib.read_metrics(path), key=lambda r: r["step"])
        if args.max_step is not None:
            rows = [r for r in rows if r["step"] <= args.max_step]
        runs.append((label or pathlib.Path(path).name, rows))
    base = next((r for _, rows in runs for r in rows if r["step"] == 0 and "eval_accuracy" in r), None)

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for label, rows in runs:
        if base is not None and not any(r["step"] == 0 and "eval_accuracy" in r for r in rows):
            rows = [base] + rows
        t = minutes(rows)
        evals = [(m, r) for m, r in zip(t, rows) if "eval_accuracy" in r]
        for m, r in evals:
            print(f"{label}: step {r['step']:4d}  {m:6.1f} GRPO min  accuracy {r['eval_accuracy']:.3f}  "
                  f"format {r.get('eval_format', float('nan')):.3f}  length {r.get('eval_length', float('nan')):.1f}")
        line, = axes[0].plot([m for m, _ in evals], [r["eval_accuracy"] for _, r in evals], "o-", label=label)
        with_format = [(m, r) for m, r in evals if "eval_format" in r and not args.no_format]
        axes[0].plot([m for m, r in with_format],
                     [r["eval_format"] for _, r in with_format], "s--", color=line.get_color(),
                     alpha=0.6, label=f"{label}: format")
        steps = [(m, r) for m, r in zip(t, rows) if "reward_correctness" in r]
        tm = smooth([m for m, _ in steps], args.window)
        for ax, key in zip(axes[1:], ["reward_correctness", "kl", "completion_length"]):
            ax.plot(tm, smooth([r[key] for _, r in steps], args.window), color=line.get_color(), label=label)
    titles = ["held-out greedy accuracy (o)" + ("" if args.no_format else " and format (s)"), "training correctness (moving avg)",
              "KL to the reference (k3)", "completion length (tokens)"]
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"GRPO minutes on {args.cores} CPU core{'s' if args.cores > 1 else ''}")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
