"""The program: `python -m grpo_jax.train --config experiments/NAME.py --workdir runs/NAME`.

One GRPO step, in order (DESIGN.md §2):
    1. sample   B prompts (a pure function of (seed, step): data order is reproducible and
                resumable), each repeated G times, group-major -> N = B*G completions (jit, sharded)
    2. reward   decode and score on the host with the verifiers: the one host round trip
    3. advantage  group-normalised, [N] -> [B, G] -> [N]
    4. update   the one jitted step (train_step.py), mu iterations over minibatches
An optional SFT warm start runs first (GRPO follows SFT); its result is the initial policy and the
frozen reference of the KL term. Eval (greedy accuracy, pass@k / maj@k) runs at step 0, every
`train.eval_every` steps and at the end; checkpoints every `train.checkpoint_every` steps and at the
end. Running again with the same workdir resumes from the last checkpoint, exactly: step t's
sampling key is fold_in(key, t) and its prompts are indices [t*B, (t+1)*B), so nothing but params,
optimizer state and step needs restoring.
"""

import json
import math
import os
import pathlib
import string
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import advantages as adv_lib
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import evaluate as eval_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import model as model_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import sampling
from grpo_jax import sharding
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts
from grpo_jax.tasks import Example, arithmetic, countdown, gsm8k, math500, prompts, svamp

# The built-in character tokenizer's alphabet: every character the synthetic tasks' prompts use.
CHAR_ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"


class Task(NamedTuple):
    style: str
    train_example: Callable[[int], Example]  # index -> Example, a pure function
    eval_examples: list  # the reported held-out set
    validation_examples: list  # held out too, disjoint from eval_examples: for SFT early stopping
    prompt: Callable[[Example], str]
    correct: Callable[[str, Example], float]  # the correctness verifier
    verifiers: dict  # name -> fn(completion, Example) -> float, for rewards.combine


def _dataset_order(records, seed):
    """index -> record: a fresh permutation per epoch, a pure function of (seed, index)."""
    def get(index):
        epoch, i = divmod(index, len(records))
        return records[np.random.default_rng([seed, epoch]).permutation(len(records))[i]]
    return get


def make_task(config: cfg_lib.Config) -> Task:
    t, seed = config.task, config.train.seed
    style = t.prompt_style
    correct = lambda c, e: rewards_lib.correctness(c, e.answer, style=style)  # noqa: E731
    if t.name == "arithmetic":
        train = lambda i: arithmetic.example(seed, i, num_digits=t.num_digits, working=t.working)  # noqa: E731
        held_out = [arithmetic.example(seed, i, num_digits=t.num_digits, split="eval", working=t.working)
                    for i in range(t.eval_size + config.sft.validation_size)]
    elif t.name == "countdown":
        train = lambda i: countdown.example(seed, i, num_numbers=t.num_numbers)  # noqa: E731
        held_out = [countdown.example(seed, i, num_numbers=t.num_numbers, split="eval")
                    for i in range(t.eval_size + config.sft.validation_size)]
        correct = lambda c, e: rewards_lib.countdown_reward(  # noqa: E731
            c, e.meta["numbers"], e.meta["target"], style=style)
    else:
        path = pathlib.Path(t.data_path)
        if not path.exists():
            raise cfg_lib.ConfigError(f"config key `task.data_path`: {str(path)!r} does not exist")
        if t.name == "gsm8k":
            train_records, held_out = gsm8k.load(path, t.train_split), gsm8k.load(path, t.eval_split)
        elif t.name == "math500":
            train_records = held_out = math500.load(path, t.eval_split)  # MATH-500 is an eval set
            correct = lambda c, e: rewards_lib.math_reward(c, e.answer, style=style)  # noqa: E731
        else:  # svamp: one file, split by the held-out hash of each problem
            records = svamp.load(path)
            from grpo_jax.tasks import in_eval_split
            held_out = [r for r in records if in_eval_split(("svamp", r.prompt))]
            train_records = [r for r in records if not in_eval_split(("svamp", r.prompt))]
        train = _dataset_order(train_records, seed)
    # The first eval_size held-out problems are reported; the next validation_size steer SFT.
    size = t.eval_size or len(held_out)
    evals, validation = held_out[:size], held_out[size: size + config.sft.validation_size]
    return Task(style=style, train_example=train, eval_examples=evals, validation_examples=validation,
                prompt=(lambda e: prompts.format_prompt(e.prompt, style=style)) if t.instruction
                else (lambda e: e.prompt), correct=correct,
                verifiers={"correctness": correct,
                           "format": lambda c, e: rewards_lib.format_reward(c, style=style)})


class Setup(NamedTuple):
    config: cfg_lib.Config
    workdir: pathlib.Path
    mesh: Any
    put: Callable  # numpy [N, ...] -> global array sharded over the batch axes
    tokenizer: Any
    model_config: model_lib.ModelConfig
    params: Any
    task: Task
    step: int  # checkpoint step the params come from (0: none)


def make_put(mesh):
    def put(x):
        x = np.asarray(x)
        sh = sharding.batch_sharding(mesh, x.ndim)
        # Every process holds the same full batch (it is a pure function of the step), so each one
        # supplies its own shards: correct on one host and on many.
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])
    return put


def build_model(config: cfg_lib.Config, tokenizer, mesh):
    m = config.model
    if m.path:
        from grpo_jax import weights
        path = pathlib.Path(m.path)
        if not path.exists():
            raise cfg_lib.ConfigError(f"config key `model.path`: {m.path!r} does not exist")
        dtype = jnp.dtype(m.dtype)
        if path.suffix == ".gguf":
            return weights.load_gguf(path, dtype=dtype, mesh=mesh)
        return weights.load_hf(path, dtype=dtype, mesh=mesh)
    vocab = m.vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise cfg_lib.ConfigError(f"config key `model.vocab_size` = {vocab} is smaller than the "
                                  f"tokenizer's {len(tokenizer)} tokens")
    mc = model_lib.ModelConfig(
        vocab_size=vocab, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, intermediate_size=m.intermediate_size,
        rope_theta=m.rope_theta, rms_norm_eps=m.rms_norm_eps, tie_embeddings=m.tie_embeddings,
        attention_bias=m.attention_bias, max_position_embeddings=m.max_position_embeddings, dtype=m.dtype)
    return mc, sharding.init_params_sharded(mc, jax.random.key(config.train.seed), mesh)


def build_tokenizer(config: cfg_lib.Config):
    m = config.model
    path = m.tokenizer or m.path
    if not path:
        return tok_lib.char_tokenizer(CHAR_ALPHABET)
    if not pathlib.Path(path).exists():
        key = "model.tokenizer" if m.tokenizer else "model.path"
        raise cfg_lib.ConfigError(f"config key `{key}`: {path!r} does not exist")
    return tok_lib.load_tokenizer(path)


def _check_workdir_config(workdir: pathlib.Path, config: cfg_lib.Config) -> None:
    """A workdir belongs to one experiment: resuming with a different config (other than a longer
    `train.steps` or eval/log intervals) would silently mix two runs."""
    path = workdir / "config.json"
    if not path.exists():
        return
    old = cfg_lib.to_dict(cfg_lib.from_dict(json.loads(path.read_text())))
    new = cfg_lib.to_dict(config)
    free = {"train.steps", "train.log_every", "train.eval_every", "train.samples_every",
            "train.checkpoint_every", "train.pass_k", "train.eval_batch_size", "task.eval_size"}
    diff = [f"{s}.{k}" for s in new for k in new[s] if new[s][k] != old[s][k] and f"{s}.{k}" not in free]
    if diff:
        raise cfg_lib.ConfigError(f"workdir {str(workdir)!r} holds a run with a different config "
                                  f"(keys {', '.join(diff)}); use a new --workdir")


def setup(argv, *, for_eval=False) -> Setup:
    """The program's set-up from its command line (`--config PATH --workdir DIR [--config.a.b=v]`)."""
    config, workdir = cfg_lib.parse_command_line(argv)
    return setup_from_config(config, workdir, for_eval=for_eval)


def setup_from_config(config: cfg_lib.Config, workdir, *, for_eval=False) -> Setup:
    """Validates `config`, builds the mesh, task, tokenizer and model (params from `model.path`,
    else a seeded random init); with `for_eval`, params from the workdir's latest checkpoint."""
    cfg_lib.validate(config, num_devices=jax.device_count())
    workdir = pathlib.Path(workdir)
    data, fsdp = cfg_lib.mesh_shape(config, jax.device_count())
    mesh = sharding.make_mesh(data=data, fsdp=fsdp, devices=jax.devices()[: data * fsdp])
    task = make_task(config)  # data errors before any model work
    tokenizer = build_tokenizer(config)
    model_config, params = build_model(config, tokenizer, mesh)
    step = 0
    ckpt_dir = workdir / "checkpoints"
    if for_eval and ckpt_dir.exists():
        with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
            if ckpt.latest_step() is not None:
                target = _checkpoint_tree(config, ts.init_state(params, make_optimizer(config), mesh), params)
                restored, _ = ckpt.restore(ckpt_lib.abstract_like(target))
                params, step = restored["train"].params, ckpt.latest_step()
    return Setup(config, workdir, mesh, make_put(mesh), tokenizer, model_config, params, task, step)


def make_optimizer(c: cfg_lib.Config):
    return ts.make_optimizer(
        learning_rate=c.optim.learning_rate, max_grad_norm=c.optim.max_grad_norm, b1=c.optim.b1,
        b2=c.optim.b2, weight_decay=c.optim.weight_decay, warmup_steps=c.optim.warmup_steps,
        schedule=c.optim.schedule, total_steps=c.train.steps * c.grpo.num_iterations)


def _checkpoint_tree(c: cfg_lib.Config, state, ref_params) -> dict:
    """What a checkpoint holds: the train state, and the frozen reference when the KL term needs it."""
    return {"train": state, "ref": ref_params} if c.grpo.beta > 0 else {"train": state}


def warm_start(s: Setup, log):
    """The SFT warm-start stage on `s.params`: `sft.steps` steps, or fewer when held-out validation
    accuracy (checked every `sft.eval_every` steps) reaches `sft.stop_accuracy`. Returns the params;
    `log(step, metrics)` gets the SFT metrics and validation accuracies."""
    from grpo_jax import sft
    c = s.config

    def stop(step, params):
        if not c.sft.stop_accuracy or not s.task.validation_examples:
            return False
        accuracy = eval_lib.evaluate(
            s.model_config, params, s.tokenizer, s.task._replace(eval_examples=s.task.validation_examples),
            key=jax.random.key(0), batch_size=c.train.eval_batch_size,
            max_prompt_length=c.sampling.max_prompt_length, max_new_tokens=c.sampling.max_new_tokens,
            put=s.put, chat=c.task.chat_template, system=c.task.system_prompt)["eval_accuracy"]
        log(step, {"sft_validation_accuracy": accuracy})
        if accuracy >= c.sft.stop_accuracy:
            print(f"SFT stopped at step {step}: validation accuracy {accuracy:.3f} >= "
                  f"sft.stop_accuracy={c.sft.stop_accuracy}", file=sys.stderr)
            return True
        return False

    return sft.run_sft(
        s.model_config, s.params, s.tokenizer, s.task.train_example, steps=c.sft.steps,
        batch_size=c.sft.batch_size, learning_rate=c.sft.learning_rate, warmup_steps=c.sft.warmup_steps,
        seed=c.train.seed, mesh=s.mesh, style=s.task.style, max_prompt_length=c.sampling.max_prompt_length,
        max_target_length=c.sampling.max_new_tokens, chat=c.task.chat_template,
        system=c.task.system_prompt or None, log_every=max(1, c.sft.steps // 10), log_fn=log,
        prompt_fn=s.task.prompt, max_grad_norm=c.optim.max_grad_norm, stop_fn=stop,
        stop_every=c.sft.eval_every)


def run(argv, *, stop_after: int | None = None) -> list[dict]:
    """Trains; returns the scalar metric rows written. `stop_after` ends the process's work after
    that many GRPO steps of this invocation, as a crash would (tests use it for resume)."""
    s = setup(argv)
    c, workdir = s.config, s.workdir
    _check_workdir_config(workdir, c)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        # One writer, atomically (tmp + rename): in a multi-process run over a shared workdir the
        # other processes may be reading config.json in `_check_workdir_config` right now.
        tmp = workdir / f"config.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(cfg_lib.to_dict(c), indent=2, sort_keys=True))
        os.replace(tmp, workdir / "config.json")
    g = c.grpo
    use_reference = g.beta > 0
    optimizer = make_optimizer(c)
    ckpt = ckpt_lib.Checkpointer(workdir / "checkpoints", max_to_keep=c.train.max_checkpoints)
    start = ckpt.latest_step()
    fresh = start is None
    writer = metrics_lib.MetricsWriter(workdir, progress_total=c.train.steps,
                                       resume_step=-1 if start is None else start)
    rows = []

    def log(step, scalars):
        rows.append(writer.write(step, scalars))
        return rows[-1]

    params = s.params
    if start is None and c.sft.steps > 0:
        print(f"SFT warm start: {c.sft.steps} steps", file=sys.stderr)
        params = warm_start(s, lambda step, m: log(0, {(k if k.startswith("sft_") else f"sft_{k}"): v
                                                 for k, v in m.items()} | {"sft_step": step}))
    ref_params = jax.tree.map(jnp.copy, params) if use_reference else None
    state = ts.init_state(params, optimizer, s.mesh)
    if start is not None:
        full = _checkpoint_tree(c, state, ref_params)
        full, _ = ckpt.restore(ckpt_lib.abstract_like(full))
        state, ref_params = full["train"], full.get("ref")
        print(f"resumed from {workdir / 'checkpoints'} at step {start}", file=sys.stderr)
    start = start or 0

    state_sh = ts.state_shardings(s.mesh, optimizer, jax.eval_shape(lambda p: p, state.params))
    ref_sh = sharding.param_shardings(s.mesh, ref_params) if use_reference else None
    step_fn = ts.jit_train_step(
        ts.build_train_step(s.model_config, optimizer, loss_type=g.loss_type,
                            importance_level=g.importance_level, num_iterations=g.num_iterations,
                            num_minibatches=c.train.num_minibatches, use_reference=use_reference,
                            max_completion_length=c.sampling.max_new_tokens),
        s.mesh, state_sh, ref_sh)
    hp = ts.make_hparams(epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                         temperature=c.sampling.temperature)
    # Two independent streams: step t samples with fold_in(train_key, t), eval at t with fold_in(eval_key, t).
    train_key, eval_key = (jax.random.fold_in(jax.random.key(c.train.seed), i) for i in (0, 1))
    eos = s.tokenizer.eos_token_id
    chat, system = c.task.chat_template, c.task.system_prompt or None
    b, G = c.train.prompts_per_step, g.group_size
    weights = {"correctness": c.rewards.correctness, "format": c.rewards.format,
               "overlong": c.rewards.overlong}
    weights = {k: v for k, v in weights.items() if v > 0}

    def run_eval(step):
        return eval_lib.evaluate(
            s.model_config, state.params, s.tokenizer, s.task, key=jax.random.fold_in(eval_key, step),
            batch_size=c.train.eval_batch_size, max_prompt_length=c.sampling.max_prompt_length,
            max_new_tokens=c.sampling.max_new_tokens, put=s.put, pass_k=c.train.pass_k,
            temperature=c.sampling.temperature, chat=chat, system=system)

    if fresh and c.train.eval_every:
        log(0, run_eval(0))
    if fresh:
        ckpt.save(0, _checkpoint_tree(c, state, ref_params),
                  {"step": 0, "config_hash": cfg_lib.config_hash(c)}, force=True)

    done = 0
    for step in range(start, c.train.steps):
        if stop_after is not None and done >= stop_after:
            break
        t0 = time.perf_counter()
        examples = [s.task.train_example(step * b + i) for i in range(b)]
        ptok, pmask = tok_lib.encode_prompts(s.tokenizer, [s.task.prompt(e) for e in examples],
                                             max_length=c.sampling.max_prompt_length, chat=chat,
                                             system=system)
        ptok, pmask = np.repeat(ptok, G, axis=0), np.repeat(pmask, G, axis=0)  # [N, P] group-major
        ptok_d, pmask_d = s.put(ptok), s.put(pmask)
        rollout = sampling.sample(s.model_config, state.params, ptok_d, pmask_d, jax.random.fold_in(train_key, step),
                                  max_new_tokens=c.sampling.max_new_tokens, eos_id=eos,
                                  temperature=c.sampling.temperature, top_k=c.sampling.top_k,
                                  top_p=c.sampling.top_p)
        tokens, mask = eval_lib.to_host((rollout.tokens, rollout.mask))  # the one host round trip
        t1 = time.perf_counter()

        completions = tok_lib.decode_completions(s.tokenizer, tokens, mask, eos_id=eos)
        golds = [e for e in examples for _ in range(G)]
        lengths = mask.sum(axis=1)
        extra = {}
        if "overlong" in weights:
            extra["overlong"] = [rewards_lib.overlong_penalty(int(n), max_length=c.sampling.max_new_tokens,
                                                              cache_length=c.rewards.overlong_cache)
                                 for n in lengths]
        rewards, components, stats = rewards_lib.combine(
            completions, golds, weights=weights,
            verifiers={k: v for k, v in s.task.verifiers.items() if k in weights}, extra=extra,
            style=s.task.style, time_limit=c.rewards.timeout_seconds)
        advantages = adv_lib.group_advantages(jnp.asarray(rewards), G, scale=g.scale_rewards,
                                              eps=g.advantage_eps)
        t2 = time.perf_counter()

        batch = ts.Batch(ptok_d, pmask_d, rollout.tokens, rollout.mask, s.put(np.asarray(advantages)))
        state, step_metrics = step_fn(state, ref_params, batch, hp)
        grouped = np.asarray(rewards).reshape(b, G)
        host = {
            "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
            **{f"reward_{k}": float(np.mean(v)) for k, v in components.items()},
            "completion_length": float(lengths.mean()),
            "completion_length_max": float(lengths.max()),
            "zero_std_fraction": float(np.mean(grouped.std(axis=1) == 0)),
            "verifier_errors": stats["verifier_errors"], "verifier_timeouts": stats["verifier_timeouts"],
        }
        done += 1
        now = step + 1
        is_ckpt = c.train.checkpoint_every and now % c.train.checkpoint_every == 0 or now == c.train.steps
        if now % c.train.log_every == 0 or is_ckpt:
            fetched = metrics_lib.fetch(step_metrics)  # blocks: the update's time is in step_seconds
            t3 = time.perf_counter()
            if not math.isfinite(fetched["loss"]):
                last = ckpt.latest_step()
                raise FloatingPointError(
                    f"non-finite loss ({fetched['loss']}) at step {now}; stopped without saving. The last "
                    f"good checkpoint is step {last} in {workdir / 'checkpoints'}")
            row = {**host, **fetched, "sample_seconds": t1 - t0, "reward_seconds": t2 - t1,
                   "update_seconds": t3 - t2, "step_seconds": t3 - t0}
            if c.train.eval_every and (now % c.train.eval_every == 0 or now == c.train.steps):
                row |= run_eval(now)
            log(now, row)
            if c.train.samples_every and now % c.train.samples_every == 0:
                writer.write_text(now, "completion", f"{golds[0].prompt} -> {completions[0]!r} "
                                                     f"(reward {rewards[0]:.2f}, gold {golds[0].answer})")
        if is_ckpt:
            ckpt.save(now, _checkpoint_tree(c, state, ref_params),
                      {"step": now, "config_hash": cfg_lib.config_hash(c)}, force=True)
    ckpt.wait()
    ckpt.close()
    writer.close()
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        rows = run(argv)
    except cfg_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    evals = [r for r in rows if "eval_accuracy" in r]
    if evals and jax.process_index() == 0:  # one RESULT line per run, not per process
        print(f"RESULT eval_accuracy_first={evals[0]['eval_accuracy']:.4f} "
              f"eval_accuracy_last={evals[-1]['eval_accuracy']:.4f} steps={rows[-1]['step']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
