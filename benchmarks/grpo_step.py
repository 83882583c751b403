"""One GRPO step, timed piece by piece, against the matmul roofline measured in the same run.

    python -m benchmarks.grpo_step --model-dir benchmarks/_models/tiny_qwen2 --prompts 8 --group-size 8 \
        --max-prompt-len 32 --max-new-tokens 64 --beta 0.04 --steps 10

Each step runs the real pieces the trainer runs (grpo_jax/train.py): `sampling.sample` (eos_id=-1: no
early stop, every run does the same work), a host reward (the fraction of digit characters in each
decoded completion: cheap, and it varies within a group), `advantages.group_advantages`, and the
jitted, donated `train_step` with a reference model when beta > 0. Printed per step:
  sample    rollout (prefill + T-1 decode steps), blocked on the tokens
  reward    decode + host reward + advantages
  update    the whole jitted train step (reference forward included when beta > 0), blocked
  ref       a separate jitted reference log-prob forward on the same batch (NOT part of the step:
            it shows how much of `update` the reference forward costs)
Step time = sample + reward + update. The first step (compile) is excluded and reported as
`compile_s` (first step minus the median step).

--baseline runs the step as it was before issue 17 (prompts padded to --max-prompt-len, every row
prefilled, sampler log-probs, every prompt encoded G times in the update); by default prompts are cut
to their length bucket, each prompt is prefilled once and encoded once per group in the update.
--prompt-prefix N puts the same N-character instruction before every question (GSM8K-shaped).

FLOPs are counted analytically (grpo_jax.plan.step_flops) over the shapes the step executes (N =
prompts * G rows, prompt P = the median width after bucketing, completion T): matmuls 2 * rows * (D*(2*H*hd + 2*KV*hd) + 3*D*F) per layer, causal
attention 4 * H*hd * ctx per token per layer (ctx = the keys a query may attend to), LM head 2*D*V
on the positions that need logits. Sampling = prefill over P (LM head on the last slot) + T-1
decode steps of N tokens; reference = one forward over P+T (LM head on T positions); policy =
3 x that forward (forward + backward). The roofline is measured here, in this process: fp32 matmul
GFLOP/s of the model's own matmuls (one layer's q/k/v/o/gate/up/down + LM head) at the decode shape
(N rows) and at the training shape (N*(P+T) rows), best of several tries before and after the steps.
roofline_s = sample_flops / decode_gflops + (ref + policy flops) / train_gflops;
roofline_fraction = roofline_s / sec_per_step_median (1.0 = every FLOP at matmul peak speed).

Final line:
  RESULT sec_per_step_median=... tokens_per_s=... gflops_per_step=... achieved_gflops=...
         roofline_fraction=... peak_rss_mb=... (+ the phase medians)
tokens_per_s = generated tokens (N*T) / median step time. peak_rss_mb = this process's max RSS.
"""
import argparse
import json
import resource
import statistics
import string
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import advantages as adv_lib
from grpo_jax import buckets, sampling, scoring, sharding, weights
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts
from grpo_jax.build import make_put
from grpo_jax.plan import forward_flops, layer_matmul_flops, step_flops  # the one analytic FLOP count

PREFIX_SENTENCE = "Solve the problem. Think step by step, then give the final number after 'A:'. "


def prefix_text(chars: int) -> str:
    """A shared instruction of `chars` characters (= tokens with the tiny model's char tokenizer),
    the same in benchmarks/trl_grpo_step.py: a GSM8K-shaped prompt is a long shared prefix + a question."""
    return (PREFIX_SENTENCE * (chars // len(PREFIX_SENTENCE) + 1))[:chars]


def prompt_texts(rng: np.random.Generator, n: int, prefix: str = "", style: str = "mixed") -> list[str]:
    """Plain text prompts. "mixed": varying length (left-padding is exercised), <= 26 characters after the
    prefix. "addition": the Tunix harness's "What is A+B? Answer:" with A, B in 0..99 (same shape, not
    the same draws: ../shared/bench/tunix/workload.py uses Python's random)."""
    if style == "addition":
        return [f"{prefix}What is {rng.integers(0, 100)}+{rng.integers(0, 100)}? Answer:" for _ in range(n)]
    return [f"{prefix}Q: {rng.integers(0, 10**rng.integers(1, 6))}+{rng.integers(0, 1000)}=? A:" for _ in range(n)]


def digit_reward(text: str) -> float:
    """Cheap host reward: the fraction of digit characters (varies within a group, so advantages != 0)."""
    return sum(ch in string.digits for ch in text) / max(len(text), 1)


# ---------------------------------------------------------------------------------------- FLOPs
def _to_width(y, d: int):
    """[rows, w] -> [rows, d] that depends on every column of y: zero-pad w to a multiple of d and sum
    the d-wide slices. Folds a projection of any width back into the residual stream (GQA makes
    2 * KV * hd < D, e.g. SmolLM2's 384 < 576; H * hd need not be D; V may be < D), and, unlike a cut to
    the first d columns, leaves XLA no projection to drop as dead code (a cut dropped all of v whenever
    KV * hd >= D)."""
    rows, w = y.shape
    k = -(-w // d)
    return jnp.pad(y, ((0, 0), (0, k * d - w))).reshape(rows, k, d).sum(1)


def matmul_probe(c, rows: int, *, reps: int):
    """(jitted fn, its args, its matmul FLOPs): one layer's q/k/v/o/gate/up/down + the LM head at `rows`
    rows, `reps` times chained (each output feeds the next, so XLA can drop none of them)."""
    d, f, hd, v = c.hidden_size, c.intermediate_size, c.head_dim, c.vocab_size
    keys = jax.random.split(jax.random.key(0), 9)
    w = {name: jax.random.normal(k, shape, jnp.float32) * 0.02 for k, (name, shape) in zip(keys, [
        ("q", (d, c.num_heads * hd)), ("k", (d, c.num_kv_heads * hd)), ("v", (d, c.num_kv_heads * hd)),
        ("o", (c.num_heads * hd, d)), ("g", (d, f)), ("u", (d, f)), ("dn", (f, d)), ("e", (v, d))])}
    x0 = jax.random.normal(keys[-1], (rows, d), jnp.float32)

    @jax.jit
    def run(x, w):
        def body(_, x):
            q, k, vv = x @ w["q"], x @ w["k"], x @ w["v"]
            h = x + 1e-3 * (q @ w["o"]) + 1e-3 * _to_width(jnp.concatenate([k, vv], -1), d)
            h = h + 1e-3 * ((h @ w["g"]) * (h @ w["u"])) @ w["dn"]
            logits = h @ w["e"].T
            return h + 1e-3 * _to_width(logits, d)
        return jax.lax.fori_loop(0, reps, body, x)

    return run, (x0, w), reps * (layer_matmul_flops(c, rows) + 2.0 * rows * d * v)


def matmul_gflops(c, rows: int, *, reps: int, tries: int = 5) -> float:
    """Best-of-`tries` fp32 GFLOP/s of `matmul_probe` (one layer's matmuls + the LM head, `reps` chained)."""
    run, args, flops = matmul_probe(c, rows, reps=reps)
    run(*args).block_until_ready()
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        run(*args).block_until_ready()
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


# ---------------------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-prompt-len", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (one more runs first: compile)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ref-timing", action="store_true",
                        help="skip the separate reference-forward timing (it adds work outside the step)")
    parser.add_argument("--json", help="also write the per-step times and the RESULT fields to this file")
    parser.add_argument("--prompt-prefix", type=int, default=0,
                        help="characters of a shared instruction before every question (GSM8K-shaped: ~200)")
    parser.add_argument("--prompt-style", choices=["mixed", "addition"], default="mixed",
                        help="mixed: 'Q: A+B=? A:' of 1-5 and 1-3 digits; addition: the Tunix harness's "
                             "'What is A+B? Answer:' with A, B in 0..99")
    parser.add_argument("--minibatches", type=int, default=1,
                        help="train.num_minibatches: the update over this many micro-batches of the rows with "
                             "gradient accumulation (one optimizer update): the same FLOPs in less memory")
    parser.add_argument("--baseline", action="store_true",
                        help="the step before issue 17: prompts padded to --max-prompt-len, one prefill per "
                             "row, sampler log-probs, the update encoding each prompt G times")
    args = parser.parse_args(argv)

    b, g, p, t = args.prompts, args.group_size, args.max_prompt_len, args.max_new_tokens
    n = b * g
    use_reference = args.beta > 0
    mesh = sharding.make_mesh(data=1, fsdp=len(jax.devices()))
    put = make_put(mesh)
    config, params = weights.load_hf(args.model_dir, mesh=mesh)
    tokenizer = tok_lib.load_tokenizer(args.model_dir)

    optimizer = ts.make_optimizer(learning_rate=1e-6)
    ref_params = jax.tree.map(jnp.copy, params) if use_reference else None
    state = ts.init_state(params, optimizer, mesh)
    state_sh = ts.state_shardings(mesh, optimizer, jax.eval_shape(lambda x: x, state.params))
    ref_sh = sharding.param_shardings(mesh, ref_params) if use_reference else None
    step = ts.build_train_step(config, optimizer, use_reference=use_reference, max_completion_length=t,
                               shared_prefix=not args.baseline, group_size=g, num_minibatches=args.minibatches)
    step_fn = ts.jit_train_step(step, mesh, state_sh, ref_sh)
    hp = ts.make_hparams(epsilon=0.2, beta=args.beta, temperature=1.0)
    ref_fn = jax.jit(lambda prm, bt: scoring.completion_logps(
        config, prm, bt.prompt_tokens, bt.prompt_mask, bt.completion_tokens))
    time_ref = use_reference and not args.no_ref_timing

    share = 1 if args.baseline else g  # one prefill per prompt and the shared-prefix update
    prefix = prefix_text(args.prompt_prefix)
    widths = []
    gf_decode = gf_train = 0.0

    def measure_roofline():
        nonlocal gf_decode, gf_train
        gf_decode = max(gf_decode, matmul_gflops(config, n, reps=32))
        gf_train = max(gf_train, matmul_gflops(config, n * (p + t), reps=2))

    measure_roofline()
    rng = np.random.default_rng(args.seed)
    key = jax.random.key(args.seed)
    rows = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        ptok, pmask = tok_lib.encode_prompts(tokenizer, prompt_texts(rng, b, prefix, args.prompt_style), max_length=p)
        if not args.baseline:  # the trainer's length buckets (train.length_buckets)
            ptok, pmask = buckets.trim_prompts(ptok, pmask, maximum=p)
        widths.append(ptok.shape[1])
        ptok, pmask = np.repeat(ptok, g, axis=0), np.repeat(pmask, g, axis=0)  # [N, P] group-major
        ptok_d, pmask_d = put(ptok), put(pmask)
        rollout = sampling.sample(config, state.params, ptok_d, pmask_d, jax.random.fold_in(key, step),
                                  max_new_tokens=t, eos_id=-1, temperature=1.0,
                                  **({} if args.baseline else dict(group_size=g, logps=False)))
        tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)  # the host round trip
        t1 = time.perf_counter()
        completions = tok_lib.decode_completions(tokenizer, tokens, mask, eos_id=-1)
        rewards = np.asarray([digit_reward(s) for s in completions], np.float32)
        advantages = adv_lib.group_advantages(jnp.asarray(rewards), g)
        batch = ts.Batch(ptok_d, pmask_d, rollout.tokens, rollout.mask, put(np.asarray(advantages)))
        t2 = time.perf_counter()
        ref_s = 0.0
        if time_ref:
            r0 = time.perf_counter()
            ref_fn(ref_params, batch).block_until_ready()
            ref_s = time.perf_counter() - r0
        t3 = time.perf_counter()
        state, metrics = step_fn(state, ref_params, batch, hp)
        loss = float(metrics["loss"])  # blocks on the update
        t4 = time.perf_counter()
        assert mask.sum() == n * t, "eos_id=-1 must give full-length completions"
        row = {"sample": t1 - t0, "reward": t2 - t1, "update": t4 - t3, "ref": ref_s}
        row["step"] = row["sample"] + row["reward"] + row["update"]
        rows.append(row)
        print(f"step {step}{' (compile)' if step == 0 else ''}: step {row['step']:.3f} s = sample "
              f"{row['sample']:.3f} + reward {row['reward']:.3f} + update {row['update']:.3f}  "
              f"(ref forward alone {ref_s:.3f})  loss {loss:+.4f} reward {rewards.mean():.3f}", flush=True)
    measure_roofline()

    timed = rows[1:]
    p_used = statistics.median(widths)  # executed FLOPs: the prompt width the step ran
    flops = step_flops(config, n=n, p=p_used, t=t, use_reference=use_reference, prefill_group=share,
                       shared_group=getattr(step, "shared_group_size", share))
    total_flops = sum(flops.values())
    med = {k: statistics.median(r[k] for r in timed) for k in rows[0]}
    sec = med["step"]
    roofline_s = flops["sample"] / (gf_decode * 1e9) + (flops["reference"] + flops["policy"]) / (gf_train * 1e9)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "sec_per_step_median": sec, "tokens_per_s": n * t / sec, "gflops_per_step": total_flops / 1e9,
        "prompt_width": p_used,
        "achieved_gflops": total_flops / 1e9 / sec, "roofline_fraction": roofline_s / sec,
        "peak_rss_mb": peak_rss_mb, "sample_s": med["sample"], "reward_s": med["reward"],
        "update_s": med["update"], "ref_s": med["ref"], "compile_s": rows[0]["step"] - sec,
        "matmul_gflops_decode": gf_decode, "matmul_gflops_train": gf_train,
        "sample_roofline_fraction": flops["sample"] / (gf_decode * 1e9) / med["sample"],
        "update_roofline_fraction": (flops["reference"] + flops["policy"]) / (gf_train * 1e9) / med["update"],
    }
    print(f"FLOPs per step (GFLOP): sample {flops['sample'] / 1e9:.2f}, reference {flops['reference'] / 1e9:.2f}, "
          f"policy fwd+bwd {flops['policy'] / 1e9:.2f}; matmul peak here: decode shape ({n} rows) "
          f"{gf_decode:.1f} GFLOP/s, train shape ({n * (p + t)} rows) {gf_train:.1f} GFLOP/s")
    print(f"medians: sample {med['sample']:.3f} s ({result['sample_roofline_fraction']:.2f} of roofline), "
          f"reward {med['reward']:.3f} s, update {med['update']:.3f} s "
          f"({result['update_roofline_fraction']:.2f} of roofline), ref forward alone {med['ref']:.3f} s; "
          f"compile {result['compile_s']:.1f} s; jax {jax.__version__}, {len(jax.devices())} device(s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "steps": rows, "result": result}, fh, indent=1)
    print("RESULT " + " ".join(f"{k}={v:.4g}" for k, v in result.items()), flush=True)
    return result


if __name__ == "__main__":
    main()
