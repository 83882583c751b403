"""Plots a run's held-out accuracy, reward and KL against GRPO step and wall time.

    python docs/plot_run.py runs/quickstart docs/quickstart.png
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from grpo_jax.metrics import read_metrics  # noqa: E402


def main(workdir, out):
    rows = read_metrics(workdir)
    sft = [r for r in rows if "sft_validation_accuracy" in r]
    grpo = [r for r in rows if "reward_mean" in r]
    evals = [r for r in rows if "eval_accuracy" in r]
    seconds, elapsed = {0: 0.0}, 0.0
    for r in grpo:
        elapsed += r["step_seconds"]
        seconds[r["step"]] = elapsed
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot([r["step"] for r in evals], [100 * r["eval_accuracy"] for r in evals], "o-", label="GRPO")
    ax.set(xlabel="GRPO step", ylabel="held-out greedy accuracy (%)", ylim=(0, 100),
           title=f"{evals[0]['eval_examples']} held-out problems")
    ax.grid(alpha=0.3)
    if sft:
        ax2 = axes[1]
        ax2.plot([r["sft_step"] for r in sft], [100 * r["sft_validation_accuracy"] for r in sft], ".-")
        ax2.set(xlabel="SFT step", ylabel="validation accuracy (%)", ylim=(0, 100), title="SFT warm start")
        ax2.grid(alpha=0.3)
    ax3 = axes[2]
    ax3.plot([r["step"] for r in grpo], [r["reward_mean"] for r in grpo], alpha=0.6, label="reward")
    ax3.plot([r["step"] for r in grpo], [r["kl"] for r in grpo], alpha=0.8, label="KL (k3)")
    ax3.set(xlabel="GRPO step", title="reward and KL per step")
    ax3.legend()
    ax3.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    for r in evals:
        print(f"step {r['step']:4d}  {seconds.get(r['step'], float('nan')):7.1f} s of GRPO  "
              f"accuracy {100 * r['eval_accuracy']:.1f} %")


if __name__ == "__main__":
    main(*sys.argv[1:3])
