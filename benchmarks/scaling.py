"""grpo_jax step time vs group size G and vs max new tokens T; peak RSS with beta = 0 vs 0.04; a plot.

    python -m benchmarks.scaling [--model-dir benchmarks/_models/tiny_qwen2] [--steps 3] \
        [--plot benchmarks/scaling.png]

Each point is one `python -m benchmarks.grpo_step` process (8 prompts, prompt 32, beta 0.04 unless
stated, --no-ref-timing), its median over --steps timed steps. Sweeps: G in {4, 8, 16, 32} at T = 64;
T in {32, 64, 128, 256} at G = 8; beta in {0, 0.04} at G = 8, T = 64 (peak RSS of the process).
Slopes: least-squares seconds per extra completion row (G sweep: rows = 8 G) and per extra token
(T sweep), plus the log-log exponent between the ends (1.0 = linear; > 1 superlinear).

Prints RESULT lines (`sweep=G`, `sweep=T`, `sweep=beta`) and writes a small PNG.
"""
import argparse
import math
import pathlib
import subprocess
import sys

import numpy as np

from benchmarks.vs_trl import ROOT, parse_result


def point(args, *, g=8, t=64, beta=0.04) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.grpo_step", "--model-dir", args.model_dir, "--prompts", "8",
           "--group-size", str(g), "--max-prompt-len", "32", "--max-new-tokens", str(t), "--beta", str(beta),
           "--steps", str(args.steps), "--no-ref-timing"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{cmd} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    r = parse_result(proc.stdout)
    print(f"  G={g} T={t} beta={beta}: {r['sec_per_step_median']:.3f} s/step (sample {r['sample_s']:.3f}, "
          f"update {r['update_s']:.3f}), roofline {r['roofline_fraction']:.2f}, peak RSS {r['peak_rss_mb']:.0f} MB",
          flush=True)
    return r


def fit(xs, ys):
    slope, intercept = np.polyfit(xs, ys, 1)
    exponent = math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0])
    return slope, intercept, exponent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="benchmarks/_models/tiny_qwen2")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--plot", default="benchmarks/scaling.png")
    args = parser.parse_args()

    gs, ts = [4, 8, 16, 32], [32, 64, 128, 256]
    print("G sweep (T=64)", flush=True)
    g_res = {g: point(args, g=g) for g in gs}
    print("T sweep (G=8)", flush=True)
    t_res = {t: (g_res[8] if t == 64 else point(args, t=t)) for t in ts}
    print("beta = 0 (G=8, T=64)", flush=True)
    b0 = point(args, beta=0.0)

    g_sec = [g_res[g]["sec_per_step_median"] for g in gs]
    t_sec = [t_res[t]["sec_per_step_median"] for t in ts]
    gs_, gi, ge = fit([8 * g for g in gs], g_sec)
    ts_, ti, te = fit(ts, t_sec)
    print("RESULT sweep=G " + " ".join(f"G{g}={s:.4g}" for g, s in zip(gs, g_sec)) +
          f" sec_per_row={gs_:.4g} intercept_s={gi:.4g} loglog_exponent={ge:.3g}")
    print("RESULT sweep=T " + " ".join(f"T{t}={s:.4g}" for t, s in zip(ts, t_sec)) +
          f" sec_per_token={ts_:.4g} intercept_s={ti:.4g} loglog_exponent={te:.3g}")
    print(f"RESULT sweep=beta beta0_peak_rss_mb={b0['peak_rss_mb']:.0f} "
          f"beta0.04_peak_rss_mb={g_res[8]['peak_rss_mb']:.0f} beta0_sec_per_step={b0['sec_per_step_median']:.4g} "
          f"beta0.04_sec_per_step={g_res[8]['sec_per_step_median']:.4g}")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    for ax, xs, res, label in ((axes[0], gs, g_res, "group size G (8 prompts, T=64)"),
                               (axes[1], ts, t_res, "max new tokens T (8 prompts x G=8)")):
        for key, name in (("sec_per_step_median", "step"), ("sample_s", "sample"), ("update_s", "update")):
            ax.plot(xs, [res[x][key] for x in xs], "o-", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(label)
        ax.set_ylabel("seconds (median)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("grpo_jax GRPO step on CPU, tiny Qwen2, beta=0.04", fontsize=10)
    fig.tight_layout()
    path = pathlib.Path(args.plot)
    fig.savefig(path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
