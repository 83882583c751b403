"""One GRPO step's batch, on the host: sample, decode, score, and (DAPO) keep only groups with signal.

    generate   B prompts x G completions: jitted, sharded sampler calls (`sampling.sample`, with the
               `sampling.engine` decode engine) over chunks of `sampling.batch_size` rows
               (`sample_rows`), one host round trip each, then the verifiers (`score`)
    score      rewards on process 0 only, broadcast to every process: scored independently on each
               host, a verifier's wall-clock limit could let two hosts disagree, and the sharded
               update would silently mix their advantages
    collect    the step's batch: prompts [step*B, (step+1)*B) of the data order, or with
               `grpo.dynamic_sampling` rounds of over-sampling until B groups with signal (by
               `grpo.dynamic_sampling_metric`: accuracy by default) are kept
               (static shapes: a short batch is filled with rows marked invalid)
    update_inputs  advantages (over the valid rows), the loss mask (`grpo.mask_truncated_completions`)
    batch_metrics, group_detail  what a step logs about its batch: scalars for metrics.jsonl, per-group
               arrays for groups.jsonl (the trainer and the sweep log the same)

Every process computes the same batch: data order and sampling keys are pure functions of the step,
and the rewards are broadcast, so resuming from a checkpoint and multi-host runs stay exact.
"""
from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from grpo_jax import ConfigError
from grpo_jax import advantages as adv_lib
from grpo_jax import buckets
from grpo_jax import evaluate as eval_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import sampling
from grpo_jax import tokenizer as tok_lib
from grpo_jax.build import Setup


class Generation(NamedTuple):
    """One sampled and scored batch, on the host, identical on every process."""
    examples: list  # B Examples
    # i32[N, P] left-padded, group-major (N = B*G); train.length_buckets: P cut to the batch's bucket
    prompt_tokens: np.ndarray
    prompt_mask: np.ndarray  # i32[N, P]
    tokens: np.ndarray  # i32[N, T]
    mask: np.ndarray  # f32[N, T] 1 through the first EOS
    rewards: np.ndarray  # f32[N]
    components: dict  # name -> f32[N], unweighted
    stats: dict  # verifier_errors, verifier_timeouts; sample_seconds, reward_seconds (this host's wall time)
    completions: list  # N strings (process 0; empty strings elsewhere)


def score(s: Setup, completions_fn: Callable[[], list], golds, lengths) -> tuple:
    """Rewards of N completions: (f32[N], {name: f32[N]}, stats), the same on every process.

    Verifiers run on process 0 only and the numbers are broadcast: scored independently on each
    host, a verifier's wall-clock time limit could let two hosts disagree, and the sharded update
    would silently mix their advantages. `completions_fn` decodes the texts (process 0 needs them).
    """
    c = s.config
    weights = {k: w for k, w in c.rewards.weights.items() if w > 0}
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
            verifiers=s.verifiers, extra=extra,
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
    components = {rewards_lib.metric_name(k): packed[:, 1 + i] for i, k in enumerate(names)}
    stats = {"verifier_errors": float(packed[0, -2]), "verifier_timeouts": float(packed[0, -1])}
    return packed[:, 0], components, stats, completions


def sample_rows(s: Setup, params, ptok: np.ndarray, pmask: np.ndarray, key) -> tuple[np.ndarray, np.ndarray]:
    """(tokens i32[N, T], mask f32[N, T]) on the host for N group-major prompt rows [N, P], sampled in
    chunks of `sampling.batch_size` rows (whole groups), so the KV cache holds one chunk's rows.

    Every chunk has the same shapes: one compiled sampler program for all of them. Chunk i draws with
    fold_in(key, i), a pure function of the step's key (resume stays exact); a single chunk
    (batch_size 0, or the whole batch) draws with `key` itself, the call as it was before chunks.
    Chunk i + 1 is dispatched before chunk i is fetched, so the transfer overlaps the next decode,
    and at most two are in flight (blocking on each result also keeps 8 simulated CPU devices out of
    the collective deadlock of never-blocking dispatch, ENVIRONMENT.md).
    """
    c, n = s.config, ptok.shape[0]
    rows = c.sampling.batch_size or n
    if n % rows or rows % c.grpo.group_size:
        raise ConfigError(f"config key `sampling.batch_size` = {c.sampling.batch_size}: must be whole groups "
                          f"of grpo.group_size = {c.grpo.group_size} dividing the {n} rows of this sampler call")
    chunks = n // rows

    def launch(i):
        part = slice(i * rows, (i + 1) * rows)
        rollout = sampling.sample(s.model_config, params, s.put(ptok[part]), s.put(pmask[part]),
                                  key if chunks == 1 else jax.random.fold_in(key, i),
                                  max_new_tokens=c.sampling.max_new_tokens, eos_id=s.eos_ids,
                                  temperature=c.sampling.temperature, top_k=c.sampling.top_k,
                                  top_p=c.sampling.top_p, min_p=c.sampling.min_p,
                                  weight_layout=c.sampling.weight_layout,
                                  group_size=c.grpo.group_size, logps=False,  # one prefill per prompt
                                  **eval_lib.engine_options(c, rows))  # sampling.engine: the same samples
        return rollout.tokens, rollout.mask  # training rescores: no sampler log-probs

    parts, pending = [], launch(0)
    for i in range(chunks):
        following = launch(i + 1) if i + 1 < chunks else None
        parts.append(eval_lib.to_host(pending))  # this chunk's host round trip
        pending = following
    if chunks == 1:
        return parts[0]
    return tuple(np.concatenate([part[j] for part in parts], axis=0) for j in (0, 1))


def generate(s: Setup, params, examples, key) -> Generation:
    """Sample G completions for each example (`sample_rows`: sampler calls over chunks of
    sampling.batch_size rows) and score them."""
    started = time.perf_counter()
    c, G = s.config, s.config.grpo.group_size
    chat, system = c.task.chat_template, c.task.system_prompt or None
    ptok, pmask = tok_lib.encode_prompts(s.tokenizer, [s.task.prompt(e) for e in examples],
                                         max_length=c.sampling.max_prompt_length, chat=chat, system=system)
    if c.train.length_buckets:  # cut to the batch's longest prompt, rounded up to a bucket (buckets.py)
        ptok, pmask = buckets.trim_prompts(ptok, pmask)
    ptok, pmask = np.repeat(ptok, G, axis=0), np.repeat(pmask, G, axis=0)  # [N, P] group-major
    tokens, mask = sample_rows(s, params, ptok, pmask, key)
    sampled_at = time.perf_counter()
    golds = [e for e in examples for _ in range(G)]
    rewards, components, stats, completions = score(
        s, lambda: tok_lib.decode_completions(s.tokenizer, tokens, mask, eos_id=s.eos_ids), golds,
        mask.sum(axis=1))
    stats |= {"sample_seconds": sampled_at - started, "reward_seconds": time.perf_counter() - sampled_at}
    return Generation(examples, ptok, pmask, np.asarray(tokens), np.asarray(mask, np.float32), rewards,
                      components, stats, completions)


def signal_values(c, gen: Generation) -> np.ndarray:
    """f32[N]: what `grpo.dynamic_sampling_metric` says a group's signal is measured on: the total
    reward ("reward") or one reward's unweighted values (default "correctness": accuracy, as DAPO and
    verl filter). Falls back to the total reward when that reward is not computed (not weighted; only
    possible without dynamic sampling, which validation checks)."""
    name = c.grpo.dynamic_sampling_metric
    if name == "reward":
        return gen.rewards
    return gen.components.get(rewards_lib.metric_name(name), gen.rewards)


def tied_groups(values: np.ndarray, group_size: int) -> np.ndarray:
    """bool[B]: the groups whose `values` (f32[B*G], group-major) are all equal: no signal."""
    grouped = values.reshape(-1, group_size)
    return grouped.max(axis=1) == grouped.min(axis=1)


def collect(s: Setup, params, step: int, train_key) -> tuple[Generation, np.ndarray, dict]:
    """Step `step`'s batch of B groups: (Generation, row_valid f32[N], metrics).

    Plain GRPO: prompts [step*B, (step+1)*B) of the data order, one sampler call, every row valid.
    DAPO dynamic sampling (`grpo.dynamic_sampling`): round r samples B' = ceil(B * factor) prompts
    (indices (step*R + r)*B' .., R = max rounds, so a step's data stays a pure function of the step
    and resume is exact), keeps the groups whose `grpo.dynamic_sampling_metric` (default:
    correctness, as DAPO and verl filter) is not all equal, in order, until B are kept. After R rounds
    a batch still short is filled with copies of a sampled group whose rows are marked invalid
    (row_valid 0: no advantage, no loss, and no place in any loss denominator), so every shape stays
    static.
    """
    c = s.config
    b, G, g = c.train.prompts_per_step, c.grpo.group_size, c.grpo
    if not g.dynamic_sampling:
        examples = [s.task.train_example(step * b + i) for i in range(b)]
        gen = generate(s, params, examples, jax.random.fold_in(train_key, step))
        return gen, np.ones(b * G, np.float32), {}
    per_round, rounds = math.ceil(b * g.dynamic_sampling_factor), g.dynamic_sampling_max_rounds
    kept, sampled = [], []  # kept: (generation, group index) in sampling order
    for r in range(rounds):
        start = (step * rounds + r) * per_round
        examples = [s.task.train_example(start + i) for i in range(per_round)]
        gen = generate(s, params, examples, jax.random.fold_in(jax.random.fold_in(train_key, step), r))
        sampled.append(gen)
        signal = ~tied_groups(signal_values(c, gen), G)  # accuracy differs, not just shaping terms
        kept += [(gen, i) for i in np.flatnonzero(signal)]
        if len(kept) >= b:
            break
    kept = kept[:b]
    filler = [(sampled[-1], 0)] * (b - len(kept))  # invalid rows: any real tokens will do

    def rows(field):
        parts = [getattr(gen, field)[i * G:(i + 1) * G] for gen, i in kept + filler]
        if field.startswith("prompt_"):  # rounds may have cut prompts to different buckets
            parts = [buckets.left_pad(x, max(y.shape[1] for y in parts)) for x in parts]
        return np.concatenate(parts, axis=0)

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
               "dynamic_kept_fraction": float(np.mean(np.concatenate(  # groups with a signal
                   [~tied_groups(signal_values(c, x), G) for x in sampled]))),
               "dynamic_filled_fraction": len(kept) / b,
               "dynamic_extra_samples": float((total - b) * G),
               # What the policy scored on everything it sampled (the batch itself is filtered).
               "reward_mean": float(np.mean(np.concatenate([x.rewards for x in sampled]))),
               "reward_std": float(np.std(np.concatenate([x.rewards for x in sampled])))}
    metrics["zero_std_fraction"] = 1.0 - metrics["dynamic_kept_fraction"]
    return batch, valid, metrics


def update_inputs(c, gen: Generation, valid: np.ndarray, eos_ids) -> tuple:
    """(advantages f32[N], loss mask f32[N, T], ended bool[N]) for the update.

    Advantages are group-relative over the valid rows (`valid` from `collect`): `advantages.compute`
    with grpo.advantage_estimator (reinforce_pp whitens over the loss mask's tokens), or with
    grpo.multi_objective_aggregation=normalize_then_sum `advantages.gdpo` over the unweighted
    per-reward components (`gen.components`) and their rewards.weights. A row ended iff it emitted one
    of `eos_ids`, else it hit max_new_tokens (truncated). The loss mask is the sampler's completion
    mask on valid rows, and with `grpo.mask_truncated_completions` (DAPO overlong filtering) 0 on
    truncated rows too: their reward still counts in their group's advantages.
    """
    g = c.grpo
    ended = (np.isin(gen.tokens, np.asarray(eos_ids)) & (gen.mask > 0)).any(axis=1)  # [N]
    loss_mask = gen.mask * valid[:, None]
    if g.mask_truncated_completions:
        loss_mask = loss_mask * ended[:, None]
    mask = jnp.asarray(valid) if g.dynamic_sampling else None
    if g.multi_objective_aggregation == "normalize_then_sum":
        weights = {k: w for k, w in c.rewards.weights.items() if w > 0}  # the components `score` keeps
        columns = np.stack([gen.components[rewards_lib.metric_name(k)] for k in weights], axis=1)  # [N, R]
        advantages = adv_lib.gdpo(jnp.asarray(columns), jnp.asarray(list(weights.values()), jnp.float32),
                                  g.group_size, eps=g.advantage_eps, mask=mask)
    else:
        advantages = adv_lib.compute(jnp.asarray(gen.rewards), g.group_size, estimator=g.advantage_estimator,
                                     scale=g.scale_rewards, eps=g.advantage_eps, mask=mask,
                                     lengths=jnp.asarray(loss_mask.sum(axis=1), jnp.float32))
    return np.asarray(advantages), loss_mask.astype(np.float32), ended


def batch_metrics(c, gen: Generation, ended: np.ndarray, *, update_prompt_width: int,
                  update_completion_width: int) -> dict:
    """The step's scalars about its batch (metrics.jsonl): rewards, lengths, truncation, groups without
    a signal (`grpo.dynamic_sampling_metric`: accuracy by default) and without any reward difference
    at all (shaping terms included), verifier failures. `gen` holds groups of grpo.group_size rows (a
    sweep cell passes the rows it uses)."""
    G = c.grpo.group_size
    rewards, lengths = gen.rewards, gen.mask.sum(axis=1)
    return {
        "reward_mean": float(np.mean(rewards)), "reward_std": float(np.std(rewards)),
        **{k: float(np.mean(v)) for k, v in gen.components.items()},  # reward_<name>, unweighted
        "completion_length": float(lengths.mean()),
        "completion_length_max": float(lengths.max()),
        "prompt_length_max": float(gen.prompt_mask.sum(axis=1).max()),
        # the update's widths: the buckets with train.length_buckets, else the configured maxima
        "update_prompt_width": float(update_prompt_width), "update_completion_width": float(update_completion_width),
        "truncated_fraction": float(np.mean(~ended)),
        "zero_std_fraction": float(np.mean(tied_groups(signal_values(c, gen), G))),
        "reward_zero_std_fraction": float(np.mean(rewards.reshape(-1, G).std(axis=1) == 0)),
        "verifier_errors": gen.stats["verifier_errors"], "verifier_timeouts": gen.stats["verifier_timeouts"],
    }


def group_detail(gen: Generation, advantages: np.ndarray, valid: np.ndarray, *, group_size: int,
                 clipped: np.ndarray | None = None, loss_mask: np.ndarray | None = None, passes: int = 1) -> dict:
    """Per-group statistics of one step (groups.jsonl, read by `grpo_jax.report`): each group's mean
    and std of the total reward (its difficulty for the policy, and whether it carries a signal), and
    the Pearson correlation over the batch's rows between advantage and completion length (None when
    either is constant): a positive one means longer answers are being reinforced. `valid`: the rows
    that carry a loss (dynamic sampling's fill rows do not).
    `clipped` f32[N] (the step's clipped tokens per row over its `passes` = grpo.num_iterations passes,
    `train_step.pop_row_metrics`) and the update's `loss_mask` [N, T] add each group's clip rate:
    clipped tokens / (its loss tokens x passes)."""
    keep = valid > 0
    per_group = keep.reshape(-1, group_size)
    groups = per_group.any(axis=1)
    g = int(per_group[groups][0].sum()) if groups.any() else group_size
    rewards = gen.rewards.reshape(-1, group_size)[per_group].reshape(-1, g)
    lengths, adv = gen.mask.sum(axis=1)[keep], np.asarray(advantages)[keep]
    corr = None
    if lengths.size > 1 and lengths.std() > 0 and adv.std() > 0:
        corr = float(np.corrcoef(adv, lengths)[0, 1])
    out = {"reward_mean": rewards.mean(axis=1), "reward_std": rewards.std(axis=1), "adv_length_corr": corr}
    if clipped is not None:
        tokens = (np.asarray(loss_mask).sum(axis=1) * keep).reshape(-1, group_size)[groups].sum(axis=1)
        hits = (np.asarray(clipped) * keep).reshape(-1, group_size)[groups].sum(axis=1)
        out["clip_fraction"] = hits / np.maximum(tokens * passes, 1.0)
    return out
