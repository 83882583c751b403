"""The whole GRPO iteration as one pure, jittable function, and vmapped sweeps over configurations.

For a task whose verifier is a JAX function of token ids (the arithmetic task, scored by
`arithmetic_reward_jax`), one iteration is

    rollout    = sample(policy, prompts repeated G_max times)       un-jitted sampler body, [N, T]
    rewards    = reward_fn(rollout.tokens, rollout.mask, answers)    f32[N], no host round trip
    advantages = group-relative over the first G rows of each group  f32[N], 0 on the other rows
    state      = train_step(state, ref_params, batch, hparams)       the library's pure update

with N = B * G_max rows, group-major. Nothing leaves the device, so `jax.vmap` over a leading
configuration axis of (train state, sampling key, HParams (epsilon, epsilon_high, beta,
temperature), group size G) runs C configurations -- seeds x (eps, beta) x G -- as ONE compiled
program (`build_sweep`). The reference params are shared (not vmapped).

Group-size ablations share one shape: every configuration samples G_max completions per prompt and
uses only the first G of each group (row mask m_i = [i mod G_max < G]). Configurations with the
same seed and initial params therefore see the very same samples at the first iteration (their
first G rows are identical); later they diverge with their policies. That this equals a genuine
group_size = G run is exact, not approximate:
  - advantages: mean / std over the G used rows of each group (`masked_group_advantages`), which
    equals `advantages.group_advantages` on those rows alone;
  - loss: unused rows get completion mask 0, so they add nothing to the token sums. The "grpo" and
    "dr_grpo" aggregations divide by the row count N_max instead of N = B * G, a factor
    c = G_max / G too small. The surrogate min(rho*A, clip(rho)*A) is positively homogeneous in A,
    so feeding c*A and c*beta scales the whole per-token objective by c and restores the loss of
    the G-row batch exactly (token-mean metrics -- kl, clip_fraction, entropy -- are masked means
    and need nothing). "bnpo" already divides by the token count: c = 1.
The cost: sampling and the update also run on the G_max - G unused rows of each group.

The arithmetic verifier in JAX (`arithmetic_reward_jax`) reproduces `rewards.correctness` with the
character tokenizer exactly, for any token sequence -- not just the well-formed
"<answer>\\n47\\n</answer>" span: answer-tag counting over tag tokens and spelled-out tags, special
tokens dropped as `decode` drops them, strip, and `normalize_number`'s grammar (signs, `$`, `\\$`,
thousands groups and `{,}`, fractions, a trailing period) as a small DFA scanned over the answer.
Golds must be integers (`encode_answers` checks). tests/test_sweep.py checks agreement on sampled
and mutated completions.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grpo_jax import advantages as adv_lib
from grpo_jax import model as model_lib
from grpo_jax import rewards as rewards_lib
from grpo_jax import sampling
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts


# --------------------------------------------------------------------------------------------------
# The arithmetic verifier as a JAX function of token ids
# --------------------------------------------------------------------------------------------------
# Token classes. SKIP: dropped by decode (specials, ids outside the tokenizer); EOS ends the text.
SKIP, EOS, WS, DOLLAR, BACKSLASH, PLUS, MINUS, DIGIT, COMMA, DOT, LBRACE, RBRACE, OTHER, OPEN, CLOSE = range(15)
_CHAR_CLASS = {" ": WS, "\n": WS, "\t": WS, "$": DOLLAR, "\\": BACKSLASH, "+": PLUS, "-": MINUS, ",": COMMA,
               ".": DOT, "{": LBRACE, "}": RBRACE, **{d: DIGIT for d in "0123456789"}}


class VerifierTables(NamedTuple):
    """Lookup tables for `arithmetic_reward_jax`, built once from the tokenizer by `verifier_tables`."""
    token_class: jax.Array  # i32[V] class of each token id (constants above)
    digit_value: jax.Array  # i32[V] 0..9 for digit tokens, 0 otherwise
    open_chars: jax.Array  # i32[8] ids spelling "<answer>" one character at a time (-2 if not spellable)
    close_chars: jax.Array  # i32[9] ids spelling "</answer>"


def verifier_tables(tokenizer, vocab_size: int | None = None) -> VerifierTables:
    """Tables for a character tokenizer (`tokenizer.char_tokenizer`): every token decodes to one
    character, except the specials (dropped), EOS and the format tags. `vocab_size` (the model's,
    may exceed the tokenizer's) sizes the tables; extra ids decode to nothing (SKIP)."""
    n = len(tokenizer) if vocab_size is None else max(vocab_size, len(tokenizer))
    cls = np.full(n, SKIP, np.int32)
    digit = np.zeros(n, np.int32)
    char_id = {}
    special = set(tokenizer.all_special_ids)
    for tok_str, i in tokenizer.get_vocab().items():
        if i == tokenizer.eos_token_id:
            cls[i] = EOS
        elif i in special:
            cls[i] = SKIP
        elif tok_str == "<answer>":
            cls[i] = OPEN
        elif tok_str == "</answer>":
            cls[i] = CLOSE
        elif tok_str in tok_lib.FORMAT_TAGS:
            cls[i] = OTHER
        elif len(tok_str) == 1:
            cls[i] = _CHAR_CLASS.get(tok_str, OTHER)
            digit[i] = int(tok_str) if tok_str.isdigit() else 0
            char_id[tok_str] = i
        else:
            raise ValueError(f"verifier_tables needs a character tokenizer; token {i} is {tok_str!r}")
    spell = lambda s: np.array([char_id.get(ch, -2) for ch in s], np.int32)  # noqa: E731
    return VerifierTables(jnp.asarray(cls), jnp.asarray(digit), jnp.asarray(spell("<answer>")),
                          jnp.asarray(spell("</answer>")))


# The normalize_number grammar after strip (rewards._NUMBER_RE):
#     \$? [+-]? \$? \s* ( \d{1,3}(,\d{3})+ | \d+ )? ( \.\d+ )? \s* \$? \.?     with a digit somewhere,
# plus the leading/trailing whitespace strip() removes. `\$` counts as `$` and `{,}` as `,` (handled
# before the DFA). DFA input classes: 0 ws, 1 $, 2 sign, 3 digit, 4 comma, 5 dot, 6 other.
(_FAIL, _START, _DOLLAR1, _SIGNED, _PRE, _I1, _I2, _I3, _I4, _G0, _G1, _G2, _G3, _DOTN, _DOTI, _FRAC,
 _T1, _T2, _T3, _T4) = range(20)
_INT_STATES = (_I1, _I2, _I3, _I4, _G1, _G2, _G3)  # a digit that lands here is an integer digit
_ACCEPT = (_I1, _I2, _I3, _I4, _G3, _DOTI, _FRAC, _T1, _T2, _T3, _T4)


def _dfa_table() -> np.ndarray:
    t = np.full((20, 7), _FAIL, np.int32)
    ws, dollar, sign, digit, comma, dot = range(6)
    t[_START, [ws, dollar, sign, digit, dot]] = [_START, _DOLLAR1, _SIGNED, _I1, _DOTN]
    t[_DOLLAR1, [dollar, sign, ws, digit, dot]] = [_PRE, _SIGNED, _PRE, _I1, _DOTN]
    t[_SIGNED, [dollar, ws, digit, dot]] = [_PRE, _PRE, _I1, _DOTN]
    t[_PRE, [ws, digit, dot]] = [_PRE, _I1, _DOTN]
    for state, nxt in ((_I1, _I2), (_I2, _I3), (_I3, _I4), (_I4, _I4)):  # ungrouped digits
        t[state, [digit, dot, ws, dollar]] = [nxt, _DOTI, _T1, _T2]
    t[[_I1, _I2, _I3], comma] = _G0  # "1,234": the first group has 1-3 digits
    t[_G0, digit], t[_G1, digit], t[_G2, digit] = _G1, _G2, _G3
    t[_G3, [comma, dot, ws, dollar]] = [_G0, _DOTI, _T1, _T2]
    t[_DOTN, digit] = _FRAC  # ".5"
    t[_DOTI, [digit, ws]] = [_FRAC, _T4]  # "5.5" or the trailing period of "5."
    t[_FRAC, [digit, ws, dollar, dot]] = [_FRAC, _T1, _T2, _T3]
    t[_T1, [ws, dollar, dot]] = [_T1, _T2, _T3]
    t[_T2, [dot, ws]] = [_T3, _T4]
    t[_T3, ws] = _T4
    t[_T4, ws] = _T4
    return t


_DFA = _dfa_table()
#                 SKIP EOS WS $  \  +  -  D  ,  .  {  }  X  OPEN CLOSE   (a \ or { that survives is "other")
_DFA_INPUT = np.array([6, 6, 0, 1, 6, 2, 2, 3, 4, 5, 6, 6, 6, 6, 6], np.int32)


def _spelled(tokens: jax.Array, chars: jax.Array) -> jax.Array:
    """bool[N, T]: the characters `chars` i32[K] start at position t of tokens i32[N, T]."""
    n, t = tokens.shape
    k = chars.shape[0]
    padded = jnp.concatenate([tokens, jnp.full((n, k), -1, tokens.dtype)], axis=1)  # [N, T+K]
    hits = jnp.stack([padded[:, j : j + t] == chars[j] for j in range(k)], axis=0)  # [K, N, T]
    return hits.all(axis=0)


def arithmetic_reward_jax(tokens: jax.Array, mask: jax.Array, answer_tokens: jax.Array,
                          answer_mask: jax.Array, *, tables: VerifierTables) -> jax.Array:
    """f32[N]: `rewards.correctness(decode(completion), gold, style="reasoning")`, on token ids.

    tokens i32[N, T], mask [N, T] (a Rollout's); answer_tokens i32[N, A] / answer_mask [N, A]: the
    canonical integer gold ("-?[0-9]+", no leading zeros; `encode_answers`) of each row, left-aligned.
    1.0 iff the text (masked tokens up to the first EOS, specials dropped) holds exactly one
    "<answer" and one "</answer", each part of a full tag, in order, and the stripped text between
    them is one number (normalize_number) equal to the gold.
    """
    n, t = tokens.shape
    vocab = tables.token_class.shape[0]
    tokens = tokens.astype(jnp.int32)
    cls = jnp.where((tokens >= 0) & (tokens < vocab), tables.token_class[jnp.clip(tokens, 0, vocab - 1)], SKIP)
    before_eos = jnp.cumsum(cls == EOS, axis=1) == 0  # decode_completions cuts at the first EOS
    valid = (mask > 0) & before_eos & (cls != SKIP)  # [N, T]
    # Compact each row to its decoded characters (dropped tokens removed, order kept).
    order = jnp.argsort(~valid, axis=1, stable=True)  # [N, T]
    pos = jnp.arange(t)[None, :]
    live = pos < valid.sum(axis=1, keepdims=True)  # [N, T]
    tok = jnp.where(live, jnp.take_along_axis(tokens, order, axis=1), -1)
    cls = jnp.where(live, jnp.take_along_axis(cls, order, axis=1), SKIP)

    # "<answer" / "</answer" occurrences: a tag token, or the characters spelling it out (a match
    # cannot straddle a tag token and characters: tags end in ">", which neither prefix contains).
    open_full = _spelled(tok, tables.open_chars)
    close_full = _spelled(tok, tables.close_chars)
    open_any = (cls == OPEN) | _spelled(tok, tables.open_chars[:7]) & live
    close_any = (cls == CLOSE) | _spelled(tok, tables.close_chars[:8]) & live
    i_open = jnp.argmax(open_any, axis=1)[:, None]  # [N, 1] the only occurrence when the count is 1
    i_close = jnp.argmax(close_any, axis=1)[:, None]
    at = lambda x, i: jnp.take_along_axis(x, i, axis=1)[:, 0]  # noqa: E731
    open_tag_token = at(cls, i_open) == OPEN
    open_len = jnp.where(open_tag_token, 1, 8)[:, None]
    structure = ((open_any.sum(1) == 1) & (close_any.sum(1) == 1)
                 & (open_tag_token | at(open_full, i_open)) & ((at(cls, i_close) == CLOSE) | at(close_full, i_close))
                 & (i_close[:, 0] >= i_open[:, 0] + open_len[:, 0]))
    content = (pos >= i_open + open_len) & (pos < i_close)  # [N, T] the answer text, unstripped

    # The stripped answer is at most MAX_NUMBER_CHARS characters (normalize_number's limit).
    nonblank = content & (cls != WS)
    first = jnp.argmax(nonblank, axis=1)
    last = t - 1 - jnp.argmax(nonblank[:, ::-1], axis=1)
    short = (last - first + 1) <= rewards_lib.MAX_NUMBER_CHARS

    # normalize_number's replacements: "\$" -> "$", "{,}" -> ","; the \ { } involved become
    # transparent, a \ { } left over is "other" (the regex rejects it).
    nxt = lambda x, k: jnp.concatenate([x[:, k:], jnp.full((n, k), SKIP, x.dtype)], axis=1)  # noqa: E731
    prv = lambda x, k: jnp.concatenate([jnp.full((n, k), SKIP, x.dtype), x[:, :-k]], axis=1)  # noqa: E731
    c_in = jnp.where(content, cls, SKIP)
    escape = (c_in == BACKSLASH) & (nxt(c_in, 1) == DOLLAR)
    brace_l = (c_in == LBRACE) & (nxt(c_in, 1) == COMMA) & (nxt(c_in, 2) == RBRACE)
    brace_r = (c_in == RBRACE) & (prv(c_in, 1) == COMMA) & (prv(c_in, 2) == LBRACE)
    active = content & ~(escape | brace_l | brace_r)  # [N, T] characters the regex sees
    dfa_in = jnp.asarray(_DFA_INPUT)[cls]  # [N, T]
    table = jnp.asarray(_DFA)

    def scan_step(state, x):
        inp, act = x  # [N], [N]
        state = jnp.where(act, table[state, inp], state)
        return state, state

    final, states = jax.lax.scan(scan_step, jnp.full((n,), _START, jnp.int32), (dfa_in.T, active.T))
    states = states.T  # [N, T] state after each character
    accept = jnp.isin(final, jnp.asarray(_ACCEPT))

    # Value: integer digits compared to the gold's by place (units, tens, ...); leading zeros are
    # zeros on both sides. Fraction digits must all be 0 (the golds are integers).
    digit = tables.digit_value[jnp.clip(tok, 0, vocab - 1)]
    is_int = active & (cls == DIGIT) & jnp.isin(states, jnp.asarray(_INT_STATES))
    is_frac = active & (cls == DIGIT) & (states == _FRAC)
    width = max(t, answer_tokens.shape[1])

    def by_place(digits, is_digit):  # [N, L] -> [N, width]: digit at place 0 (units), 1, ...
        place = jnp.cumsum(is_digit[:, ::-1], axis=1)[:, ::-1] - 1  # [N, L] places from the right
        onehot = (place[:, :, None] == jnp.arange(width)) & is_digit[:, :, None]  # [N, L, width]
        return (onehot * digits[:, :, None]).sum(axis=1)

    gold = answer_tokens.astype(jnp.int32)
    gold_live = answer_mask > 0
    gold_cls = jnp.where(gold_live, tables.token_class[jnp.clip(gold, 0, vocab - 1)], SKIP)
    gold_digit = gold_live & (gold_cls == DIGIT)
    gold_value = by_place(tables.digit_value[jnp.clip(gold, 0, vocab - 1)], gold_digit)
    gold_negative = (gold_cls == MINUS).any(axis=1)
    same_magnitude = (by_place(digit, is_int) == gold_value).all(axis=1) & ~(is_frac & (digit != 0)).any(axis=1)
    # "-0" normalises to "0": the sign counts only for a nonzero value.
    negative = (active & (cls == MINUS)).any(axis=1) & (gold_value != 0).any(axis=1)
    ok = structure & short & accept & same_magnitude & (negative == gold_negative)
    return ok.astype(jnp.float32)


def encode_answers(tokenizer, golds, *, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Canonical integer golds -> (answer_tokens i32[N, max_length], answer_mask i32[N, max_length])."""
    tokens = np.zeros((len(golds), max_length), np.int32)
    mask = np.zeros((len(golds), max_length), np.int32)
    for i, gold in enumerate(golds):
        canon = rewards_lib.normalize_number(str(gold))
        if canon is None or "." in canon:
            raise ValueError(f"encode_answers: gold {gold!r} is not an integer")
        ids = tokenizer(canon, add_special_tokens=False)["input_ids"]
        if len(ids) > max_length:
            raise ValueError(f"encode_answers: gold {gold!r} has {len(ids)} tokens > max_length={max_length}")
        tokens[i, : len(ids)] = ids
        mask[i, : len(ids)] = 1
    return tokens, mask


# --------------------------------------------------------------------------------------------------
# Group-size-masked advantages
# --------------------------------------------------------------------------------------------------
def masked_group_advantages(rewards: jax.Array, max_group_size: int, group_size, *, scale: str = "group",
                            ddof: int = 1, eps: float = 1e-4) -> jax.Array:
    """f32[N] rewards in groups of `max_group_size` -> f32[N] advantages computed over the first
    `group_size` rows of each group only (0 on the others). `group_size` may be traced. It is
    `advantages.group_advantages` (the one implementation, tied-group rule included) with a row mask."""
    n = jnp.shape(rewards)[0]
    used = jnp.arange(n) % max_group_size < group_size  # [N]: the first G rows of each group
    return adv_lib.group_advantages(rewards, max_group_size, scale=scale, ddof=ddof, eps=eps, mask=used)


# --------------------------------------------------------------------------------------------------
# One GRPO iteration, and the vmapped sweep
# --------------------------------------------------------------------------------------------------
class Prompts(NamedTuple):
    prompt_tokens: jax.Array  # i32[B, P] left-padded
    prompt_mask: jax.Array  # i32[B, P]
    answer_tokens: jax.Array  # i32[B, A] canonical integer gold, left-aligned
    answer_mask: jax.Array  # i32[B, A]


def encode_batch(tokenizer, examples, *, max_prompt_length: int, max_answer_length: int = 8,
                 prompt_fn: Callable = lambda e: e.prompt) -> Prompts:
    """Host-side: arithmetic `Example`s -> Prompts (numpy)."""
    tokens, mask = tok_lib.encode_prompts(tokenizer, [prompt_fn(e) for e in examples], max_length=max_prompt_length)
    answers, answer_mask = encode_answers(tokenizer, [e.answer for e in examples], max_length=max_answer_length)
    return Prompts(tokens, mask, answers, answer_mask)


def build_masked_update(model_config: model_lib.ModelConfig, optimizer: optax.GradientTransformation, *,
                        group_size: int, max_new_tokens: int, scale_rewards: str = "group",
                        loss_type: str = "grpo", importance_level: str = "token", num_iterations: int = 1,
                        num_minibatches: int = 1, use_reference: bool = True, advantage_eps: float = 1e-4):
    """Returns the pure `update(state, ref_params, batch, rewards, hparams, used_group_size)
    -> (state, metrics)`: `batch` (a train_step.Batch whose advantages are ignored) holds groups of
    `group_size` (= G_max) rows; only the first `used_group_size` rows of each group count, exactly
    as a train step on those rows alone with group_size = used_group_size would (module docstring)."""
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2, got {group_size}")
    step = ts.build_train_step(model_config, optimizer, loss_type=loss_type, importance_level=importance_level,
                               num_iterations=num_iterations, num_minibatches=num_minibatches,
                               use_reference=use_reference, max_completion_length=max_new_tokens)
    g_max = group_size

    def update(state: ts.TrainState, ref_params, batch: ts.Batch, rewards, hp: ts.HParams, used_group_size=None):
        g = g_max if used_group_size is None else used_group_size
        n = rewards.shape[0]
        used = (jnp.arange(n) % g_max < g).astype(jnp.float32)  # [N] row mask: first g rows of each group
        advantages = masked_group_advantages(rewards, g_max, g, scale=scale_rewards, eps=advantage_eps)
        # Rescale so the row-count aggregations divide by B*g, not B*g_max (module docstring).
        c = 1.0 if loss_type == "bnpo" else g_max / jnp.asarray(g, jnp.float32)
        batch = batch._replace(completion_mask=batch.completion_mask * used[:, None], advantages=advantages * c)
        state, metrics = step(state, ref_params, batch, hp._replace(beta=hp.beta * c))
        count = used.sum()
        metrics["advantage_abs_mean"] = (jnp.abs(advantages) * used).sum() / count
        metrics["reward_mean"] = (rewards * used).sum() / count
        metrics["completion_length"] = (batch.completion_mask.sum(axis=1) * used).sum() / count
        # Groups whose used rows all got the same reward: advantage 0, no learning signal.
        grouped, used_g = rewards.reshape(-1, g_max), used.reshape(-1, g_max)
        spread = jnp.where(used_g > 0, grouped, -jnp.inf).max(1) - jnp.where(used_g > 0, grouped, jnp.inf).min(1)
        metrics["zero_std_fraction"] = jnp.mean(spread == 0)
        return state, metrics

    return update


def build_grpo_iteration(model_config: model_lib.ModelConfig, optimizer: optax.GradientTransformation,
                         reward_fn: Callable, *, group_size: int, max_new_tokens: int, eos_id,
                         top_k: int = 0, top_p: float = 1.0, **update_kwargs):
    """Returns the pure `iteration(state, ref_params, prompts, key, hparams, used_group_size)
    -> (state, metrics)`: sample `group_size` (= G_max) completions per prompt, reward them with
    `reward_fn(tokens, mask, answer_tokens, answer_mask) -> f32[N]`, take advantages over the first
    `used_group_size` (traced int, <= G_max; G_max when None) rows of each group, update.
    `update_kwargs`: scale_rewards, loss_type, importance_level, num_iterations, num_minibatches,
    use_reference, advantage_eps (see `build_masked_update`).

    Every argument but `ref_params` and `prompts` can carry a vmapped configuration axis."""
    update = build_masked_update(model_config, optimizer, group_size=group_size, max_new_tokens=max_new_tokens,
                                 **update_kwargs)
    g_max = group_size

    def iteration(state: ts.TrainState, ref_params, prompts: Prompts, key, hp: ts.HParams, used_group_size=None):
        rep = lambda x: jnp.repeat(jnp.asarray(x), g_max, axis=0)  # noqa: E731  [B, ...] -> [N, ...] group-major
        prompt_tokens, prompt_mask = rep(prompts.prompt_tokens), rep(prompts.prompt_mask)
        rollout = sampling.sample_traced(model_config, state.params, prompt_tokens, prompt_mask, key,
                                         max_new_tokens=max_new_tokens, eos_id=eos_id,
                                         temperature=hp.temperature, top_k=top_k, top_p=top_p)
        rewards = reward_fn(rollout.tokens, rollout.mask, rep(prompts.answer_tokens), rep(prompts.answer_mask))
        batch = ts.Batch(prompt_tokens, prompt_mask, rollout.tokens, rollout.mask, jnp.zeros_like(rewards))
        return update(state, ref_params, batch, rewards, hp, used_group_size)

    return iteration


def build_sweep(iteration) -> Callable:
    """jit(vmap(iteration)) over a leading configuration axis of (state, key, hparams, group size);
    ref_params and prompts are shared. One compiled program for all configurations."""
    return jax.jit(jax.vmap(iteration, in_axes=(0, None, None, 0, 0, 0)))


def init_state(params, optimizer: optax.GradientTransformation) -> ts.TrainState:
    """An unsharded TrainState (one device): step 0, `params`, fresh optimizer state."""
    return ts.TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))


def stack(tree, num: int):
    """Broadcast a pytree to a leading configuration axis of size `num`."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (num, *jnp.shape(x))), tree)


def sweep_hparams(*, epsilon, beta, temperature=1.0, epsilon_high=None) -> ts.HParams:
    """Per-configuration HParams (each a sequence of length C, or a scalar broadcast to C)."""
    size = max(np.size(x) for x in (epsilon, beta, temperature, epsilon_high if epsilon_high is not None else 0))
    vec = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (size,))  # noqa: E731
    eps = vec(epsilon)
    return ts.HParams(eps, eps if epsilon_high is None else vec(epsilon_high), vec(beta), vec(temperature))


def run_sweep(sweep_fn, state, ref_params, prompts_fn: Callable[[int], Prompts], keys, hparams: ts.HParams,
              group_sizes, *, steps: int, start: int = 0, callback: Callable | None = None):
    """Run `steps` iterations of a `build_sweep` program. keys: [C] typed keys (one seed per
    configuration); iteration s samples with fold_in(keys[c], s) and the prompts `prompts_fn(s)`.
    Returns (state, history): history[k] is a dict of numpy [C] metrics after iteration start+k.
    Metrics are fetched every iteration (which also blocks, see ENVIRONMENT.md)."""
    group_sizes = jnp.asarray(group_sizes, jnp.int32)
    history = []
    for s in range(start, start + steps):
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, s))(keys)
        state, metrics = sweep_fn(state, ref_params, prompts_fn(s), step_keys, hparams, group_sizes)
        history.append({k: np.asarray(v) for k, v in jax.device_get(metrics).items()})
        if callback is not None:
            callback(s, history[-1])
    return state, history


# ==================================================================================================
# `python -m grpo_jax.sweep`: a grid of configurations x seeds, for any task, verifier and model
# ==================================================================================================
# What one compiled program can carry per cell: traced scalars of the step (HParams), the sampling
# key (the seed), the learning rate (a factor on the optimizer's updates, which are linear in it) and
# the group size (a row mask over G_max rows per prompt). Cells that differ in anything else (a loss
# type, a model, a task, a length) run one after another.
VMAPPED_KEYS = ("train.seed", "grpo.beta", "grpo.epsilon", "grpo.epsilon_high", "sampling.temperature",
                "optim.learning_rate", "grpo.group_size")
SWEEP_FILE = "sweep.json"
SWEEP_USAGE = ("usage: python -m grpo_jax.sweep --config experiments/NAME.py --grid KEY=V1,V2 [--grid ...] "
               "--seeds N --workdir runs/sweeps/NAME [--config.KEY=VALUE ...] [--cells_per_program C] "
               "[--one_program]")


class Cell(NamedTuple):
    """One (configuration, seed) of a grid: an ordinary training run in its own workdir."""
    index: int
    label: str  # the configuration: "grpo.beta=0.0 grpo.epsilon_high=0.28" (its seeds share it)
    seed: int  # train.seed
    values: dict  # grid key -> value
    overrides: tuple  # KEY=VALUE strings that make this cell's config from the experiment file
    config: Any  # cfg_lib.Config, validated
    workdir: Any  # pathlib.Path


def parse_grid(specs) -> dict:
    """["grpo.beta=0,0.04", ...] -> {"grpo.beta": ["0", "0.04"]} (texts, parsed by the config's
    own override parser later); a key given twice, or with no value, is an error naming it."""
    from grpo_jax import ConfigError
    grid = {}
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--grid {spec!r} must look like section.key=value1,value2")
        key, text = spec.split("=", 1)
        values = [v.strip() for v in text.split(",")]
        if not all(values):
            raise ConfigError(f"--grid {key}: empty value in {text!r}")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice")
        if key == "train.seed":
            raise ConfigError("--grid train.seed: seeds are given by --seeds N (train.seed, train.seed + 1, ...)")
        grid[key] = values
    return grid


def expand_grid(config_path, overrides, grid: dict, seeds: int, workdir, *, num_devices=None,
                platform=None) -> list:
    """Every (configuration x seed) cell, each config loaded and validated (against the devices when
    given): an unknown key or an invalid value is a ConfigError naming the key and the cell, before
    any work. Cells are numbered configuration-major; seeds are train.seed, train.seed + 1, ..."""
    import itertools
    import pathlib

    from grpo_jax import ConfigError
    from grpo_jax import config as cfg_lib

    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: need at least 1")
    base = cfg_lib.load_config(config_path, list(overrides))
    for key, values in grid.items():  # an unknown key or an unparsable value, named once
        for v in values:
            cfg_lib.apply_overrides(base, [f"{key}={v}"])
    cells = []
    for combo in itertools.product(*grid.values()):
        assignment = [f"{k}={v}" for k, v in zip(grid, combo)]
        parsed = cfg_lib.to_dict(cfg_lib.apply_overrides(base, assignment))
        values = {k: parsed[k.split(".")[0]][k.split(".")[1]] if k.count(".") == 1 else v
                  for k, v in zip(grid, combo)}
        label = " ".join(f"{k}={values[k]}" for k in grid) or "base"
        for k in range(seeds):
            seed = base.train.seed + k
            cell_overrides = tuple(overrides) + tuple(assignment) + (f"train.seed={seed}",)
            try:
                config = cfg_lib.validate(cfg_lib.apply_overrides(base, [*assignment, f"train.seed={seed}"]),
                                          num_devices=num_devices, platform=platform)
            except ConfigError as e:
                raise ConfigError(f"grid cell {label!r} (seed {seed}): {e}") from None
            index = len(cells)
            name = f"{index:03d}-" + "-".join(f"{k.split('.')[-1]}={values[k]}" for k in grid) + f"-seed{seed}"
            cells.append(Cell(index, label, seed, values, cell_overrides, config,
                              pathlib.Path(workdir) / "cells" / name.replace("/", "_")))
    return cells


def _program_key(cell: Cell):
    """What must be equal for cells to share one compiled program: the config without VMAPPED_KEYS.
    DAPO dynamic sampling (a per-cell host loop) runs each cell alone, through the trainer."""
    from grpo_jax import config as cfg_lib
    d = cfg_lib.to_dict(cell.config)
    for key in VMAPPED_KEYS:
        section, name = key.split(".")
        d[section] = {k: v for k, v in d[section].items() if k != name}
    alone = cell.config.grpo.dynamic_sampling
    return json.dumps(d, sort_keys=True, default=str) + (f"#alone{cell.index}" if alone else "")


def plan_programs(cells: list, *, cells_per_program: int | None = None, one_program: bool = False) -> list:
    """Cells partitioned into programs (lists of cells, each run as one vmapped program; a cell with
    dynamic sampling runs alone through `python -m grpo_jax.train`), at most `cells_per_program` each. `one_program`: refuse a grid that
    needs more than one kind of program, naming the keys that cannot vary inside one."""
    from grpo_jax import ConfigError
    from grpo_jax import config as cfg_lib

    groups = {}
    for cell in cells:
        groups.setdefault(_program_key(cell), []).append(cell)
    if one_program and len(groups) > 1:
        first = cfg_lib.to_dict(cells[0].config)
        differ = sorted({f"{s}.{k}" for cell in cells for s, sec in cfg_lib.to_dict(cell.config).items()
                         for k, v in sec.items() if v != first[s][k]} - set(VMAPPED_KEYS))
        why = f"keys {', '.join(differ)} cannot vary inside one program" if differ else \
            "grpo.dynamic_sampling runs each cell alone"
        raise ConfigError(f"--one_program: {why} (vmapped: {', '.join(VMAPPED_KEYS)})")
    size = cells_per_program or len(cells)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def _write_sweep_file(workdir, config_path, overrides, grid, seeds, cells) -> None:
    """sweep.json: what the grid is and where each cell lives (read by `grpo_jax.report`). A sweep
    directory holds one grid: running again with another is an error, not a mixture."""
    import pathlib

    from grpo_jax import ConfigError
    workdir = pathlib.Path(workdir)
    record = {"config": str(config_path), "overrides": list(overrides), "grid": {k: list(v) for k, v in grid.items()},
              "seeds": [c.seed for c in cells if c.label == cells[0].label],
              "cells": [{"workdir": str(c.workdir.relative_to(workdir)), "label": c.label, "seed": c.seed,
                         "values": c.values} for c in cells]}
    path = workdir / SWEEP_FILE
    if path.exists():  # a resume: the same grid and seeds (each cell's config is checked by the trainer's rule)
        old = json.loads(path.read_text())
        if {k: old.get(k) for k in ("grid", "seeds", "cells")} != {k: record[k] for k in ("grid", "seeds", "cells")}:
            raise ConfigError(f"{path} holds another grid or other seeds; use a new --workdir")
        if old.get("overrides") == record["overrides"]:
            return
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)


def _scaled_updates(optimizer: optax.GradientTransformation, factor) -> optax.GradientTransformation:
    """`optimizer` with its updates times `factor` (a traced per-cell scalar): the updates of AdamW
    under a learning-rate schedule are linear in the learning rate (weight decay included), so
    factor = lr_cell / lr_program gives the cell's own learning rate; the state is unchanged (a
    cell's checkpoint is an ordinary run's)."""
    def update(updates, state, params=None):
        updates, state = optimizer.update(updates, state, params)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state
    return optax.GradientTransformation(optimizer.init, update)


def _stacked_sharding(tree_of_shardings):
    """A sharding per leaf for the same tree with a leading cell axis (replicated)."""
    return jax.tree.map(lambda sh: jax.sharding.NamedSharding(sh.mesh, jax.sharding.PartitionSpec(None, *sh.spec)),
                        tree_of_shardings)


def _stack(trees: list, shardings):
    """[tree, ...] -> one tree with a leading cell axis, placed on `shardings` (per leaf, stacked)."""
    return jax.jit(lambda *xs: jax.tree.map(lambda *leaves: jnp.stack(leaves), *xs), out_shardings=shardings)(*trees)


def _cell(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def program_batch_sharding(mesh):
    """[C, N, ...] arrays of a program: the cell axis replicated, the rows over the batch axes."""
    from grpo_jax import sharding
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH_AXES))


def program_functions(c0, mc: model_lib.ModelConfig, optimizer: optax.GradientTransformation, mesh, *, eos_ids,
                      use_reference: bool, second_axis, state_sh, second_sh):
    """The two jitted programs of a sweep program of C cells (config `c0`, its group size G_max):

      step(state [C], second, batch [C, N, ...], hparams [C], lr_factor [C]) -> (state, metrics [C])
          vmapped `train_step.build_train_step` (the trainer's step), the state donated; `second` is the
          reference or LoRA's frozen base, shared (second_axis None) or one per cell (0)
      sample(params [C], frozen, prompt_tokens [C, N, P], prompt_mask, keys [C], temperatures [C])
          -> (tokens, mask) [C, N, T]: vmapped `sampling.sample_traced`, G_max rows per prompt

    `state_sh`: the stacked TrainState shardings. `grpo_jax.plan --cells C` compiles the same two."""
    from grpo_jax import sharding

    g, sp = c0.grpo, c0.sampling
    lora = mc.lora_rank > 0
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    batch_sh = program_batch_sharding(mesh)

    def cell_step(state, second, batch, hp, lr_factor):
        step = ts.build_train_step(
            mc, _scaled_updates(optimizer, lr_factor), loss_type=g.loss_type,
            importance_level=g.importance_level, num_iterations=g.num_iterations,
            num_minibatches=c0.train.num_minibatches, steps_per_generation=c0.train.steps_per_generation,
            use_reference=use_reference, max_completion_length=sp.max_new_tokens, lora=lora,
            shared_prefix=c0.train.shared_prefix, group_size=g.group_size)
        return step(state, second, batch, hp)

    step_fn = jax.jit(sharding.under_mesh(jax.vmap(cell_step, in_axes=(0, second_axis, 0, 0, 0)), mesh),
                      in_shardings=(state_sh, second_sh, batch_sh, rep, rep),
                      out_shardings=(state_sh, rep), donate_argnums=(0,))

    def sample_cells(params, frozen, ptok, pmask, step_keys, temps):
        def one(p, t, m, k, temp):
            r = sampling.sample_traced(mc, model_lib.merge_lora(frozen, p) if lora else p, t, m, k,
                                       max_new_tokens=sp.max_new_tokens, eos_id=eos_ids, temperature=temp,
                                       top_k=sp.top_k, top_p=sp.top_p, group_size=g.group_size, logps=False)
            return r.tokens, r.mask
        return jax.vmap(one)(params, ptok, pmask, step_keys, temps)

    sampler = jax.jit(sample_cells, in_shardings=(state_sh.params, second_sh if lora else None, batch_sh, batch_sh,
                                                  rep, rep), out_shardings=batch_sh)
    return step_fn, sampler


def run_program(cells: list, *, log=print) -> None:
    """Trains the cells of one program (`plan_programs`) together: per step, one vmapped sampler call
    for every cell (G_max completions per prompt), each cell's completions scored by its verifiers on
    the host (`rollout.score`, as the trainer does), advantages over each cell's first G rows
    (`rollout.update_inputs` on them: the trainer's own), then one vmapped `train_step` (row_mask 0 on
    the rows a smaller G does not use: no loss, no place in any denominator). Each cell logs, evaluates
    and checkpoints into its own workdir as `train.run` would; a workdir with checkpoints resumes, and
    all cells of the program resume from the latest step they all hold."""
    import pathlib
    import sys
    import time

    from grpo_jax import build, buckets, rollout, sft, sharding
    from grpo_jax import checkpoint as ckpt_lib
    from grpo_jax import config as cfg_lib
    from grpo_jax import metrics as metrics_lib
    from grpo_jax import evaluate as eval_lib
    from grpo_jax import tasks as tasks_lib
    from grpo_jax import weights as weights_lib

    C = len(cells)
    configs = []
    for cell in cells:  # the trainer's own checks and config.json, per cell
        config = build.schedule_horizon(cfg_lib.from_dict(cfg_lib.to_dict(cell.config)), cell.workdir)
        build.check_workdir_config(cell.workdir, config)
        configs.append(config)
    g_max = max(c.grpo.group_size for c in configs)
    c0 = cfg_lib.from_dict(cfg_lib.to_dict(configs[0]))
    c0.grpo.group_size = g_max
    ckpts = [ckpt_lib.Checkpointer(cell.workdir / "checkpoints", max_to_keep=c.train.max_checkpoints,
                                   async_save=True) for cell, c in zip(cells, configs)]
    try:
        common = set.intersection(*(set(ck.all_steps()) for ck in ckpts))
        start = max(common) if common else None
        if start is None and any(ck.all_steps() for ck in ckpts):
            raise cfg_lib.ConfigError(f"the cells {[str(c.workdir) for c in cells]} hold checkpoints of no "
                                      "common step: they were not written by one program; use a new --workdir")
        lora = c0.model.lora_rank > 0
        s = build.setup(c0, cells[0].workdir, load_weights=start is None or lora)
        for cell, c in zip(cells, configs):
            cell.workdir.mkdir(parents=True, exist_ok=True)
            if jax.process_index() == 0:
                tmp = cell.workdir / f"config.json.tmp{os.getpid()}"
                tmp.write_text(json.dumps(cfg_lib.to_dict(c), indent=2, sort_keys=True))
                os.replace(tmp, cell.workdir / "config.json")
        # Per cell: its task (the data order follows train.seed), verifiers and config; one model.
        setups = []
        for c in configs:
            task, counts = tasks_lib.fit_prompts(tasks_lib.from_config(c), s.tokenizer, c)
            setups.append(s._replace(config=c, task=task, verifiers=rewards_lib.from_config(c, task), params=None,
                                     prompt_counts=counts))
        writers = [metrics_lib.MetricsWriter(cell.workdir, progress=False, progress_total=c.train.steps,
                                             resume_step=-1 if start is None else start)
                   for cell, c in zip(cells, configs)]
        mc, mesh = s.model_config, s.mesh
        optimizer = ts.optimizer_from_config(configs[0])
        use_reference = any(c.grpo.beta > 0 for c in configs)
        base = s.params  # loaded (or random-init) weights of cell 0's seed; LoRA: the frozen base
        shared_start = lora or (c0.model.path and c0.sft.steps == 0) or len({c.train.seed for c in configs}) == 1

        def start_params(i, sft_rows=None):  # a cell's policy before GRPO: init (or load) + SFT, as train.run
            c = configs[i]
            if lora:
                return build.init_adapters(setups[i]._replace(params=base))
            if c.train.seed == configs[0].train.seed or shared_start and c0.sft.steps == 0:
                params = base
            elif c.model.path:
                params = weights_lib.from_config(c, s.tokenizer, mesh)[1]
            else:
                params = sharding.init_params_sharded(mc, jax.random.key(c.train.seed), mesh)
            if c.sft.steps > 0:
                log(f"SFT warm start of {cells[i].workdir.name}: {c.sft.steps} steps")
                params = sft.warm_start(setups[i]._replace(params=params), lambda step, m: sft_rows is not None and
                                        sft_rows.append({(k if k.startswith("sft_") else f"sft_{k}"): v
                                                         for k, v in m.items()} | {"sft_step": step}))
            return params

        abstract = (build.abstract_adapters(mc, mesh) if lora else weights_lib.abstract_params(mc, mesh))
        state_sh = ts.state_shardings(mesh, optimizer, abstract)
        stacked_state_sh = _stacked_sharding(state_sh)
        ref_sh = None
        if use_reference and not lora:
            ref_sh = sharding.param_shardings(mesh, build.abstract_reference(mc, abstract))
        if start is None:
            by_seed, trained = {}, []
            for i, c in enumerate(configs):
                key = None if shared_start and not lora else c.train.seed
                if key not in by_seed or lora:
                    rows = []
                    by_seed[key] = start_params(i, rows), rows
                params, rows = by_seed[key]
                for row in rows:  # every cell of a start logs its SFT, as its own run would
                    writers[i].write(0, row)
                trained.append(params)
            states = [ts.init_state(p, optimizer, mesh) for p in trained]
            refs = None
            if ref_sh is not None:  # one reference per distinct start, shared by the cells it starts
                by_start = {}
                for p in trained:
                    if id(p) not in by_start:
                        by_start[id(p)] = build.reference_params(mc, p)
                refs = [by_start[id(p)] for p in trained]
        else:  # restored onto abstract targets, each cell from its own workdir
            states, refs = [], ([] if ref_sh is not None else None)
            target_ref = build.abstract_reference(mc, abstract) if ref_sh is not None else None
            for i, (ck, c) in enumerate(zip(ckpts, configs)):
                target = {"train": ts.abstract_state(optimizer, abstract, mesh)}
                if c.grpo.beta > 0 and target_ref is not None:
                    target["ref"] = target_ref
                full, _ = ck.restore(target, step=start)
                states.append(full["train"])
                if refs is not None:
                    refs.append(full.get("ref"))
            if refs is not None:  # a beta = 0 cell saved none: a cell of the same start has it, or rebuild it
                for i, r in enumerate(refs):
                    if r is None:
                        same = [refs[j] for j, c in enumerate(configs) if refs[j] is not None and (
                            shared_start or c.train.seed == configs[i].train.seed)]
                        refs[i] = same[0] if same else build.reference_params(mc, start_params(i))
            log(f"resumed {C} cells from step {start}")
        shared_ref = refs is not None and (shared_start or all(r is refs[0] for r in refs))
        state = _stack(states, stacked_state_sh)
        # One owner for the weights, the stacked state: the per-cell trees and, in a full fine-tune, the
        # loaded weights would stay alive for the whole run (SmolLM2: 0.54 GB a copy).
        states = trained = by_seed = None
        if not lora:
            base, s = None, s._replace(params=None)
        if lora:
            second, second_axis, second_sh = base, None, sharding.param_shardings(mesh, base)
        elif refs is None:
            second, second_axis, second_sh = None, None, None
        elif shared_ref:
            second, second_axis, second_sh = refs[0], None, ref_sh
        else:
            second_sh = _stacked_sharding(ref_sh)
            second, second_axis = _stack(refs, second_sh), 0
        refs_by_cell = refs
        start = start or 0

        batch_sh = program_batch_sharding(mesh)
        put = lambda x: jax.make_array_from_callback(  # noqa: E731  [C, N, ...] numpy, rows over the batch axes
            np.shape(x), batch_sh, lambda idx, x=np.asarray(x): x[idx])
        row_masks = [np.arange(c0.train.prompts_per_step * g_max) % g_max < c.grpo.group_size for c in configs]
        use_row_mask = any(c.grpo.group_size < g_max for c in configs)
        step_fn, sampler = program_functions(c0, mc, optimizer, mesh, eos_ids=s.eos_ids, use_reference=use_reference,
                                             second_axis=second_axis, state_sh=stacked_state_sh, second_sh=second_sh)
        hp = jax.tree.map(lambda *x: jnp.stack(x), *[ts.make_hparams(
            epsilon=c.grpo.epsilon, epsilon_high=c.grpo.epsilon_high, beta=c.grpo.beta,
            temperature=c.sampling.temperature) for c in configs])
        lr_factor = jnp.asarray([c.optim.learning_rate / configs[0].optim.learning_rate for c in configs], jnp.float32)
        temperatures = hp.temperature
        schedules = [ts.schedule_from_config(c) for c in configs]
        keys = [[jax.random.fold_in(jax.random.key(c.train.seed), i) for i in (0, 1)] for c in configs]
        train_keys = jnp.stack([k[0] for k in keys])

        def policy(params):  # the sampled / evaluated policy of one cell: LoRA adds its adapters
            return model_lib.merge_lora(base, params) if lora else params

        sp = c0.sampling

        def generate(step):
            """Every cell's Generation for `step` (prompts of its own data order), and the sampler time."""
            t0 = time.perf_counter()
            b = c0.train.prompts_per_step
            examples = [[st.task.train_example(step * b + i) for i in range(b)] for st in setups]
            encoded = [tok_lib.encode_prompts(s.tokenizer, [st.task.prompt(e) for e in ex],
                                              max_length=sp.max_prompt_length, chat=c0.task.chat_template,
                                              system=c0.task.system_prompt or None)
                       for st, ex in zip(setups, examples)]
            ptok, pmask = np.stack([e[0] for e in encoded]), np.stack([e[1] for e in encoded])  # [C, B, P]
            if c0.train.length_buckets:  # one width for all cells: the bucket of the longest prompt
                t, m = buckets.trim_prompts(ptok.reshape(C * b, -1), pmask.reshape(C * b, -1))
                ptok, pmask = t.reshape(C, b, -1), m.reshape(C, b, -1)
            ptok, pmask = np.repeat(ptok, g_max, axis=1), np.repeat(pmask, g_max, axis=1)  # [C, N, P]
            step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(train_keys)
            n = b * g_max
            rows = sp.batch_size or n
            chunks = n // rows
            parts = []
            for i in range(chunks):  # as rollout.sample_rows: chunk i draws with fold_in(key, i)
                part = slice(i * rows, (i + 1) * rows)
                k = step_keys if chunks == 1 else jax.vmap(lambda key: jax.random.fold_in(key, i))(step_keys)
                parts.append(jax.device_get(sampler(state.params, base if lora else None, put(ptok[:, part]),
                                                    put(pmask[:, part]), k, temperatures)))
            tokens = np.concatenate([p[0] for p in parts], axis=1)
            mask = np.concatenate([p[1] for p in parts], axis=1).astype(np.float32)
            sampled = time.perf_counter()
            gens = []
            for j, st in enumerate(setups):
                golds = [e for e in examples[j] for _ in range(g_max)]
                rewards, components, stats, completions = rollout.score(
                    st, lambda j=j: tok_lib.decode_completions(s.tokenizer, tokens[j], mask[j], eos_id=s.eos_ids),
                    golds, mask[j].sum(axis=1))
                gens.append(rollout.Generation(examples[j], ptok[j], pmask[j], tokens[j], mask[j], rewards,
                                               components, stats, completions))
            return gens, sampled - t0, time.perf_counter() - sampled

        if start == 0 and not any(ck.all_steps() for ck in ckpts):
            for i, c in enumerate(configs):
                dropped = setups[i].prompt_counts
                row = {k: float(v) for k, v in dropped.items()}
                if c.train.eval_every:
                    row |= eval_lib.evaluate_run(setups[i], policy(_cell(state.params, i)), keys[i][1], 0,
                                                     writers[i])
                writers[i].write(0, row)
                ckpts[i].save(0, build.checkpoint_tree(c, _cell(state, i), _ref(refs_by_cell, second, second_axis, i)),
                              {"step": 0, "config_hash": cfg_lib.config_hash(c)}, force=True)

        steps = c0.train.steps
        for step in range(start, steps):
            t0 = time.perf_counter()
            gens, sample_seconds, reward_seconds = generate(step)
            t2 = time.perf_counter()
            per_cell = []
            for j, (c, gen) in enumerate(zip(configs, gens)):
                used = row_masks[j]
                sub = gen._replace(**{f: getattr(gen, f)[used] for f in ("prompt_tokens", "prompt_mask", "tokens",
                                                                          "mask", "rewards")},
                                   components={k: v[used] for k, v in gen.components.items()})
                adv_used, loss_used, ended_used = rollout.update_inputs(c, sub, np.ones(used.sum(), np.float32),
                                                                         s.eos_ids)
                adv = np.zeros(used.shape, np.float32)
                adv[used] = adv_used
                loss_mask = np.zeros_like(gen.mask)
                loss_mask[used] = loss_used
                per_cell.append((sub, adv, loss_mask, ended_used))
            ctok = np.stack([gen.tokens for gen in gens])
            cmask = np.stack([p[2] for p in per_cell])
            ptok, pmask = np.stack([gen.prompt_tokens for gen in gens]), np.stack([gen.prompt_mask for gen in gens])
            if c0.train.length_buckets:  # one width for all cells (the same loss: buckets.py)
                T = ctok.shape[-1]
                t, m = buckets.trim_completions(ctok.reshape(-1, T), cmask.reshape(-1, T), sp.max_new_tokens)
                ctok, cmask = t.reshape(C, -1, t.shape[-1]), m.reshape(C, -1, m.shape[-1])
                P = ptok.shape[-1]
                t, m = buckets.trim_prompts(ptok.reshape(-1, P), pmask.reshape(-1, P), sp.max_prompt_length)
                ptok, pmask = t.reshape(C, -1, t.shape[-1]), m.reshape(C, -1, m.shape[-1])
            advantages = np.stack([p[1] for p in per_cell])
            batch = ts.Batch(put(ptok), put(pmask), put(ctok), put(cmask), put(advantages),
                             put(np.stack(row_masks).astype(np.float32)) if use_row_mask else None)
            state, step_metrics = step_fn(state, second, batch, hp, lr_factor)
            step_metrics, row_clipped = ts.pop_row_metrics(step_metrics)  # [C] scalars, [C, N]
            now = step + 1
            fetched = None
            for j, (c, cell) in enumerate(zip(configs, cells)):
                sub, adv, _, ended = per_cell[j]
                t_ = c.train
                is_ckpt = t_.checkpoint_every and now % t_.checkpoint_every == 0 or now == steps
                is_eval = t_.eval_every and (now % t_.eval_every == 0 or now == steps)
                is_samples = t_.samples_every and now % t_.samples_every == 0
                if now % t_.log_every == 0 or is_ckpt or is_eval or is_samples:
                    if fetched is None:
                        fetched, clipped = jax.device_get((step_metrics, row_clipped))
                        t3 = time.perf_counter()
                    cell_metrics = {k: float(v[j]) for k, v in fetched.items()}
                    if not np.isfinite(cell_metrics["loss"]):
                        raise FloatingPointError(f"non-finite loss ({cell_metrics['loss']}) at step {now} in cell "
                                                 f"{cell.workdir}; stopped without saving")
                    host = rollout.batch_metrics(c, sub, ended, update_prompt_width=ptok.shape[-1],
                                                 update_completion_width=ctok.shape[-1])
                    row = {**host, **cell_metrics,
                           "learning_rate": float(schedules[j](step * ts.updates_per_step(c))),
                           "sample_seconds": sample_seconds, "reward_seconds": reward_seconds,
                           "update_seconds": t3 - t2, "step_seconds": t3 - t0, "sweep_cells": float(C)}
                    if is_eval:
                        row |= eval_lib.evaluate_run(setups[j], policy(_cell(state.params, j)), keys[j][1], now,
                                                         writers[j])
                    writers[j].write(now, row)
                    used = row_masks[j]
                    writers[j].write_detail("groups.jsonl", now, rollout.group_detail(
                        sub, adv[used], np.ones(int(used.sum())), group_size=c.grpo.group_size,
                        clipped=clipped[j][used], loss_mask=per_cell[j][2][used], passes=c.grpo.num_iterations))
                    if is_samples:
                        e = sub.examples[0]
                        writers[j].write_text(now, "completion", f"{e.prompt} -> {sub.completions[0]!r} "
                                                                 f"(reward {sub.rewards[0]:.2f}, gold {e.answer})")
                if is_ckpt:
                    ckpts[j].save(now, build.checkpoint_tree(c, _cell(state, j),
                                                             _ref(refs_by_cell, second, second_axis, j)),
                                  {"step": now, "config_hash": cfg_lib.config_hash(c)}, force=True)
            log(f"step {now}/{steps}: {C} cells, " + " | ".join(
                f"{float(np.mean(gen.rewards[m])):.3f}" for gen, m in zip(gens, row_masks)) + " reward")
        for w in writers:
            w.close()
    finally:
        for ck in ckpts:
            ck.close()
    print(f"program of {C} cells done", file=sys.stderr)


def _ref(refs_by_cell, second, second_axis, i):
    """Cell i's reference for its checkpoint (None without one; LoRA's is the base, never saved)."""
    if refs_by_cell is None:
        return None
    return _cell(second, i) if second_axis == 0 else refs_by_cell[i]


def run_grid(argv) -> list:
    """The sweep program (module section above); returns the cells. Every cell's config is validated
    and the sweep directory's grid checked before any model work."""
    import argparse
    import pathlib
    import sys

    from grpo_jax import config as cfg_lib

    parser = argparse.ArgumentParser(prog="python -m grpo_jax.sweep", usage=SWEEP_USAGE, add_help=False)
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--grid", action="append", default=[])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--cells_per_program", type=int, default=0)
    parser.add_argument("--one_program", action="store_true")
    known, rest = parser.parse_known_args(argv)
    overrides = []
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--config."):
            raise cfg_lib.ConfigError(f"unknown argument {arg!r}: {SWEEP_USAGE}")
        item = arg[len("--config."):]
        if "=" not in item:
            if not rest:
                raise cfg_lib.ConfigError(f"{arg} needs a value")
            item = f"{item}={rest.pop(0)}"
        overrides.append(item)
    if known.cells_per_program < 0:
        raise cfg_lib.ConfigError(f"--cells_per_program {known.cells_per_program}: must be >= 1 (0: no limit)")
    grid = parse_grid(known.grid)
    workdir = pathlib.Path(known.workdir)
    cells = expand_grid(known.config, overrides, grid, known.seeds, workdir, num_devices=jax.device_count(),
                        platform=jax.default_backend())
    programs = plan_programs(cells, cells_per_program=known.cells_per_program or None,
                             one_program=known.one_program)
    _write_sweep_file(workdir, known.config, overrides, grid, known.seeds, cells)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    log(f"sweep: {len(cells)} cells ({len(cells) // known.seeds} configurations x {known.seeds} seeds) in "
        f"{len(programs)} program(s): " + ", ".join(str(len(p)) for p in programs))
    for program in programs:
        if program[0].config.grpo.dynamic_sampling:  # a host loop per cell: the trainer itself, as a child
            import subprocess
            cell = program[0]
            argv = [sys.executable, "-m", "grpo_jax.train", "--config", str(known.config), "--workdir",
                    str(cell.workdir)] + [f"--config.{o}" for o in cell.overrides]
            if subprocess.run(argv).returncode:
                raise cfg_lib.ConfigError(f"the trainer failed on cell {cell.workdir} (its output is above): "
                                          + " ".join(argv[1:]))
        else:
            run_program(program, log=log)
    return cells


def main(argv=None) -> int:
    import sys

    from grpo_jax import build
    from grpo_jax import config as cfg_lib

    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(SWEEP_USAGE + "\n\nGrid keys vmapped inside one program: " + ", ".join(VMAPPED_KEYS))
        return 0
    try:
        argv = build.initialize_distributed(argv)
        cells = run_grid(argv)
    except cfg_lib.ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(f"RESULT cells={len(cells)} configurations={len({c.label for c in cells})}")
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
