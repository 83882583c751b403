"""grpo_jax vs TRL's GRPOTrainer vs Google Tunix's GRPOLearner, one GRPO step, alternating runs.

    TUNIX_VENV=DIR python -m benchmarks.vs_tunix [--runs 3] [--steps 4] [--workloads tiny64 tiny256 gsm8k]

Needs the peer harness in ../shared/bench (or $GRPO_JAX_SHARED/bench): `tunix/setup.sh` builds the
Tunix venv (google-tunix 0.1.7 on the same jax/jaxlib as ours) at $TUNIX_VENV when absent, and
`make_tiny_model.py` builds the one model directory all three sides load (a tiny random Qwen2 with a
byte-level BPE tokenizer: pad 0, eos 1, no bos). The TRL venv is made as in benchmarks/vs_trl.py.

Workloads (8 prompts x G = 8, beta = 0.04, one update per batch, fp32, no gradient checkpointing):
  tiny64, tiny256   "What is A+B? Answer:" (A, B in 0..99, 11 tokens), 64 / 256 new tokens
  gsm8k             the same questions after a shared 400-character instruction (about 210 tokens with
                    this tokenizer), 300 new tokens
Per run each side times --steps steps after a first (compile / warm-up) step and reports its median;
this prints the median over runs of each side and the ratios. Differences between the sides (Tunix
pads every prompt to the dataset's longest and stops decoding only when every row hit EOS; TRL and we
decode the whole budget; rewards differ but cost nothing) are in ../shared/bench/tunix/README.md and
benchmarks/README.md.

Prints per workload:
  RESULT workload=W grpo_jax_sec_per_step=... trl_sec_per_step=... tunix_sec_per_step=...
         speedup_vs_trl=... speedup_vs_tunix=... (+ phase medians)
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys

from benchmarks.grpo_step import prefix_text
from benchmarks.vs_trl import ROOT, TRL_PY, ensure_trl_venv, run

WORKLOADS = {"tiny64": (0, 64), "tiny256": (0, 256), "gsm8k": (400, 300)}  # (prefix characters, new tokens)


def shared_bench() -> pathlib.Path:
    base = os.environ.get("GRPO_JAX_SHARED")
    path = pathlib.Path(base) / "bench" if base else ROOT.parent / "shared" / "bench"
    if not (path / "tunix" / "tunix_grpo_bench.py").exists():
        raise SystemExit(f"no Tunix harness at {path}/tunix (set GRPO_JAX_SHARED to the shared directory)")
    return path


def ensure_tunix_venv(bench: pathlib.Path) -> pathlib.Path:
    venv = os.environ.get("TUNIX_VENV")
    if not venv:
        raise SystemExit("set TUNIX_VENV to the directory of the Tunix venv (built there when absent)")
    subprocess.run([str(bench / "tunix" / "setup.sh")], check=True, env={**os.environ, "TUNIX_VENV": venv},
                   stdout=subprocess.DEVNULL)
    return pathlib.Path(venv) / "bin" / "python"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="benchmarks/_models/tiny_qwen2_bpe")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--beta", type=float, default=0.04)
    args = parser.parse_args()

    bench = shared_bench()
    tunix_py = ensure_tunix_venv(bench)
    ensure_trl_venv()
    if not (ROOT / args.model_dir / "config.json").exists():
        subprocess.run([sys.executable, str(bench / "make_tiny_model.py"), "--out", args.model_dir],
                       check=True, cwd=ROOT)
    from grpo_jax import tokenizer as tok_lib
    tokenizer = tok_lib.load_tokenizer(str(ROOT / args.model_dir))
    common = ["--prompts", "8", "--group-size", "8", "--beta", str(args.beta)]
    for name in args.workloads:
        chars, t = WORKLOADS[name]
        prefix = prefix_text(chars)
        # our static prompt width: the longest question (11 tokens) after the prefix, rounded up to 8;
        # the length buckets then cut each batch to its longest prompt
        width = -(-(len(tokenizer.encode(prefix + "What is 99+99? Answer:")) + 1) // 8) * 8
        print(f"{name}: {len(tokenizer.encode(prefix))}-token prefix, {t} new tokens, "
              f"alternating {args.runs} runs x {args.steps} timed steps", flush=True)
        ours, trl, tunix = [], [], []
        for i in range(args.runs):
            ours.append(run([sys.executable, "-m", "benchmarks.grpo_step", "--model-dir", args.model_dir, *common,
                             "--prompt-style", "addition", "--prompt-prefix", str(chars), "--max-prompt-len",
                             str(width), "--max-new-tokens", str(t), "--steps", str(args.steps)],
                            f"run {i} grpo_jax"))
            trl.append(run([str(TRL_PY), "benchmarks/trl_grpo_step.py", "--model-dir", args.model_dir, *common,
                            "--prompt-style", "addition", "--prompt-prefix", str(chars), "--max-new-tokens", str(t),
                            "--steps", str(args.steps)], f"run {i} trl"))
            tunix.append(run([str(tunix_py), str(bench / "tunix" / "tunix_grpo_bench.py"), "--model",
                              args.model_dir, *common, "--prompt-prefix", prefix, "--max-new-tokens", str(t),
                              "--steps", str(args.steps + 1), "--warmup-steps", "1"], f"run {i} tunix"))

        def med(rs, k):
            return statistics.median(r[k] for r in rs)

        a, b, c = (med(rs, "sec_per_step_median") for rs in (ours, trl, tunix))
        print(f"RESULT workload={name} new_tokens={t} grpo_jax_sec_per_step={a:.4g} trl_sec_per_step={b:.4g} "
              f"tunix_sec_per_step={c:.4g} speedup_vs_trl={b / a:.3g} speedup_vs_tunix={c / a:.3g} "
              f"grpo_jax_sample_s={med(ours, 'sample_s'):.4g} trl_generate_s={med(trl, 'generate_s'):.4g} "
              f"tunix_gen_s={med(tunix, 'gen_sec_median'):.4g} grpo_jax_update_s={med(ours, 'update_s'):.4g} "
              f"tunix_update_s={med(tunix, 'update_sec_median'):.4g} tunix_ref_s={med(tunix, 'ref_sec_median'):.4g} "
              f"grpo_jax_prompt_width={med(ours, 'prompt_width'):.4g} "
              f"grpo_jax_gflops_per_step={med(ours, 'gflops_per_step'):.4g} "
              f"tunix_foreign_cpu_frac={med(tunix, 'foreign_cpu_frac'):.3g}", flush=True)


if __name__ == "__main__":
    main()
