"""Supervised warm start (SFT): masked next-token cross-entropy on the completion only.

    loss = - sum_{n,j} m_nj * log p_theta(y_nj | x_n, y_n<j)  /  sum_{n,j} m_nj        (temperature 1)

x_n: the left-padded prompt, y_n: the target completion (the task's ideal answer text followed by
the tokenizer's EOS, so the model learns to stop), m_nj: 1 on the target's real tokens (EOS
included), 0 on its right padding; prompt tokens are never scored. The loss is a mean over target
tokens of the whole batch (token-level, like "bnpo"): long targets weigh more than short ones.

GRPO follows SFT on the same model, sharding and optimizer: the log-probs come from
`scoring.completion_scores` (the one function that scores GRPO completions, so the off-by-one
shift lives in one place; its chunked LM head never holds the [N, T, V] logits), the state is
`train_step.TrainState` from `train_step.init_state`, the optimizer `train_step.make_optimizer`,
and the jitted step has explicit shardings and donates the state, as `train_step.jit_train_step` does.

Data: `run_sft` reads `example_fn(index)` (a pure function of the index, e.g.
`functools.partial(arithmetic.example, seed)`): batch i holds indices [i*batch_size,
(i+1)*batch_size), so any run is reproducible and could resume at any step.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax import evaluate as evaluate_lib
from grpo_jax import model as model_lib
from grpo_jax import sharding
from grpo_jax import tokenizer as tokenizer_lib
from grpo_jax import scoring
from grpo_jax import train_step
from grpo_jax.tasks import prompts as prompts_lib


class SFTBatch(NamedTuple):
    prompt_tokens: jax.Array  # i32[N, P] left-padded
    prompt_mask: jax.Array  # i32[N, P] 1 on real prompt tokens
    target_tokens: jax.Array  # i32[N, T] right-padded, EOS after the text
    target_mask: jax.Array  # f32[N, T] 1 on the target's tokens (EOS included), 0 on padding


def sft_texts(example, *, style: str = "reasoning", prompt_fn=None) -> tuple[str, str]:
    """(prompt text, target text) of one task `Example`: the prompt through `prompt_fn` (default
    `format_prompt`; the trainer passes its task's, so SFT and GRPO see the same prompts), the
    target `format_target(meta["reasoning"], answer)` (reasoning "" when the task gives none)."""
    reasoning = example.meta.get("reasoning", "") if example.meta else ""
    prompt = prompt_fn(example) if prompt_fn else prompts_lib.format_prompt(example.prompt, style=style)
    return (prompt,
            prompts_lib.format_target(reasoning, example.answer, style=style))


def encode_sft_batch(tokenizer, prompts: list[str], targets: list[str], *, max_prompt_length: int,
                     max_target_length: int, chat: bool = False, system: str | None = None) -> SFTBatch:
    """Host-side (numpy) batch: prompts left-padded by `tokenizer.encode_prompts` (same rules: chat
    template when `chat`, too long is an error), targets encoded without special tokens, EOS
    appended, right-padded to `max_target_length`.

    A target whose tokens plus EOS exceed `max_target_length` is a ValueError naming its index:
    truncating would train the model on a completion that never stops (no EOS) or is cut mid-answer.
    """
    if isinstance(prompts, str) or isinstance(targets, str):
        raise TypeError("encode_sft_batch: prompts and targets must be lists of strings")
    if len(prompts) != len(targets):
        raise ValueError(f"encode_sft_batch: {len(prompts)} prompts but {len(targets)} targets")
    if max_target_length < 1:
        raise ValueError(f"encode_sft_batch: max_target_length must be >= 1, got {max_target_length}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError("encode_sft_batch: the tokenizer has no EOS token; SFT targets must end in one")
    prompt_tokens, prompt_mask = tokenizer_lib.encode_prompts(
        tokenizer, list(prompts), max_length=max_prompt_length, chat=chat, system=system)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    target_tokens = np.full((len(targets), max_target_length), pad_id, np.int32)
    target_mask = np.zeros((len(targets), max_target_length), np.float32)
    for i, text in enumerate(targets):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_id]
        if len(ids) > max_target_length:
            raise ValueError(
                f"encode_sft_batch: target {i} has {len(ids)} tokens (EOS included) > "
                f"max_target_length={max_target_length}: {text[:80]!r}")
        target_tokens[i, :len(ids)] = ids
        target_mask[i, :len(ids)] = 1.0
    return SFTBatch(prompt_tokens, prompt_mask, target_tokens, target_mask)


def _token_nll(model_config, params, prompt_tokens, prompt_mask, target_tokens, *, argmax=False,
               chunk_size=None):
    """(-log p f32[N, T], stats) of every target token, scored like GRPO completions (the chunked LM
    head of `scoring.completion_scores`: no [N, T, V] logits); stats["argmax"] i32[N, T] when asked."""
    logps, stats = scoring.completion_scores(model_config, params, prompt_tokens, prompt_mask, target_tokens,
                                             temperature=1.0, argmax=argmax, chunk_size=chunk_size)
    return -logps, stats


def sft_loss(model_config: model_lib.ModelConfig, params, prompt_tokens, prompt_mask, target_tokens,
             target_mask, *, chunk_size: int | None = None) -> tuple[jax.Array, dict]:
    """Mean -log p over the batch's target tokens; metrics `loss`, `token_accuracy` (greedy
    argmax == target, over the same tokens) and `num_tokens`. `chunk_size`: token rows per LM-head
    chunk (`scoring.completion_scores`; None: its default)."""
    nll, stats = _token_nll(model_config, params, prompt_tokens, prompt_mask, target_tokens,
                            argmax=True, chunk_size=chunk_size)  # [N, T]
    mask = target_mask.astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)  # an all-padding batch gives loss 0, not NaN
    loss = (nll * mask).sum() / count
    correct = (stats["argmax"] == target_tokens).astype(jnp.float32)  # [N, T]
    metrics = {"loss": loss, "token_accuracy": jax.lax.stop_gradient((correct * mask).sum() / count),
               "num_tokens": mask.sum()}
    return loss, metrics


def build_sft_step(model_config: model_lib.ModelConfig, optimizer: optax.GradientTransformation):
    """The pure step `(state: TrainState, batch: SFTBatch) -> (state, metrics)`; not jitted
    (`jit_sft_step` adds shardings and donation)."""

    def loss_fn(params, batch: SFTBatch):
        return sft_loss(model_config, params, *batch)

    grad_fn = jax.grad(loss_fn, has_aux=True)

    def step(state: train_step.TrainState, batch: SFTBatch):
        grads, metrics = grad_fn(state.params, batch)
        metrics["grad_norm"] = optax.global_norm(grads)  # before clipping
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return train_step.TrainState(state.step + 1, params, opt_state), metrics

    return step


def sft_batch_shardings(mesh) -> SFTBatch:
    """Every batch field's leading dim over ("data", "fsdp"), like the GRPO batch."""
    return SFTBatch(*(sharding.batch_sharding(mesh, 2) for _ in SFTBatch._fields))


def jit_sft_step(step_fn, mesh, state_sh: train_step.TrainState):
    """jit with explicit in/out shardings; the train state is donated (updated in place)."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(sharding.under_mesh(step_fn, mesh), in_shardings=(state_sh, sft_batch_shardings(mesh)),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))


def _check_batch_size(batch_size: int, mesh, what: str) -> None:
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(f"{what}={batch_size} must be a positive multiple of the mesh's "
                         f"{mesh.size} devices (data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']})")


def run_sft(model_config: model_lib.ModelConfig, params, tokenizer, example_fn: Callable[[int], Any], *,
            steps: int, batch_size: int, learning_rate: float, warmup_steps: int = 0, seed: int = 0,
            mesh, style: str = "reasoning", max_prompt_length: int, max_target_length: int,
            chat: bool = False, system: str | None = None, log_every: int = 10,
            log_fn: Callable[[int, dict], None] | None = None, max_grad_norm: float = 1.0,
            prompt_fn: Callable[[Any], str] | None = None,
            stop_fn: Callable[[int, Any], bool] | None = None, stop_every: int = 0, donate: bool = False):
    """`steps` SFT updates from `params`; returns the trained params, FSDP-sharded on `mesh` (the
    layout `sharding.init_params_sharded` gives). The input `params` are not consumed.

    Batch i is `example_fn(j)` for j in [i*batch_size, (i+1)*batch_size), through `sft_texts` and
    `encode_sft_batch`. Optimizer: `train_step.make_optimizer` (AdamW, clip-by-global-norm
    `max_grad_norm`, linear warmup over `warmup_steps`, then constant).

    Metrics are fetched after step s (1-based) when s % log_every == 0 and after the last step, and
    passed to `log_fn(s, {name: float})`. That fetch blocks; independently, the loop blocks at least
    every 8 steps, which keeps a sharded CPU run out of the collective deadlock (ENVIRONMENT.md).

    `stop_fn(step, params) -> bool`, called every `stop_every` steps, ends SFT early when it returns
    True (the trainer stops at a held-out accuracy). `donate=True`: `params` are consumed (trained in
    place; the caller must not use them afterwards), so SFT holds one copy of the weights, not two.

    `seed` has no effect today and is accepted for call-site symmetry with GRPO: SFT has no
    randomness (no dropout; the data order is example_fn's, the init is the caller's), so two runs
    with the same arguments give bit-identical params.
    """
    del seed  # see the docstring: nothing random to seed
    if steps < 0:
        raise ValueError(f"run_sft: steps must be >= 0, got {steps}")
    if log_every < 1:
        raise ValueError(f"run_sft: log_every must be >= 1, got {log_every}")
    _check_batch_size(batch_size, mesh, "run_sft: batch_size")
    optimizer = train_step.make_optimizer(learning_rate=learning_rate, max_grad_norm=max_grad_norm,
                                          warmup_steps=warmup_steps, total_steps=max(steps, 1))
    state_sh = train_step.state_shardings(mesh, optimizer, jax.eval_shape(lambda p: p, params))
    # The step donates its state: train on a copy (placed with the mesh's FSDP shardings) so the
    # caller's params stay valid, e.g. for a before/after comparison; with `donate` the caller hands
    # them over and they are trained in place (no second copy of the weights: the trainer does so).
    if donate:
        params = jax.device_put(params, state_sh.params)  # no copy when already placed so
    else:
        params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=state_sh.params)(params)
    state = train_step.init_state(params, optimizer, mesh)
    step_fn = jit_sft_step(build_sft_step(model_config, optimizer), mesh, state_sh)
    batch_sh = sft_batch_shardings(mesh)
    block_every = min(log_every, 8)
    for i in range(steps):
        examples = [example_fn(j) for j in range(i * batch_size, (i + 1) * batch_size)]
        prompt_texts, target_texts = zip(*(sft_texts(ex, style=style, prompt_fn=prompt_fn) for ex in examples))
        batch = encode_sft_batch(tokenizer, list(prompt_texts), list(target_texts),
                                 max_prompt_length=max_prompt_length, max_target_length=max_target_length,
                                 chat=chat, system=system)
        batch = jax.device_put(batch, batch_sh)
        state, metrics = step_fn(state, batch)
        done = i + 1
        if done % log_every == 0 or done == steps:
            fetched = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if log_fn is not None:
                log_fn(done, fetched)
        elif done % block_every == 0:
            jax.block_until_ready(metrics)
        if stop_fn is not None and stop_every and done % stop_every == 0 and done < steps:
            if stop_fn(done, state.params):
                break
    return state.params


@functools.partial(jax.jit, static_argnums=(0,))
def _nll_sums(model_config, params, batch: SFTBatch):
    """(sum of -log p over target tokens, number of target tokens): scalars."""
    nll, _ = _token_nll(model_config, params, batch.prompt_tokens, batch.prompt_mask, batch.target_tokens)
    return (nll * batch.target_mask).sum(), batch.target_mask.sum()


def sft_eval_loss(model_config: model_lib.ModelConfig, params, tokenizer, examples, *,
                  style: str = "reasoning", max_prompt_length: int, max_target_length: int,
                  chat: bool = False, system: str | None = None, batch_size: int = 64,
                  mesh=None) -> float:
    """Held-out mean -log p per target token (EOS included) over all `examples`: total NLL / total
    tokens, so it does not depend on `batch_size`. Batches have one shape (the last one is padded
    with rows whose target mask is 0), so it compiles once. With `mesh`, batches are sharded over
    ("data", "fsdp") and `batch_size` must divide evenly over its devices."""
    examples = list(examples)
    if not examples:
        raise ValueError("sft_eval_loss: no examples")
    if mesh is not None:
        _check_batch_size(batch_size, mesh, "sft_eval_loss: batch_size")
    elif batch_size < 1:
        raise ValueError(f"sft_eval_loss: batch_size must be >= 1, got {batch_size}")
    total_nll, total_tokens = [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start: start + batch_size]
        prompt_texts, target_texts = map(list, zip(*(sft_texts(ex, style=style) for ex in chunk)))
        batch = encode_sft_batch(tokenizer, prompt_texts, target_texts, max_prompt_length=max_prompt_length,
                                 max_target_length=max_target_length, chat=chat, system=system)
        pad = batch_size - len(chunk)
        if pad:  # repeat row 0 with a zero target mask: same shape, contributes nothing
            batch = SFTBatch(*(np.concatenate([x, np.repeat(x[:1], pad, 0)]) for x in batch))
            batch.target_mask[len(chunk):] = 0.0
        if mesh is not None:
            batch = jax.device_put(batch, sft_batch_shardings(mesh))
        nll, count = _nll_sums(model_config, params, batch)
        total_nll.append(nll)
        total_tokens.append(count)
        if len(total_nll) % 8 == 0:  # block now and then: the CPU collective deadlock (ENVIRONMENT.md)
            jax.block_until_ready(count)
    total_nll, total_tokens = jax.device_get((total_nll, total_tokens))
    return float(np.sum(total_nll, dtype=np.float64) / np.sum(total_tokens, dtype=np.float64))


def warm_start(s, log, *, donate: bool = False):
    """The SFT warm-start stage of a run (a `build.Setup`) on `s.params`: `sft.steps` steps, or fewer when held-out validation
    accuracy (checked every `sft.eval_every` steps) reaches `sft.stop_accuracy`. Returns the params;
    `log(step, metrics)` gets the SFT metrics and validation accuracies. `donate`: `s.params` are
    consumed (`run_sft`)."""
    c = s.config

    def stop(step, params):
        if not c.sft.stop_accuracy or not s.task.validation_examples:
            return False
        accuracy = evaluate_lib.evaluate(
            s.model_config, params, s.tokenizer, s.task._replace(eval_examples=s.task.validation_examples),
            key=jax.random.key(0), batch_size=c.train.eval_batch_size,
            max_prompt_length=c.sampling.max_prompt_length, max_new_tokens=c.sampling.max_new_tokens,
            put=s.put, chat=c.task.chat_template, system=c.task.system_prompt,
            eos_ids=s.eos_ids, weight_layout=c.sampling.weight_layout,
            length_buckets=c.train.length_buckets, **evaluate_lib.engine_options(c))["eval_accuracy"]
        log(step, {"sft_validation_accuracy": accuracy})
        if accuracy >= c.sft.stop_accuracy:
            print(f"SFT stopped at step {step}: validation accuracy {accuracy:.3f} >= "
                  f"sft.stop_accuracy={c.sft.stop_accuracy}", file=sys.stderr)
            return True
        return False

    return run_sft(
        s.model_config, s.params, s.tokenizer, s.task.train_example, steps=c.sft.steps,
        batch_size=c.sft.batch_size, learning_rate=c.sft.learning_rate, warmup_steps=c.sft.warmup_steps,
        seed=c.train.seed, mesh=s.mesh, style=s.task.style, max_prompt_length=c.sampling.max_prompt_length,
        max_target_length=c.sampling.max_new_tokens, chat=c.task.chat_template,
        system=c.task.system_prompt or None, log_every=max(1, c.sft.steps // 10), log_fn=log,
        prompt_fn=s.task.prompt, max_grad_norm=c.optim.max_grad_norm, stop_fn=stop,
        stop_every=c.sft.eval_every, donate=donate)
