"""The one jitted, sharded GRPO update step.

Given a sampled batch (N = B*G completions with their advantages), one call does

    for iteration in range(mu):                        # grpo.num_iterations
        for k in range(K):                             # train.steps_per_generation
            rows_k = every K-th row of the batch, starting at k          (N/K rows)
            grads = sum over accumulation chunks m of rows_k: w_m * grad loss_m(theta)
            theta = optax_update(clip_by_global_norm(grads))

where loss_m = grpo_loss(logps, old_logps, ref_logps, advantages, mask) on chunk m and w_m weighs
the chunk so that the sum equals the loss of the K-th part under the chosen aggregation (1/M for
"grpo" and "dr_grpo"; the chunk's share of the part's completion tokens for "bnpo"). K > 1 is the
PPO-style minibatch schedule of TRL's `steps_per_generation`, verl's ppo_mini_batch_size and the
R1 / DAPO / GSPO runs (several optimizer steps per rollout); M (train.num_minibatches) is plain
gradient accumulation and changes nothing but memory.

old_logps are those of the sampling policy (the params this call starts from). Where the params
have not moved yet (the first optimizer step of the first iteration) they are the policy's own
log-probs under stop_gradient: the ratio there is exactly 1 (not 1 +- the float noise between the
sampler's KV-cache path and this full forward). When K > 1, the later parts are scored once by a
forward pass with the starting params before any update; for mu > 1 the later iterations reuse
the saved values (no extra forward). So with K = 1 the step is exactly what it was before K
existed, and with K > 1 the ratio leaves 1 from the second optimizer step on (the clip acts).
ref_logps come from the frozen reference params, computed once per batch, and are skipped
entirely when the step is built with `use_reference=False` (beta = 0 and no reference loaded).
The log-prob function is `losses.token_logps` on the tempered, untruncated distribution, the same
one the sampler reports.

The state is donated; params and optimizer state keep their FSDP shardings, the batch is sharded
over ("data", "fsdp") on its leading dimension.
"""

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from grpo_jax import advantages as adv_lib
from grpo_jax import losses
from grpo_jax import model as model_lib
from grpo_jax import sharding
from grpo_jax.scoring import completion_scores  # the one scoring function, shared with SFT


SCHEDULES = ("constant", "cosine")  # learning-rate schedules (optim.schedule)


class TrainState(NamedTuple):
    step: jax.Array  # i32[]
    params: Any  # model params pytree (model.py layout)
    opt_state: Any  # optax state, sharded like params
    # grpo.adaptive_entropy's controller, {"coef": f32[], "last": f32[]} (`init_entropy_controller`),
    # carried across optimizer updates and checkpointed; None otherwise (no leaves: checkpoints of
    # runs without it keep their layout).
    entropy: Any = None


class Batch(NamedTuple):
    prompt_tokens: jax.Array  # i32[N, P] left-padded
    prompt_mask: jax.Array  # i32[N, P] 1 on real prompt tokens
    completion_tokens: jax.Array  # i32[N, T]
    completion_mask: jax.Array  # f32[N, T] 1 through the first EOS
    advantages: jax.Array  # f32[N]
    # f32[N] 1 on the rows that carry a loss (grpo_loss's row_mask: DAPO dynamic sampling's fill rows
    # are 0 and count in no denominator); None: every row.
    row_mask: jax.Array | None = None
    # f32[N] the rows' rewards, only with grpo.kl_in_reward: the step takes the advantages from
    # rewards - beta * KL itself (the reference log-probs are computed there); None otherwise.
    rewards: jax.Array | None = None


class HParams(NamedTuple):
    """Traced scalars: changing them does not recompile, and they can be vmapped over."""
    epsilon: jax.Array  # f32[]
    epsilon_high: jax.Array  # f32[]
    beta: jax.Array  # f32[]
    temperature: jax.Array  # f32[]
    # grpo.entropy_coef (the adaptive controller's start value lives in TrainState.entropy instead);
    # used only by a step built with entropy_bonus=True.
    entropy_coef: jax.Array = 0.0  # f32[]


def make_hparams(*, epsilon, epsilon_high=None, beta, temperature, entropy_coef=0.0) -> HParams:
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    return HParams(*(jnp.asarray(x, jnp.float32) for x in (epsilon, epsilon_high, beta, temperature, entropy_coef)))


def init_entropy_controller(entropy_coef: float):
    """grpo.adaptive_entropy's state: the coefficient and the last update's entropy (inf: the bonus
    is off until an update has measured an entropy at or below the target, as TRL 1.16)."""
    return {"coef": jnp.asarray(entropy_coef, jnp.float32), "last": jnp.asarray(jnp.inf, jnp.float32)}


def step_options(config) -> dict:
    """build_train_step's keyword arguments that come from the config (loss menu, K, M, mu, shared
    prefix, truncated scoring): one place for the trainer, the sweep and the plan."""
    from grpo_jax import truncation as truncation_lib  # the sampler's kept set, re-derived for scoring
    g, tr = config.grpo, config.train
    return dict(
        loss_type=g.loss_type, importance_level=g.importance_level, num_iterations=g.num_iterations,
        num_minibatches=tr.num_minibatches, steps_per_generation=tr.steps_per_generation,
        max_completion_length=config.sampling.max_new_tokens, shared_prefix=tr.shared_prefix,
        group_size=g.group_size, truncation=truncation_lib.for_scoring(config),
        loss_options=dict(delta=g.delta, kl_estimator=g.kl_estimator, cispo_max_weight=g.cispo_max_weight,
                          sapo_temperatures=(g.sapo_temperature_pos, g.sapo_temperature_neg),
                          vespo_params=(g.vespo_k_pos, g.vespo_lambda_pos, g.vespo_k_neg, g.vespo_lambda_neg),
                          top_entropy_quantile=g.top_entropy_quantile),
        entropy_bonus=g.entropy_coef > 0 or g.adaptive_entropy,
        adaptive_entropy=((g.entropy_target, g.entropy_coef_delta, g.entropy_coef_min, g.entropy_coef_max)
                          if g.adaptive_entropy else None),
        kl_in_reward=g.kl_in_reward,
        advantage_options=dict(estimator=g.advantage_estimator, scale=g.scale_rewards, eps=g.advantage_eps))


def hparams_from_config(config) -> HParams:
    g = config.grpo
    return make_hparams(epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                        temperature=config.sampling.temperature, entropy_coef=g.entropy_coef)


def learning_rate_schedule(*, learning_rate, warmup_steps=0, schedule="constant", total_steps=1):
    """count -> learning rate of optimizer update `count` (0-based): linear warmup from 0 over
    `warmup_steps` updates, then constant, or ("cosine") a cosine decay to 0 at `total_steps`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "cosine":
        if warmup_steps == 0:  # optax's warmup version would spend the first update at lr 0
            return optax.cosine_decay_schedule(learning_rate, max(total_steps, 1))
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                                  max(total_steps, warmup_steps + 1))
    if warmup_steps > 0:
        return optax.linear_schedule(0.0, learning_rate, warmup_steps)  # holds its end value after
    return optax.constant_schedule(learning_rate)


def make_optimizer(*, learning_rate, max_grad_norm=1.0, b1=0.9, b2=0.99, weight_decay=0.0,
                   warmup_steps=0, schedule="constant", total_steps=1) -> optax.GradientTransformation:
    """AdamW behind clip-by-global-norm (on by default: without it the quick start collapses), at the
    learning rate of `learning_rate_schedule`."""
    lr = learning_rate_schedule(learning_rate=learning_rate, warmup_steps=warmup_steps, schedule=schedule,
                                total_steps=total_steps)
    if schedule == "constant" and warmup_steps == 0:
        lr = learning_rate  # a plain float: the optimizer state has no schedule count to carry
    adam = optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adam) if max_grad_norm > 0 else adam


def _check_batch(batch: Batch) -> None:
    """Batch fields consistent with each other. Shapes and dtypes only: runs while tracing, adds
    nothing to the compiled program (a mismatched N would otherwise surface deep in the split)."""
    chex.assert_rank([batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens, batch.completion_mask,
                      batch.advantages], [2, 2, 2, 2, 1],
                     custom_message="Batch: prompt_tokens, prompt_mask [N, P]; completion_tokens, "
                                    "completion_mask [N, T]; advantages [N]")
    chex.assert_equal_shape([batch.prompt_tokens, batch.prompt_mask],
                            custom_message="Batch: prompt_tokens and prompt_mask must both be [N, P]")
    chex.assert_equal_shape([batch.completion_tokens, batch.completion_mask],
                            custom_message="Batch: completion_tokens and completion_mask must both be [N, T]")
    chex.assert_equal_shape_prefix([x for x in batch if x is not None], 1, custom_message="Batch: every field "
                                   "needs the same N rows (prompt_tokens, prompt_mask, completion_tokens, "
                                   "completion_mask, advantages, row_mask)")
    if batch.row_mask is not None:
        chex.assert_rank(batch.row_mask, 1, custom_message="Batch: row_mask must be [N]")
    chex.assert_type([batch.prompt_tokens, batch.completion_tokens, batch.advantages], [int, int, float],
                     custom_message="Batch: integer prompt/completion tokens, floating-point advantages")


def updates_per_step(config) -> int:
    """Optimizer updates per GRPO step: grpo.num_iterations * train.steps_per_generation."""
    return config.grpo.num_iterations * config.train.steps_per_generation


def schedule_from_config(config):
    """count -> learning rate, over `optim.schedule_steps` GRPO steps (the horizon; the trainer sets it
    to the first launch's train.steps and keeps it on resume, so a longer run does not make the
    learning rate jump). Schedules count every optimizer update: updates_per_step per GRPO step."""
    o = config.optim
    horizon = o.schedule_steps or config.train.steps
    return learning_rate_schedule(learning_rate=o.learning_rate, warmup_steps=o.warmup_steps,
                                  schedule=o.schedule, total_steps=horizon * updates_per_step(config))


def optimizer_from_config(config) -> optax.GradientTransformation:
    """The GRPO optimizer from the `optim` section, at `schedule_from_config`'s learning rate."""
    o = config.optim
    return make_optimizer(
        learning_rate=o.learning_rate, max_grad_norm=o.max_grad_norm, b1=o.b1, b2=o.b2,
        weight_decay=o.weight_decay, warmup_steps=o.warmup_steps, schedule=o.schedule,
        total_steps=(o.schedule_steps or config.train.steps) * updates_per_step(config))


def _masked_mean(x, mask):
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _split(x, num_minibatches):
    """[N, ...] -> [M, N/M, ...] taking rows m, m+M, m+2M, ... for minibatch m.

    Strided rather than contiguous: the leading dim is sharded over the devices, and a strided split
    leaves every minibatch spread over all of them (a contiguous one would sit on N/M's devices).
    """
    n = x.shape[0]
    return jnp.swapaxes(x.reshape(n // num_minibatches, num_minibatches, *x.shape[1:]), 0, 1)


def build_train_step(model_config: model_lib.ModelConfig, optimizer: optax.GradientTransformation, *,
                     loss_type: str = "grpo", importance_level: str = "token",
                     num_iterations: int = 1, num_minibatches: int = 1, steps_per_generation: int = 1,
                     use_reference: bool = True, max_completion_length: int | None = None,
                     lora: bool = False, chunk_size: int | None = None, shared_prefix: bool = False,
                     group_size: int = 1, truncation=None, loss_options: dict | None = None,
                     entropy_bonus: bool = False, adaptive_entropy: tuple | None = None,
                     kl_in_reward: bool = False, advantage_options: dict | None = None):
    """Returns the pure step `(state, ref_params, batch, hparams) -> (state, metrics)`.

    Not jitted: `jit_train_step` adds shardings and donation; tests and sweeps may vmap it first.
    `state.step` counts calls (rollouts), not optimizer steps: mu * K optimizer updates per call.
    The config's values for every option below: `step_options(config)`.

    `lora=True`: `state.params` holds only the LoRA adapters (`model.init_lora`), so only they are
    trained and held in the optimizer state, and the second argument is the frozen base model. The
    policy is the base with the adapters on (`model.merge_lora`), the reference the base itself with
    them off: no second copy of the weights (TRL + PEFT do the same).

    `chunk_size`: token rows per LM-head chunk when scoring (`scoring.completion_scores`; None: its
    default, LOGITS_BUDGET // V rows).

    `shared_prefix=True` (train.shared_prefix) with `group_size` = G (grpo.group_size; the batch is
    group-major, row n holds prompt n // G): every forward of the step (policy, reference, K > 1's
    old log-probs) encodes each prompt once per group instead of G times
    (`scoring.completion_scores(group_size=...)`): the same numbers to round-off, less work. A
    strided chunk (k, m) holds rows j*K*M + k + K*m, so when K*M divides G its rows come in
    contiguous runs of G / (K*M) rows of one prompt, and that is the group size each chunk is scored
    with. When K*M does not divide G the runs are irregular and nothing is shared (the plain path,
    no error), and so it is with model.attention="cudnn" (`model.shares_prefix`). The group size
    used is `step.shared_group_size` (1: no sharing).

    `truncation` (`truncation.Truncation`, None = off): the policy's (and old) log-probs are those of
    the truncated, renormalised distribution the sampler drew from (top-k / top-p / min-p); the
    reference's stay on the full distribution, so the KL is KL(full pi || full pi_ref).

    The loss menu (`losses` module docstring): `loss_options` are grpo_loss's static keywords
    (delta, kl_estimator, cispo_max_weight, sapo_temperatures, vespo_params, top_entropy_quantile).
    `entropy_bonus`: the policy's entropy is differentiated and loss -= coef * its mean over the
    tokens the policy term uses, each chunk weighted by its share of the update's tokens; coef is
    `hparams.entropy_coef`, or with `adaptive_entropy` = (target, delta, min, max) the controller in
    `state.entropy` (Skywork-OR1 as TRL 1.16: applied while the last update's entropy was <= target,
    then moved by delta towards keeping it there, once per optimizer update).
    `kl_in_reward` (needs `batch.rewards` and a reference): before any update the step scores the
    sampling policy and the reference, takes r_i - beta * sum_t m * kl_t (grpo_loss's kl_estimator)
    as each row's reward and its advantages by `advantages.compute(**advantage_options)` over
    group_size groups (batch.advantages is unused); the loss then has no KL term. The advantages it
    trained on come back as the row metric ROW_ADVANTAGES.
    """
    if loss_type not in losses.LOSS_TYPES:
        raise ValueError(f"grpo.loss_type must be one of {losses.LOSS_TYPES}, got {loss_type!r}")
    K, M = steps_per_generation, num_minibatches
    if K < 1 or M < 1:
        raise ValueError(f"steps_per_generation={K} and num_minibatches={M} must be >= 1")
    if kl_in_reward and not use_reference:
        raise ValueError("kl_in_reward needs the reference (use_reference=True)")
    loss_options = dict(loss_options or {})
    advantage_options = dict(advantage_options or {})
    if truncation is not None and not truncation.active:
        truncation = None
    entropy_bonus = entropy_bonus or adaptive_entropy is not None

    # cudnn attention cannot take the grouped forward's mask (model.shares_prefix): every row whole.
    share = shared_group_size(group_size, K * M) if shared_prefix and model_lib.shares_prefix(model_config) else 1

    def policy(params, frozen):  # the model the trained params stand for
        return model_lib.merge_lora(frozen, params) if lora else params

    def scored_logps(params, mb: Batch, hp: HParams, *, entropy=False, truncated=True, full_logps=False):
        # Chunked LM head (scoring.py): no [N, T, V] logits, in the gradient pass or out of it.
        return completion_scores(model_config, params, mb.prompt_tokens, mb.prompt_mask, mb.completion_tokens,
                                 temperature=hp.temperature, chunk_size=chunk_size, entropy=entropy,
                                 group_size=share, truncation=truncation if truncated else None,
                                 full_logps=full_logps)

    def minibatch_loss(params, frozen, mb: Batch, old_logps, ref_logps, weight, share_w, on_policy, coef,
                       hp: HParams):
        # The entropy comes out of the same chunk loop: a metric (no gradient), or the bonus's term.
        # Truncated sampling with a KL term: the KL's policy side is the full distribution's log-prob.
        kl_full = truncation is not None and ref_logps is not None
        logps, stats = scored_logps(policy(params, frozen), mb, hp, entropy="grad" if entropy_bonus else True,
                                    full_logps=kl_full)
        if old_logps is None:  # first update of the call: on-policy by construction
            old_logps = jax.lax.stop_gradient(logps)
        elif on_policy is not None:  # K > 1: a traced "params not moved yet" flag (k == 0)
            old_logps = jnp.where(on_policy, jax.lax.stop_gradient(logps), old_logps)
        mask = mb.completion_mask.astype(jnp.float32)
        loss, metrics = losses.grpo_loss(
            logps, old_logps, ref_logps, mb.advantages, mask, epsilon=hp.epsilon,
            epsilon_high=hp.epsilon_high, beta=hp.beta, loss_type=loss_type,
            importance_level=importance_level, max_completion_length=max_completion_length,
            row_mask=mb.row_mask, per_row=True, entropies=stats["entropy"],
            kl_logps=stats["full_logps"] if kl_full else None, **loss_options)
        clipped = metrics.pop("clipped_tokens")  # [rows of the chunk]
        entropy = stats["entropy"]
        # Over the rows that count, as the token shares that weigh it across chunks.
        counted = mask if mb.row_mask is None else mask * mb.row_mask[:, None].astype(jnp.float32)
        metrics["entropy"] = _masked_mean(jax.lax.stop_gradient(entropy), counted)
        total = loss * weight
        used = jnp.zeros(2, jnp.float32)  # [sum of entropy, tokens] over the policy term's tokens
        if entropy_bonus:
            policy_mask = counted
            quantile = loss_options.get("top_entropy_quantile", 1.0)
            if quantile < 1.0:
                policy_mask = policy_mask * losses.high_entropy_mask(entropy, policy_mask, quantile)
            term = _masked_mean(entropy, policy_mask)
            total = total - coef * term * share_w  # token share of the update: M changes nothing
            metrics["loss"] = metrics["loss"] - coef * term * share_w / weight_safe(weight)
            used = jax.lax.stop_gradient(jnp.stack([(entropy * policy_mask).sum(), policy_mask.sum()]))
        return total, (metrics, (jax.lax.stop_gradient(logps), clipped, used))

    def weight_safe(w):
        return jnp.where(w == 0, 1.0, w)

    grad_fn = jax.grad(minibatch_loss, has_aux=True)
    metric_names = ("loss", "kl", "clip_fraction", "clip_fraction_low", "clip_fraction_high",
                    "ratio_mean", "entropy", "ratio_max")

    def step(state: TrainState, ref_params, batch: Batch, hp: HParams):
        _check_batch(batch)
        n = batch.advantages.shape[0]
        if n % (K * M):
            raise ValueError(f"batch of {n} rows is not divisible by train.steps_per_generation * "
                             f"train.num_minibatches = {K} * {M}")
        if share > 1 and n % group_size:
            raise ValueError(f"shared_prefix: batch of {n} rows is not whole groups of group_size={group_size}")
        if kl_in_reward and batch.rewards is None:
            raise ValueError("kl_in_reward: the Batch needs its rows' rewards (Batch.rewards)")
        if adaptive_entropy is not None and state.entropy is None:
            raise ValueError("adaptive_entropy: the TrainState needs its controller (init_entropy_controller)")

        def split(x):  # [N, ...] -> [K, M, N/(K*M), ...]: chunk (k, m) = strided chunk c = k + K*m
            chunks = _split(x, K * M)  # [K*M, N/(KM), ...], chunk c holds rows j*K*M + c
            return jnp.swapaxes(chunks.reshape(M, K, *chunks.shape[1:]), 0, 1)

        def unsplit(x):  # [K, M, N/(KM), ...] -> [N, ...], the inverse of split
            chunks = jnp.swapaxes(x, 0, 1).reshape(K * M, n // (K * M), *x.shape[3:])
            return jnp.swapaxes(chunks, 0, 1).reshape(n, *x.shape[3:])

        # [N, ...] -> [K, M, N/(K*M), ...]: chunk (k, m) holds rows k + K*m + K*M*j (j = 0, 1, ...),
        # so update k trains on every K-th row starting at k whatever M is (M only splits it for
        # accumulation), and every chunk stays spread over all the devices the batch is sharded on.
        mbs = Batch(*(None if x is None else split(x) for x in batch))
        mask_f = mbs.completion_mask.astype(jnp.float32)
        if batch.row_mask is not None:  # rows outside the row mask count in no token sum
            mask_f = mask_f * mbs.row_mask[..., None].astype(jnp.float32)
        rows = (jnp.full((K, M), n / (K * M), jnp.float32) if batch.row_mask is None
                else mbs.row_mask.astype(jnp.float32).sum(2))
        weights, token_share = losses.accumulation_weights(loss_type, mask_f.sum((2, 3)), rows)  # [K, M] each

        def forward_all(p, truncated=True):  # [K, M, N/(KM), T] log-probs of every chunk, no gradient
            flat = Batch(*(None if x is None else x.reshape(K * M, *x.shape[2:]) for x in mbs))
            _, out = jax.lax.scan(lambda _, mb: (None, scored_logps(p, mb, hp, truncated=truncated)[0]), None, flat)
            return jax.lax.stop_gradient(out.reshape(K, M, *out.shape[1:]))

        frozen = ref_params if lora else None  # LoRA: the base model, adapters off = the reference
        # The reference on the full (untruncated) distribution: the KL is between the full policies.
        ref_logps = forward_all(ref_params, truncated=False) if use_reference else None
        # K > 1: the sampling policy's log-probs for the parts scored after the first update.
        old_logps = forward_all(policy(state.params, frozen)) if K > 1 else None
        row_advantages = None
        if kl_in_reward:
            # The sampling policy's full-distribution log-probs against the reference's, per row.
            start = forward_all(policy(state.params, frozen), truncated=False)
            kl = losses.kl_estimate(start, ref_logps, loss_options.get("kl_estimator", "k3"))
            kl_rows = unsplit((kl * mask_f).sum(-1))  # [N]
            lengths = unsplit(mask_f.sum(-1))
            row_advantages = adv_lib.compute(batch.rewards.astype(jnp.float32) - hp.beta * kl_rows, group_size,
                                             mask=batch.row_mask, lengths=lengths, **advantage_options)
            mbs = mbs._replace(advantages=split(row_advantages))
            kl_reward = (kl_rows.sum() / jnp.maximum(lengths.sum(), 1.0))  # mean token KL, for the metric
            ref_logps = None  # no KL term in the loss

        controller0 = state.entropy

        def optimizer_step(carry, xs, *, first: bool):
            """One optimizer update over the M chunks of one part. `first`: static, the call's very
            first update (K = 1: the only one of iteration 0)."""
            params, opt_state, controller = carry
            mb_k, old_k, ref_k, w_k, share_k, on_policy = xs
            if adaptive_entropy is not None:  # TRL: applied while the last measured entropy <= target
                coef = jnp.where(controller["last"] <= adaptive_entropy[0], controller["coef"], 0.0)
            else:
                coef = hp.entropy_coef

            def accumulate(acc, chunk):
                grads_acc, met_acc = acc
                mb, old, ref, w, share = chunk
                grads, (met, out) = grad_fn(params, frozen, mb, old, ref, w, share, on_policy, coef, hp)
                grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
                # The loss carries its aggregation weight; token-mean metrics their token share.
                met_acc = {k: (jnp.maximum(met_acc[k], v) if k == "ratio_max" else
                               met_acc[k] + v * (w if k == "loss" else share))
                           for k, v in met.items() if k in met_acc}
                return (grads_acc, met_acc), out

            zeros = jax.tree.map(jnp.zeros_like, params)
            met0 = {k: jnp.zeros((), jnp.float32) for k in metric_names}
            (grads, met), (logps, clipped, used) = jax.lax.scan(
                accumulate, (zeros, met0), (mb_k, None if first else old_k, ref_k, w_k, share_k))
            grad_norm = optax.global_norm(grads)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            if adaptive_entropy is not None:  # the update's token-weighted entropy moves the coefficient
                target, step_size, lo, hi = adaptive_entropy
                measured = used[:, 0].sum() / jnp.maximum(used[:, 1].sum(), 1.0)
                moved = jnp.where(measured <= target, jnp.minimum(controller["coef"] + step_size, hi),
                                  jnp.maximum(controller["coef"] - step_size, lo))
                controller = {"coef": moved, "last": measured}
            met["entropy_coef"] = jnp.asarray(coef, jnp.float32)
            return (params, opt_state, controller), (met, logps, grad_norm, clipped)

        def iteration(carry, old, first_iteration):
            """The K optimizer updates of one pass over the batch: (carry, ([K] metrics, [K, M, ...]
            log-probs, [K] grad norms, [K, M, N/(KM)] clipped tokens per row)). `old` is None only on
            the first pass at K = 1."""
            if K == 1:
                xs = jax.tree.map(lambda x: x[0], (mbs, old, ref_logps, weights, token_share))
                carry, out = optimizer_step(carry, (*xs, None), first=old is None)
                return carry, jax.tree.map(lambda x: x[None], out)
            on_policy = (jnp.arange(K) == 0) & first_iteration  # [K]: params unchanged so far
            return jax.lax.scan(lambda c, xs: optimizer_step(c, xs, first=False), carry,
                                (mbs, old, ref_logps, weights, token_share, on_policy))

        carry, (met, logps, grad_norm, clipped) = iteration((state.params, state.opt_state, controller0),
                                                            old_logps, True)
        if old_logps is None:
            old_logps = logps  # [K, M, N/(KM), T], the sampling policy's, for passes 2..mu
        mets = [met]
        if num_iterations > 1:  # passes 2..mu: one compiled body under a scan, not mu - 1 copies
            def later(carry, _):
                carry, (met, _, grad_norm, clipped) = iteration(carry, old_logps, False)
                return carry, (met, grad_norm, clipped)
            carry, (met, grad_norm, later_clipped) = jax.lax.scan(later, carry, None, length=num_iterations - 1)
            mets.append(met)  # [mu - 1, K] each
            grad_norm = grad_norm[-1]
            clipped = clipped + later_clipped.sum(0)
        params, opt_state, controller = carry

        # Report the mean over the mu * K updates (at mu = K = 1: the on-policy numbers).
        names = metric_names + (("entropy_coef",) if entropy_bonus else ())
        metrics = {k: (jnp.max(jnp.stack([m[k].max() for m in mets])) if k == "ratio_max" else
                       sum(m[k].sum() for m in mets) / (num_iterations * K)) for k in names}
        if kl_in_reward:
            metrics["kl"] = kl_reward  # the loss has no KL term; this is the reward's
        metrics["grad_norm"] = grad_norm[-1]  # of the last update, before clipping
        metrics["advantage_abs_mean"] = jnp.abs(batch.advantages if row_advantages is None else row_advantages).mean()
        # [K, M, N/(KM)] -> [N] (`unsplit`: chunk (k, m) holds rows j*K*M + k + K*m). Summed over the
        # mu passes; the one non-scalar (per-group clip rates, groups.jsonl: `pop_row_metrics`).
        metrics[ROW_CLIPPED] = unsplit(clipped)
        if row_advantages is not None:
            metrics[ROW_ADVANTAGES] = row_advantages
        return TrainState(state.step + 1, params, opt_state, controller), metrics

    step.shared_group_size = share
    return step


ROW_CLIPPED = "row_clipped_tokens"  # the step's non-scalar metric: f32[N] clipped tokens per row, all passes
ROW_ADVANTAGES = "row_advantages"  # with kl_in_reward: f32[N] the advantages the step computed and trained on


def pop_row_metrics(metrics: dict) -> tuple[dict, jax.Array]:
    """(the step's scalar metrics, its f32[N] clipped-token counts per row) without copying either.
    A kl_in_reward step's ROW_ADVANTAGES stay in the first dict (`pop_row_advantages`)."""
    metrics = dict(metrics)
    return metrics, metrics.pop(ROW_CLIPPED)


def pop_row_advantages(metrics: dict):
    """(metrics without it, the kl_in_reward step's f32[N] advantages or None)."""
    metrics = dict(metrics)
    return metrics, metrics.pop(ROW_ADVANTAGES, None)


def shared_group_size(group_size: int, chunks: int) -> int:
    """Rows of one prompt that lie contiguously in each strided chunk of a group-major batch split
    into `chunks` = K * M chunks (`_split`): group_size / chunks when chunks divides group_size, else 1.

    Chunk c holds rows j * chunks + c (j = 0, 1, ...). With group_size = chunks * s, row
    j * chunks + c = (j // s) * group_size + (j % s) * chunks + c belongs to group j // s, since
    (j % s) * chunks + c < s * chunks: the chunk's rows j = 0..s-1 are group 0's, s..2s-1 group 1's, ...
    """
    return group_size // chunks if group_size >= chunks and group_size % chunks == 0 else 1


def state_shardings(mesh, optimizer: optax.GradientTransformation, abstract_params, *,
                    entropy: bool = False) -> TrainState:
    """Shardings for TrainState: params FSDP; optimizer moments like their params; scalars replicated.
    `entropy`: the state carries grpo.adaptive_entropy's controller (replicated scalars)."""
    param_sh = sharding.param_shardings(mesh, abstract_params)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    # Leaves that mirror a parameter (Adam's mu, nu) take its sharding; counts etc. are replicated.
    opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    return TrainState(replicated, param_sh, opt_sh, {"coef": replicated, "last": replicated} if entropy else None)


def abstract_state(optimizer: optax.GradientTransformation, abstract_params, mesh, *,
                   entropy: bool = False) -> TrainState:
    """The TrainState as ShapeDtypeStructs carrying `state_shardings`: a restore target that costs no
    memory (a concrete one built just to be overwritten doubled the peak of a resume)."""
    shardings = state_shardings(mesh, optimizer, abstract_params, entropy=entropy)
    shapes = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p),
                                                 init_entropy_controller(0.0) if entropy else None), abstract_params)
    return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), shapes, shardings)


def init_state(params, optimizer: optax.GradientTransformation, mesh, *,
               entropy_coef: float | None = None) -> TrainState:
    """A TrainState whose optimizer state is created directly with its shardings. `entropy_coef`
    (grpo.adaptive_entropy): the controller's start value; None = no controller."""
    entropy = entropy_coef is not None
    shardings = state_shardings(mesh, optimizer, jax.eval_shape(lambda p: p, params), entropy=entropy)
    opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    controller = jax.device_put(init_entropy_controller(entropy_coef), shardings.entropy) if entropy else None
    return TrainState(step, params, opt_state, controller)


def jit_train_step(step_fn, mesh, state_sh: TrainState, ref_params_sh):
    """jit with explicit in/out shardings; the train state is donated (updated in place)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    # One sharding for every Batch field, a pytree prefix: each leaf's leading dim over the batch
    # axes, the rest replicated (so an absent row_mask, None, needs no entry of its own).
    batch_sh = sharding.batch_sharding(mesh, 1)
    hp_sh = HParams(*([replicated] * len(HParams._fields)))
    return jax.jit(sharding.under_mesh(step_fn, mesh), in_shardings=(state_sh, ref_params_sh, batch_sh, hp_sh),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))
