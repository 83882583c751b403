"""Evaluation with the training verifiers: greedy pass@1, and pass@k / maj@k from k samples.

    pass@1 (greedy)  fraction of problems whose temperature-0 completion is correct
    pass@k           fraction with at least one correct completion among k samples
    maj@k            fraction where the most frequent extracted answer among k samples is
                     correct (ties broken by first occurrence; unparseable answers never vote)

    python -m grpo_jax.evaluate --workdir runs/NAME [--config experiments/NAME.py] [--base_model] [--config.a.b=v ...]

evaluates the workdir's latest checkpoint on the task's held-out split. A workdir without a
checkpoint is an error (exit 2): a mistyped path must not score the untrained model. `--base_model`
evaluates the model before training instead (model.path's weights, or the seeded random init; with
LoRA, the base without adapters), whatever the workdir holds.

The config: the workdir's own config.json (what the run trained with) plus any --config.a.b=v
overrides. With `--config` the experiment file plus overrides are used instead (another task's
held-out set, other decoding), but the keys that decide what the checkpoint's weights are (`model.*`
but the compute-only dtype / attention / remat, and train.seed for a random-init model) must match
the workdir's config.json: a mismatch is refused, naming the keys, rather than restoring one run's
weights into another's model. Greedy pass@1 ignores the sampling keys; pass@k / maj@k
(`train.pass_k` = k > 0) sample as training does: `sampling.temperature`, `top_k`, `top_p`, `min_p`.

It prints which checkpoint (step and path) and which decoding it used, writes the results to
`workdir/eval/step_N.json` (`eval/base.json` with --base_model; atomically, rewritten by a later
evaluation of the same checkpoint): the metrics, the checkpoint, the decoding, the config, and each
held-out problem's greedy score as "ids" / "correct" like the training run's eval_problems.jsonl
records; and it ends with one `RESULT step=N ...` (`RESULT model=base ...`) line.
"""
import collections
import json
import os
import pathlib
import sys

import jax
import numpy as np

from grpo_jax import buckets
from grpo_jax import build
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import platforms
from grpo_jax import rewards as rewards_lib
from grpo_jax import sampling
from grpo_jax import tokenizer as tok_lib


def _padded_batches(items, batch_size):
    """Fixed-size batches (the last one padded by repeating its first item), so the sampler
    compiles once; yields (batch, number of real items)."""
    for start in range(0, len(items), batch_size):
        chunk = list(items[start:start + batch_size])
        real = len(chunk)
        chunk += [chunk[0]] * (batch_size - real)
        yield chunk, real


def engine_options(config, rows: int | None = None) -> dict:
    """The sampler's engine keywords from a config's sampling section (`sampling.sample`'s engine,
    slots, block_size, cache_tokens), for training and eval alike. With `rows` (the rows of one
    sampler call) the slots are clamped to them: more slots than rows would only idle."""
    sp = config.sampling
    return dict(engine=sp.engine, slots=sp.slots if rows is None else min(sp.slots, rows),
                block_size=sp.block_size, cache_tokens=sp.cache_tokens)


def generate(model_config, params, tokenizer, prompts, *, key, batch_size, max_prompt_length,
             max_new_tokens, temperature, put, chat=False, system=None, top_k=0, top_p=1.0, eos_ids=None,
             weight_layout="replicated", length_buckets=False, min_p=0.0, engine="lockstep", slots=0,
             block_size=16, cache_tokens=0):
    """Completions (text) for a list of prompt strings, in fixed-size sharded batches.

    `eos_ids`: the ids that end a completion (an int or a tuple); None = `eos_token_ids(tokenizer)`.
    `weight_layout`: the sampler's (config key sampling.weight_layout). `length_buckets` (config key
    train.length_buckets): each batch's prompts cut to its longest, rounded up to a bucket of
    `max_prompt_length` (`buckets.trim_prompts`: a few sampler shapes, not one per batch).
    `engine`, `slots`, `block_size`, `cache_tokens`: the decode engine (config keys sampling.engine,
    ...; `engine_options(config)`): the same completions with either engine (continuous.sample
    clamps the slots to the rows of each call).
    """
    eos_ids = tok_lib.eos_token_ids(tokenizer) if eos_ids is None else eos_ids
    out = []
    for i, (chunk, real) in enumerate(_padded_batches(prompts, batch_size)):
        ptok, pmask = tok_lib.encode_prompts(tokenizer, chunk, max_length=max_prompt_length, chat=chat,
                                             system=system or None)
        if length_buckets:
            ptok, pmask = buckets.trim_prompts(ptok, pmask)
        rollout = sampling.sample(model_config, params, put(ptok), put(pmask), jax.random.fold_in(key, i),
                                  max_new_tokens=max_new_tokens, eos_id=eos_ids,
                                  temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                  weight_layout=weight_layout, engine=engine, slots=slots,
                                  block_size=block_size, cache_tokens=cache_tokens)
        tokens, mask = to_host((rollout.tokens, rollout.mask))
        out += tok_lib.decode_completions(tokenizer, tokens, mask, eos_id=eos_ids)[:real]
    return out


def to_host(tree):
    """Device arrays -> numpy, also for arrays sharded across processes (multi-host runs)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def majority_correct(completions, gold, *, style, score) -> float:
    answers = [rewards_lib.extract_answer(c, style=style) for c in completions]
    votes = collections.Counter(a.strip() for a in answers if a is not None and a.strip())
    if not votes:
        return 0.0
    best = max(votes.items(), key=lambda kv: kv[1])[0]  # Counter keeps first-seen order on ties
    first = next(c for c, a in zip(completions, answers) if a is not None and a.strip() == best)
    return score(first, gold)


def evaluate(model_config, params, tokenizer, task, *, key, batch_size, max_prompt_length,
             max_new_tokens, put, pass_k=0, temperature=1.0, top_k=0, top_p=1.0, chat=False, system=None,
             eos_ids=None, weight_layout="replicated", length_buckets=False, per_problem=False,
             min_p=0.0, engine="lockstep", slots=0, block_size=16, cache_tokens=0) -> dict:
    """{"eval_accuracy": greedy pass@1, "eval_length": the greedy completions' mean length in tokens,
    "eval_format": their mean format score (`rewards.format_reward` in the task's answer style; absent
    for a style of a user's own), and with pass_k > 0: "eval_pass@k", "eval_maj@k"}.

    `eos_ids`: the ids that end a completion (an int or a tuple); None = `eos_token_ids(tokenizer)`
    (pass `eos_token_ids(tokenizer, model_path)` to add the model's generation_config.json ids).
    `weight_layout`: the sampler's (config key sampling.weight_layout); `length_buckets`, `engine`,
    `slots`, `block_size`, `cache_tokens`: `generate`'s.
    The pass@k / maj@k samples are drawn as training draws them: `temperature`, `top_k`, `top_p`,
    `min_p` (the config's sampling section); the greedy pass@1 ignores all four.
    `per_problem`: also "eval_correct", f32[E] each held-out problem's greedy score in
    `task.eval_examples` order (the same on every process), for problem-by-problem comparisons.
    """
    examples = task.eval_examples
    prompts = [task.prompt(e) for e in examples]
    eos_ids = tok_lib.eos_token_ids(tokenizer) if eos_ids is None else eos_ids
    common = dict(batch_size=batch_size, max_prompt_length=max_prompt_length,
                  max_new_tokens=max_new_tokens, put=put, chat=chat, system=system, eos_ids=eos_ids,
                  weight_layout=weight_layout, length_buckets=length_buckets, engine=engine, slots=slots,
                  block_size=block_size, cache_tokens=cache_tokens)
    greedy = generate(model_config, params, tokenizer, prompts, key=key, temperature=0.0, **common)

    # the task's own format score (the code task: one fenced block), else its answer style's; none for
    # a style of a user's own
    format_score = task.format or (
        (lambda c: rewards_lib.format_reward(c, style=task.style)) if task.style in rewards_lib.STYLES else None)

    scored = []

    def score():  # on process 0 only: every process must act on the same numbers (SFT early stop)
        correct = [task.correct(c, e) for c, e in zip(greedy, examples)]
        scored.append(np.asarray(correct, np.float32))
        out = {"eval_accuracy": float(np.mean(correct)), "eval_examples": len(examples),
               "eval_length": float(np.mean([len(tokenizer.encode(c, add_special_tokens=False)) for c in greedy]))}
        if format_score is not None:
            out["eval_format"] = float(np.mean([format_score(c) for c in greedy]))
        if pass_k > 0:
            ok = np.array([task.correct(c, e) for c, e in zip(samples, [e for e in examples for _ in range(pass_k)])])
            out[f"eval_pass@{pass_k}"] = float(ok.reshape(len(examples), pass_k).max(axis=1).mean())
            maj = [majority_correct(samples[i * pass_k:(i + 1) * pass_k], e, style=task.style,
                                    score=task.correct) for i, e in enumerate(examples)]
            out[f"eval_maj@{pass_k}"] = float(np.mean(maj))
        return out

    if pass_k > 0:
        repeated = [p for p in prompts for _ in range(pass_k)]  # problem-major
        samples = generate(model_config, params, tokenizer, repeated, key=jax.random.fold_in(key, 1),
                           temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, **common)
    keys = (["eval_accuracy", "eval_examples", "eval_length"] + (["eval_format"] if format_score is not None else [])
            + ([f"eval_pass@{pass_k}", f"eval_maj@{pass_k}"] if pass_k > 0 else []))
    out = on_process_zero(score, keys)
    if per_problem:
        correct = scored[0] if scored else np.zeros(len(examples), np.float32)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            correct = np.asarray(multihost_utils.broadcast_one_to_all(correct))
        out["eval_correct"] = correct
    return out


def evaluate_run(s: build.Setup, params, eval_key, step: int, writer) -> dict:
    """The eval at `step` of a run's policy `params` (greedy accuracy, pass@k / maj@k sampled as
    training samples, with `fold_in(eval_key, step)`): returns its scalars and writes each held-out
    problem's score to the workdir's eval_problems.jsonl through `writer` (a metrics.MetricsWriter)."""
    c = s.config
    out = evaluate(
        s.model_config, params, s.tokenizer, s.task, key=jax.random.fold_in(eval_key, step),
        batch_size=c.train.eval_batch_size, max_prompt_length=c.sampling.max_prompt_length,
        max_new_tokens=c.sampling.max_new_tokens, put=s.put, pass_k=c.train.pass_k,
        temperature=c.sampling.temperature, chat=c.task.chat_template, system=c.task.system_prompt or None,
        eos_ids=s.eos_ids, weight_layout=c.sampling.weight_layout, length_buckets=c.train.length_buckets,
        top_k=c.sampling.top_k, top_p=c.sampling.top_p, min_p=c.sampling.min_p,
        per_problem=True, **engine_options(c))  # pass@k samples as training does
    correct = out.pop("eval_correct")
    writer.write_detail("eval_problems.jsonl", step, {"ids": list(range(len(correct))), "correct": correct})
    return out


def on_process_zero(fn, keys):
    """fn() -> {key: number} for `keys`, computed on process 0 and broadcast, so that every process
    of a multi-host run acts on the same numbers (verifiers have wall-clock limits: two hosts
    scoring for themselves could disagree, and e.g. stop SFT at different steps)."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils
    result = fn() if jax.process_index() == 0 else dict.fromkeys(keys, 0.0)
    values = np.asarray(multihost_utils.broadcast_one_to_all(np.array([result[k] for k in keys], np.float32)))
    return {k: (int(v) if k == "eval_examples" else float(v)) for k, v in zip(keys, values)}


USAGE = ("usage: python -m grpo_jax.evaluate --workdir runs/NAME [--config experiments/NAME.py] [--base_model] "
         "[--config.section.key=value ...] [--help]")
EVAL_DIR = "eval"  # workdir/eval/step_N.json: one file per evaluated checkpoint (base.json: --base_model)
# Model keys that change only how the weights are computed with, not what they are: free to differ
# from the workdir's config.json (every other model.* key must match it).
COMPUTE_ONLY_KEYS = ("model.dtype", "model.attention", "model.remat", "model.allow_bf16_params")


def parse_args(argv) -> tuple[str | None, str, bool, list]:
    """`--workdir DIR [--config PATH] [--base_model] [--config.a.b=v ...]` -> (config path or None,
    workdir, base_model, overrides)."""
    path = workdir = None
    base_model, overrides, args = False, [], list(argv)
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if arg == "--base_model":
            base_model = True
        elif name.startswith("--config."):
            overrides.append(cfg_lib.override_item(arg, args))
        elif name in ("--config", "--workdir"):
            if not eq:
                if not args:
                    raise cfg_lib.ConfigError(f"{arg} needs a value")
                value = args.pop(0)
            path, workdir = (value, workdir) if name == "--config" else (path, value)
        else:
            raise cfg_lib.ConfigError(f"unknown argument {arg!r}\n{USAGE}")
    if workdir is None:
        raise cfg_lib.ConfigError(f"--workdir is required\n{USAGE}")
    return path, workdir, base_model, overrides


def latest_checkpoint(workdir: pathlib.Path) -> int | None:
    """The newest committed checkpoint step in workdir/checkpoints, or None (nothing is created)."""
    if not (workdir / "checkpoints").is_dir():
        return None
    with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
        return ckpt.latest_step()


def weight_keys(config: cfg_lib.Config) -> list[str]:
    """The keys whose values decide what a checkpoint's weights are (module docstring)."""
    keys = [f"model.{k}" for k in cfg_lib.to_dict(config)["model"] if f"model.{k}" not in COMPUTE_ONLY_KEYS]
    return keys + ([] if config.model.path else ["train.seed"])  # the seed makes a random init's weights


def load_eval_config(path, workdir: pathlib.Path, overrides) -> tuple[cfg_lib.Config, str]:
    """(validated Config, where it came from): `path` (an experiment file) or the workdir's
    config.json, plus `overrides`; refused when it disagrees with config.json on `weight_keys`."""
    saved_path = workdir / "config.json"
    saved = cfg_lib.from_dict(json.loads(saved_path.read_text())) if saved_path.exists() else None
    if path is not None:
        config, source = cfg_lib.load_config(path, overrides), str(path)
    elif saved is not None:
        config = cfg_lib.validate(cfg_lib.apply_overrides(saved, overrides))
        source = str(saved_path)
    else:
        raise cfg_lib.ConfigError(f"workdir {str(workdir)!r} has no config.json: pass --config experiments/NAME.py")
    if saved is not None:
        new, old = cfg_lib.to_dict(config), cfg_lib.to_dict(saved)
        value = lambda tree, key: tree[key.split(".")[0]][key.split(".")[1]]  # noqa: E731
        diff = [key for key in weight_keys(config) if value(new, key) != value(old, key)]
        if diff:
            hint = ("leave out --config to evaluate with the workdir's own config" if path is not None
                    else "drop the overrides of those keys")
            raise cfg_lib.ConfigError(
                f"{source}{' with its overrides' if overrides else ''} differs from {str(saved_path)!r}, the "
                f"config the workdir's weights were trained with, on {', '.join(f'`{k}`' for k in diff)}: {hint}")
    return config, source


def _write_json(path: pathlib.Path, record: dict) -> None:
    """Writes `record` to `path` atomically (a temporary beside it, fsynced, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(USAGE + "\n\n" + __doc__ + "\nEvery config key: python -m grpo_jax.train --help")
        return 0
    platforms.skip_absent_tpu()  # no libtpu (and its stderr noise) on a machine without a TPU
    try:
        path, workdir, base_model, overrides = parse_args(argv)
        workdir = pathlib.Path(workdir)
        if not base_model and latest_checkpoint(workdir) is None:  # before any config or model work
            raise cfg_lib.ConfigError(
                f"workdir {str(workdir)!r} holds no checkpoint (nothing in {str(workdir / 'checkpoints')!r}): "
                f"check the path, or pass --base_model to evaluate the model before training")
        config, source = load_eval_config(path, workdir, overrides)
        if base_model and config.model.lora_rank:  # the base alone: no adapters
            config = cfg_lib.apply_overrides(config, ["model.lora_rank=0"])
        setup = build.setup(config, workdir, for_eval=not base_model)
    except cfg_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    c = setup.config
    metrics = evaluate(setup.model_config, setup.params, setup.tokenizer, setup.task,
                       key=jax.random.key(c.train.seed + 1), batch_size=c.train.eval_batch_size,
                       max_prompt_length=c.sampling.max_prompt_length, max_new_tokens=c.sampling.max_new_tokens,
                       put=setup.put, pass_k=c.train.pass_k, temperature=c.sampling.temperature,
                       top_k=c.sampling.top_k, top_p=c.sampling.top_p, min_p=c.sampling.min_p,
                       chat=c.task.chat_template,
                       system=c.task.system_prompt, eos_ids=setup.eos_ids, weight_layout=c.sampling.weight_layout,
                       length_buckets=c.train.length_buckets, per_problem=True, **engine_options(c))
    correct = metrics.pop("eval_correct")
    k = c.train.pass_k
    decoding = {"eval_accuracy": "greedy (temperature 0)", "pass_k": k, "temperature": c.sampling.temperature,
                "top_k": c.sampling.top_k, "top_p": c.sampling.top_p, "max_new_tokens": c.sampling.max_new_tokens,
                "max_prompt_length": c.sampling.max_prompt_length}
    if c.sampling.min_p > 0:  # recorded when it truncates (records from before min_p existed: off)
        decoding["min_p"] = c.sampling.min_p
    checkpoint = None if base_model else str(workdir / "checkpoints" / str(setup.step))
    model = ("base model (" + (c.model.path or f"random init, train.seed={c.train.seed}") + ")" if base_model
             else f"checkpoint step {setup.step} at {checkpoint}")
    sampled = (f"; eval_pass@{k} / eval_maj@{k} from {k} samples per problem at temperature {c.sampling.temperature}, "
               f"top_k {c.sampling.top_k}, top_p {c.sampling.top_p}"
               + (f", min_p {c.sampling.min_p}" if c.sampling.min_p > 0 else "") if k > 0 else "")
    out = workdir / EVAL_DIR / ("base.json" if base_model else f"step_{setup.step}.json")
    if jax.process_index() == 0:
        _write_json(out, {"step": None if base_model else setup.step, "checkpoint": checkpoint,
                          "base_model": base_model, **metrics, "decoding": decoding,
                          "task": {"name": c.task.name, "eval_split": c.task.eval_split, "eval_size": c.task.eval_size},
                          "config_source": source, "overrides": overrides, "config": cfg_lib.to_dict(c),
                          "ids": list(range(len(correct))), "correct": [float(x) for x in correct]})
        print(f"evaluated: {model}, config {source}" + (f" + {len(overrides)} override(s)" if overrides else ""))
        print(f"decoding: eval_accuracy greedy (temperature 0){sampled}; at most {c.sampling.max_new_tokens} new "
              f"tokens, {metrics['eval_examples']} held-out problems of {c.task.name}")
        print(f"results: {out}")
        head = "model=base" if base_model else f"step={setup.step}"
        print(f"RESULT {head} " + " ".join(f"{name}={v:.4g}" if isinstance(v, float) else f"{name}={v}"
                                           for name, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
