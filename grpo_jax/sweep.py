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

from typing import Callable, NamedTuple

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
