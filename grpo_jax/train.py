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
    train_records: list | None = None  # a dataset's training problems (None: a generated task)
    seed: int = 0


def _dataset_order(records, seed):
    """index -> record: a fresh permutation per epoch, a pure function of (seed, index)."""
    def get(index):
        epoch, i = divmod(index, len(records))
        return records[np.random.default_rng([seed, epoch]).permutation(len(records))[i]]
    return get


def normalized_problem(text: str) -> str:
    """Problem text for identity checks: case and whitespace folded."""
    return " ".join(text.lower().split())


def make_task(config: cfg_lib.Config) -> Task:
    """The task of `task.name`: training examples, held-out eval / validation sets, verifiers.

    Dataset tasks train on problems disjoint from the held-out ones, by normalised problem text:
    MATH-500 evaluates on MATH-500 and trains on the MATH release minus MATH-500
    (`task.train_data_path`); any training problem whose text also appears held out is dropped.
    """
    t, seed = config.task, config.train.seed
    style = t.prompt_style
    correct = lambda c, e: rewards_lib.correctness(c, e.answer, style=style)  # noqa: E731
    train_records = None
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
        for key in ("data_path", "train_data_path"):
            value = getattr(t, key)
            if value and not pathlib.Path(value).exists():
                raise cfg_lib.ConfigError(f"config key `task.{key}`: {value!r} does not exist")
        path = pathlib.Path(t.data_path)
        if t.name == "gsm8k":
            train_records, held_out = gsm8k.load(path, t.train_split), gsm8k.load(path, t.eval_split)
        elif t.name == "math500":
            # MATH-500 is an eval set: train on the MATH problems not in it (PRM800K's split).
            held_out = math500.load(path, t.eval_split)
            train_records = math500.load_train(t.train_data_path, path)
            correct = lambda c, e: rewards_lib.math_reward(c, e.answer, style=style)  # noqa: E731
        else:  # svamp: one file, split by the held-out hash of each problem
            records = svamp.load(path)
            from grpo_jax.tasks import in_eval_split
            held_out = [r for r in records if in_eval_split(("svamp", r.prompt))]
            train_records = [r for r in records if not in_eval_split(("svamp", r.prompt))]
        seen = {normalized_problem(e.prompt) for e in held_out}
        train_records = [r for r in train_records if normalized_problem(r.prompt) not in seen]
        if not train_records:
            raise cfg_lib.ConfigError(f"config key `task.data_path`: no training problems left for task "
                                      f"{t.name!r} after removing those in the eval split")
        train = _dataset_order(train_records, seed)
    # The first eval_size held-out problems are reported; the next validation_size steer SFT.
    size = t.eval_size or len(held_out)
    evals, validation = held_out[:size], held_out[size: size + config.sft.validation_size]
    return Task(style=style, train_example=train, eval_examples=evals, validation_examples=validation,
                prompt=(lambda e: prompts.format_prompt(e.prompt, style=style)) if t.instruction
                else (lambda e: e.prompt), correct=correct,
                verifiers={"correctness": correct,
                           "format": lambda c, e: rewards_lib.format_reward(c, style=style)},
                train_records=train_records, seed=seed)


def fit_prompts(task: Task, tokenizer, config: cfg_lib.Config) -> tuple[Task, dict]:
    """Drops the problems whose prompt (as the sampler will see it: instruction, chat template)
    is longer than `sampling.max_prompt_length` tokens, once, at data load, so that no step can
    meet one mid-run. Returns the task and the counts dropped (`prompts_dropped_train`,
    `prompts_dropped_eval`). A generated task cannot be filtered (its stream is endless): its first
    64 prompts must fit, or it is an error naming the key."""
    limit = config.sampling.max_prompt_length
    chat, system = config.task.chat_template, config.task.system_prompt or None

    def lengths(examples):
        texts = [task.prompt(e) for e in examples]
        return [len(ids) for ids in tok_lib.prompt_ids(tokenizer, texts, chat=chat, system=system)]

    def fits(examples):
        return [e for e, n in zip(examples, lengths(examples)) if n <= limit]

    counts = {"prompts_dropped_train": 0}
    if task.train_records is not None:
        keep = fits(task.train_records)
        counts["prompts_dropped_train"] = len(task.train_records) - len(keep)
        if not keep:
            raise cfg_lib.ConfigError(
                f"config key `sampling.max_prompt_length` = {limit} is invalid: all "
                f"{len(task.train_records)} training prompts are longer (the shortest has "
                f"{min(lengths(task.train_records))} tokens)")
        task = task._replace(train_records=keep, train_example=_dataset_order(keep, task.seed))
    else:
        longest = max(lengths([task.train_example(i) for i in range(64)]))
        if longest > limit:
            raise cfg_lib.ConfigError(
                f"config key `sampling.max_prompt_length` = {limit} is invalid: the task's prompts "
                f"have up to {longest} tokens")
    evals, validation = fits(task.eval_examples), fits(task.validation_examples)
    counts["prompts_dropped_eval"] = (len(task.eval_examples) - len(evals)
                                      + len(task.validation_examples) - len(validation))
    if not evals and task.eval_examples:
        raise cfg_lib.ConfigError(f"config key `sampling.max_prompt_length` = {limit} is invalid: every "
                                  f"eval prompt is longer")
    if counts["prompts_dropped_train"] or counts["prompts_dropped_eval"]:
        print(f"dropped prompts longer than sampling.max_prompt_length={limit} tokens: "
              f"{counts['prompts_dropped_train']} training, {counts['prompts_dropped_eval']} held-out",
              file=sys.stderr)
    return task._replace(eval_examples=evals, validation_examples=validation), counts


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
    eos_ids: tuple  # every id that ends a completion (tokenizer.eos_token_ids)
    prompt_counts: dict  # prompts dropped at data load for being too long (fit_prompts)


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
        dtypes = dict(dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), mesh=mesh)
        if path.suffix == ".gguf":
            return weights.load_gguf(path, **dtypes)
        return weights.load_hf(path, **dtypes)
    vocab = m.vocab_size or len(tokenizer)
    if vocab < len(tokenizer):
        raise cfg_lib.ConfigError(f"config key `model.vocab_size` = {vocab} is smaller than the "
                                  f"tokenizer's {len(tokenizer)} tokens")
    mc = model_lib.ModelConfig(
        vocab_size=vocab, hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, intermediate_size=m.intermediate_size,
        rope_theta=m.rope_theta, rms_norm_eps=m.rms_norm_eps, tie_embeddings=m.tie_embeddings,
        attention_bias=m.attention_bias, max_position_embeddings=m.max_position_embeddings, dtype=m.dtype,
        param_dtype=m.param_dtype)
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
    task, prompt_counts = fit_prompts(task, tokenizer, config)
    eos_ids = tok_lib.eos_token_ids(tokenizer, config.model.path or None)
    model_config, params = build_model(config, tokenizer, mesh)
    step = 0
    ckpt_dir = workdir / "checkpoints"
    if for_eval and ckpt_dir.exists():
        with ckpt_lib.Checkpointer(ckpt_dir) as ckpt:
            if ckpt.latest_step() is not None:
                target = _checkpoint_tree(config, ts.init_state(params, make_optimizer(config), mesh),
                                          reference_params(model_config, params))
                restored, _ = ckpt.restore(ckpt_lib.abstract_like(target))
                params, step = restored["train"].params, ckpt.latest_step()
    return Setup(config, workdir, mesh, make_put(mesh), tokenizer, model_config, params, task, step,
                 eos_ids, prompt_counts)


def make_optimizer(c: cfg_lib.Config):
    return ts.make_optimizer(
        learning_rate=c.optim.learning_rate, max_grad_norm=c.optim.max_grad_norm, b1=c.optim.b1,
        b2=c.optim.b2, weight_decay=c.optim.weight_decay, warmup_steps=c.optim.warmup_steps,
        schedule=c.optim.schedule,
        total_steps=c.train.steps * c.grpo.num_iterations * c.train.steps_per_generation)


def reference_params(model_config: model_lib.ModelConfig, params):
    """The frozen reference policy: a copy of `params` stored in the compute dtype (it is only
    ever read by forwards that cast to that dtype anyway, so this changes no number)."""
    if model_config.param_dtype == model_config.dtype:
        return jax.tree.map(jnp.copy, params)
    return model_lib.cast_params(params, jnp.dtype(model_config.dtype))


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
            put=s.put, chat=c.task.chat_template, system=c.task.system_prompt,
            eos_ids=s.eos_ids)["eval_accuracy"]
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


class Generation(NamedTuple):
    """One sampled and scored batch, on the host, identical on every process."""
    examples: list  # B Examples
    prompt_tokens: np.ndarray  # i32[N, P] left-padded, group-major (N = B*G)
    prompt_mask: np.ndarray  # i32[N, P]
    tokens: np.ndarray  # i32[N, T]
    mask: np.ndarray  # f32[N, T] 1 through the first EOS
    rewards: np.ndarray  # f32[N]
    components: dict  # name -> f32[N], unweighted
    stats: dict  # verifier_errors, verifier_timeouts
    completions: list  # N strings (process 0; empty strings elsewhere)


def score(s: Setup, completions_fn: Callable[[], list], golds, lengths, weights) -> tuple:
    """Rewards of N completions: (f32[N], {name: f32[N]}, stats), the same on every process.

    Verifiers run on process 0 only and the numbers are broadcast: scored independently on each
    host, a verifier's wall-clock time limit could let two hosts disagree, and the sharded update
    would silently mix their advantages. `completions_fn` decodes the texts (process 0 needs them).
    """
    c = s.config
    names = list(weights)
    n = len(golds)
    if jax.process_index() == 0:
        completions = completions_fn()
        extra = {}
        if "overlong" in weights:
            extra["overlong"] = [rewards_lib.overlong_penalty(int(k), max_length=c.sampling.max_new_tokens,
                                                              cache_length=c.rewards.overlong_cache)
                                 for k in lengths]
        rewards, components, stats = rewards_lib.combine(
            completions, golds, weights=weights,
            verifiers={k: v for k, v in s.task.verifiers.items() if k in weights}, extra=extra,
            style=s.task.style, time_limit=c.rewards.timeout_seconds)
        packed = np.stack([rewards, *(components[k] for k in names),
                           np.full(n, stats["verifier_errors"]), np.full(n, stats["verifier_timeouts"])], 1)
    else:
        completions = [""] * n
        packed = np.zeros((n, len(names) + 3), np.float32)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        packed = np.asarray(multihost_utils.broadcast_one_to_all(packed.astype(np.float32)))
    packed = packed.astype(np.float32)
    components = {k: packed[:, 1 + i] for i, k in enumerate(names)}
    stats = {"verifier_errors": float(packed[0, -2]), "verifier_timeouts": float(packed[0, -1])}
    return packed[:, 0], components, stats, completions


def generate(s: Setup, params, examples, key, weights) -> Generation:
    """Sample G completions for each example (one jitted, sharded sampler call) and score them."""
    c, G = s.config, s.config.grpo.group_size
    chat, system = c.task.chat_template, c.task.system_prompt or None
    ptok, pmask = tok_lib.encode_prompts(s.tokenizer, [s.task.prompt(e) for e in examples],
                                         max_length=c.sampling.max_prompt_length, chat=chat, system=system)
    ptok, pmask = np.repeat(ptok, G, axis=0), np.repeat(pmask, G, axis=0)  # [N, P] group-major
    rollout = sampling.sample(s.model_config, params, s.put(ptok), s.put(pmask), key,
                              max_new_tokens=c.sampling.max_new_tokens, eos_id=s.eos_ids,
                              temperature=c.sampling.temperature, top_k=c.sampling.top_k,
                              top_p=c.sampling.top_p)
    tokens, mask = eval_lib.to_host((rollout.tokens, rollout.mask))  # the one host round trip
    golds = [e for e in examples for _ in range(G)]
    rewards, components, stats, completions = score(
        s, lambda: tok_lib.decode_completions(s.tokenizer, tokens, mask, eos_id=s.eos_ids), golds,
        mask.sum(axis=1), weights)
    return Generation(examples, ptok, pmask, np.asarray(tokens), np.asarray(mask, np.float32), rewards,
                      components, stats, completions)


def collect(s: Setup, params, step: int, train_key, weights) -> tuple[Generation, np.ndarray, dict]:
    """Step `step`'s batch of B groups: (Generation, row_valid f32[N], metrics).

    Plain GRPO: prompts [step*B, (step+1)*B) of the data order, one sampler call, every row valid.
    DAPO dynamic sampling (`grpo.dynamic_sampling`): round r samples B' = ceil(B * factor) prompts
    (indices (step*R + r)*B' .., R = max rounds, so a step's data stays a pure function of the step
    and resume is exact), keeps the groups whose rewards are not all equal, in order, until B are
    kept. After R rounds a batch still short is filled with copies of a sampled group whose rows are
    marked invalid (row_valid 0: no advantage, no loss), so every shape stays static.
    """
    c = s.config
    b, G, g = c.train.prompts_per_step, c.grpo.group_size, c.grpo
    if not g.dynamic_sampling:
        examples = [s.task.train_example(step * b + i) for i in range(b)]
        gen = generate(s, params, examples, jax.random.fold_in(train_key, step), weights)
        return gen, np.ones(b * G, np.float32), {}
    per_round, rounds = math.ceil(b * g.dynamic_sampling_factor), g.dynamic_sampling_max_rounds
    kept, sampled = [], []  # kept: (generation, group index) in sampling order
    for r in range(rounds):
        start = (step * rounds + r) * per_round
        examples = [s.task.train_example(start + i) for i in range(per_round)]
        gen = generate(s, params, examples, jax.random.fold_in(jax.random.fold_in(train_key, step), r), weights)
        sampled.append(gen)
        grouped = gen.rewards.reshape(per_round, G)
        signal = grouped.max(axis=1) != grouped.min(axis=1)
        kept += [(gen, i) for i in np.flatnonzero(signal)]
        if len(kept) >= b:
            break
    kept = kept[:b]
    filler = [(sampled[-1], 0)] * (b - len(kept))  # invalid rows: any real tokens will do

    def rows(field):
        return np.concatenate([getattr(gen, field)[i * G:(i + 1) * G] for gen, i in kept + filler], axis=0)

    valid = np.repeat(np.arange(b) < len(kept), G).astype(np.float32)
    batch = Generation(
        [gen.examples[i] for gen, i in kept + filler], rows("prompt_tokens"), rows("prompt_mask"),
        rows("tokens"), rows("mask"), rows("rewards"), {k: rows_k for k, rows_k in
                                                        ((k, np.concatenate([x.components[k] for x in sampled]))
                                                         for k in sampled[0].components)},
        {k: sum(x.stats[k] for x in sampled) for k in sampled[0].stats},
        sum(([x.completions[i * G:(i + 1) * G] for x, i in kept + filler]), []))
    total = sum(len(x.examples) for x in sampled)
    metrics = {"dynamic_rounds": float(len(sampled)),
               "dynamic_kept_fraction": float(np.mean(np.concatenate(
                   [x.rewards.reshape(-1, G).max(1) != x.rewards.reshape(-1, G).min(1) for x in sampled]))),
               "dynamic_filled_fraction": len(kept) / b,
               "dynamic_extra_samples": float((total - b) * G),
               # What the policy scored on everything it sampled (the batch itself is filtered).
               "reward_mean": float(np.mean(np.concatenate([x.rewards for x in sampled]))),
               "reward_std": float(np.std(np.concatenate([x.rewards for x in sampled])))}
    metrics["zero_std_fraction"] = 1.0 - metrics["dynamic_kept_fraction"]
    return batch, valid, metrics


def update_inputs(c: cfg_lib.Config, gen: Generation, valid: np.ndarray, eos_ids) -> tuple:
    """(advantages f32[N], loss mask f32[N, T], ended bool[N]) for the update.

    Advantages are group-relative over the valid rows (`valid` from `collect`); a row ended iff it
    emitted one of `eos_ids`, else it hit max_new_tokens (truncated). The loss mask is the sampler's
    completion mask on valid rows, and with `grpo.mask_truncated_completions` (DAPO overlong
    filtering) 0 on truncated rows too: their reward still counts in their group's advantages.
    """
    g = c.grpo
    advantages = adv_lib.group_advantages(jnp.asarray(gen.rewards), g.group_size, scale=g.scale_rewards,
                                          eps=g.advantage_eps,
                                          mask=jnp.asarray(valid) if g.dynamic_sampling else None)
    ended = (np.isin(gen.tokens, np.asarray(eos_ids)) & (gen.mask > 0)).any(axis=1)  # [N]
    loss_mask = gen.mask * valid[:, None]
    if g.mask_truncated_completions:
        loss_mask = loss_mask * ended[:, None]
    return np.asarray(advantages), loss_mask.astype(np.float32), ended


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
    ref_params = reference_params(s.model_config, params) if use_reference else None
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
                            num_minibatches=c.train.num_minibatches,
                            steps_per_generation=c.train.steps_per_generation, use_reference=use_reference,
                            max_completion_length=c.sampling.max_new_tokens),
        s.mesh, state_sh, ref_sh)
    hp = ts.make_hparams(epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                         temperature=c.sampling.temperature)
    # Two independent streams: step t samples with fold_in(train_key, t), eval at t with fold_in(eval_key, t).
    train_key, eval_key = (jax.random.fold_in(jax.random.key(c.train.seed), i) for i in (0, 1))
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
            temperature=c.sampling.temperature, chat=chat, system=system, eos_ids=s.eos_ids)

    if fresh:
        log(0, {k: float(v) for k, v in s.prompt_counts.items()} | (run_eval(0) if c.train.eval_every else {}))
        ckpt.save(0, _checkpoint_tree(c, state, ref_params),
                  {"step": 0, "config_hash": cfg_lib.config_hash(c)}, force=True)

    done = 0
    for step in range(start, c.train.steps):
        if stop_after is not None and done >= stop_after:
            break
        t0 = time.perf_counter()
        gen, valid, sampled_metrics = collect(s, state.params, step, train_key, weights)
        t1 = time.perf_counter()
        advantages, loss_mask, ended = update_inputs(c, gen, valid, s.eos_ids)
        t2 = time.perf_counter()

        put = s.put
        batch = ts.Batch(put(gen.prompt_tokens), put(gen.prompt_mask), put(gen.tokens),
                         put(loss_mask), put(advantages))
        state, step_metrics = step_fn(state, ref_params, batch, hp)
        lengths = gen.mask.sum(axis=1)
        grouped = gen.rewards.reshape(b, G)
        host = {
            "reward_mean": float(np.mean(gen.rewards)), "reward_std": float(np.std(gen.rewards)),
            **{f"reward_{k}": float(np.mean(v)) for k, v in gen.components.items()},
            "completion_length": float(lengths.mean()),
            "completion_length_max": float(lengths.max()),
            "truncated_fraction": float(np.mean(~ended)),
            "zero_std_fraction": float(np.mean(grouped.std(axis=1) == 0)),
            "verifier_errors": gen.stats["verifier_errors"], "verifier_timeouts": gen.stats["verifier_timeouts"],
        } | sampled_metrics  # dynamic sampling: reward statistics over everything it sampled
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
                e = gen.examples[0]
                writer.write_text(now, "completion", f"{e.prompt} -> {gen.completions[0]!r} "
                                                     f"(reward {gen.rewards[0]:.2f}, gold {e.answer})")
        if is_ckpt:
            ckpt.save(now, _checkpoint_tree(c, state, ref_params),
                      {"step": now, "config_hash": cfg_lib.config_hash(c)}, force=True)
    ckpt.wait()
    ckpt.close()
    writer.close()
    return rows


def initialize_distributed(argv: list) -> list:
    """Starts `jax.distributed` when this program is one of several processes, and returns argv
    without the flags it read.

    Flags `--coordinator_address HOST:PORT --num_processes N --process_id I` (or the environment
    variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) start it explicitly;
    without them, a cluster that JAX detects by itself (a multi-host Cloud TPU VM, SLURM, Open MPI,
    Kubernetes) starts it with no arguments. Otherwise it is one process, as before.
    """
    flags, rest, args = {}, [], list(argv)
    names = ("--coordinator_address", "--num_processes", "--process_id")
    while args:
        arg = args.pop(0)
        name = arg.split("=", 1)[0]
        if name in names:
            if "=" in arg:
                flags[name[2:]] = arg.split("=", 1)[1]
            elif args:
                flags[name[2:]] = args.pop(0)
            else:
                raise cfg_lib.ConfigError(f"{arg} needs a value")
        else:
            rest.append(arg)
    for name in ("coordinator_address", "num_processes", "process_id"):
        value = flags.get(name) or os.environ.get(f"JAX_{name.upper()}")
        if value is not None:
            flags[name] = value if name == "coordinator_address" else int(value)
    try:
        from jax._src import distributed
        if distributed.global_state.client is not None:  # started already (a second run in-process)
            return rest
    except (ImportError, AttributeError):
        pass
    if flags:
        if jax.config.jax_platforms == "cpu" or os.environ.get("JAX_PLATFORMS") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU has no other
        jax.distributed.initialize(**flags)
    else:
        try:
            from jax._src import clusters
            detected = [env.__name__ for env in clusters.ClusterEnv._cluster_types
                        if not env.opt_in_only_method and env.is_env_present()]
        except Exception:  # a private API: if it moved, fall back to one process
            detected = []
        if detected:
            jax.distributed.initialize()
    return rest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        argv = initialize_distributed(argv)
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
