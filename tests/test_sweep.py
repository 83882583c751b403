"""grpo_jax.sweep: the JAX arithmetic verifier == rewards.correctness; masked-G updates == genuine
group_size=G updates; a vmapped sweep == the same configurations run one by one."""
import random

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import advantages as adv_lib
from grpo_jax import losses
from grpo_jax import model as model_lib
from grpo_jax import rewards, sampling, sweep, train
from grpo_jax import tokenizer as tok_lib
from grpo_jax import train_step as ts
from grpo_jax.tasks import arithmetic

TOK = tok_lib.char_tokenizer(tok_lib.CHAR_ALPHABET)
EOS = TOK.eos_token_id
TABLES = sweep.verifier_tables(TOK, len(TOK) + 4)  # 4 ids past the tokenizer: decode drops them
TINY = model_lib.ModelConfig(vocab_size=len(TOK), hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1,
                             head_dim=16, intermediate_size=64, rope_theta=10000.0, rms_norm_eps=1e-6,
                             tie_embeddings=True, attention_bias=True, max_position_embeddings=64)
REWARD = jax.jit(lambda *a: sweep.arithmetic_reward_jax(*a, tables=TABLES))


def _encode(texts, width):
    """Completion texts -> (tokens i32[N, width] padded with EOS, mask f32[N, width])."""
    tokens = np.full((len(texts), width), EOS, np.int32)
    mask = np.zeros((len(texts), width), np.float32)
    for i, text in enumerate(texts):
        ids = TOK(text, add_special_tokens=False)["input_ids"][:width]
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, 1.0
    return tokens, mask


def _agree(tokens, mask, golds):
    """Host verifier on decoded text vs the JAX verifier on ids: (host scores, jax scores, texts)."""
    texts = tok_lib.decode_completions(TOK, tokens, mask, eos_id=EOS)
    host = np.array([rewards.correctness(t, g, style="reasoning") for t, g in zip(texts, golds)], np.float32)
    answers, answer_mask = sweep.encode_answers(TOK, golds, max_length=8)
    return host, np.asarray(REWARD(tokens, mask, answers, answer_mask)), texts


EDGE_CASES = [  # (completion, gold, expected score): each rule of extract_answer / normalize_number
    ("<reasoning>\n12+35=47\n</reasoning>\n<answer>\n47\n</answer>", "47", 1.0),
    ("<answer>47</answer>", "47", 1.0),
    ("<answer>  047 \n</answer>", "47", 1.0),  # strip, leading zeros
    ("<answer>+47</answer>", "47", 1.0),
    ("<answer>$47.</answer>", "47", 1.0),  # "$", trailing period
    ("<answer>47.00</answer>", "47", 1.0),  # zero fraction
    ("<answer>47.5</answer>", "47", 0.0),
    ("<answer>\\$47</answer>", "47", 1.0),  # LaTeX dollar
    ("<answer>1,234</answer>", "1234", 1.0),  # thousands group
    ("<answer>1{,}234</answer>", "1234", 1.0),
    ("<answer>12,34</answer>", "1234", 0.0),  # malformed group
    ("<answer>-5</answer>", "-5", 1.0),
    ("<answer>5</answer>", "-5", 0.0),
    ("<answer>-0</answer>", "0", 1.0),  # "-0" == "0"
    ("<answer>.0</answer>", "0", 1.0),
    ("<answer>4 7</answer>", "47", 0.0),
    ("<answer>47</answer><answer>47</answer>", "47", 0.0),  # two answers
    ("<answer>47", "47", 0.0),  # unterminated
    ("</answer>47<answer>", "47", 0.0),  # wrong order
    ("<answer>47</answer>", "470", 0.0),
    ("<answer></answer>", "0", 0.0),
    ("<answer>$</answer>", "0", 0.0),
    ("<answer>47</answer> <answer", "47", 0.0),  # a spelled-out "<answer" counts
    ("<", "47", 0.0),
]


def test_verifier_edge_cases_match_host():
    texts, golds, expected = zip(*EDGE_CASES)
    tokens, mask = _encode(texts, 48)
    # Spelled-out tags ("<", "a", "n", ...) instead of tag tokens, and specials inside the answer.
    spelled = [t.replace("<answer>", "<" + "answer>") for t in texts]
    ids = [[i for ch in t for i in TOK(ch, add_special_tokens=False)["input_ids"]] for t in spelled]
    char_tokens = np.full((len(ids), 64), EOS, np.int32)
    char_mask = np.zeros((len(ids), 64), np.float32)
    for i, row in enumerate(ids):
        char_tokens[i, : len(row)], char_mask[i, : len(row)] = row, 1.0
    host, got, _ = _agree(tokens, mask, list(golds))
    np.testing.assert_array_equal(host, np.array(expected, np.float32))  # the table is right ...
    np.testing.assert_array_equal(got, host)  # ... and the JAX verifier agrees
    host_c, got_c, texts_c = _agree(char_tokens, char_mask, list(golds))
    assert "<answer>" in texts_c[0] and TOK.convert_tokens_to_ids("<answer>") not in ids[0]
    np.testing.assert_array_equal(got_c, host_c)
    # Masked-out tokens, tokens after EOS and specials / unknown ids are ignored like decode does.
    row = TOK("<answer>4", add_special_tokens=False)["input_ids"] + [0, 1, 3, len(TOK) + 2] + \
        TOK("7</answer>", add_special_tokens=False)["input_ids"] + [EOS] + TOK("<answer>", add_special_tokens=False)["input_ids"]
    tokens = np.array([row, row], np.int32)
    mask = np.ones_like(tokens, np.float32)
    mask[1, 1] = 0.0  # row 1 hides the "4"
    host, got, texts = _agree(tokens, mask, ["47", "47"])
    assert texts == ["<answer>47</answer>", "<answer>7</answer>"]
    np.testing.assert_array_equal(got, [1.0, 0.0])
    np.testing.assert_array_equal(got, host)


def test_verifier_matches_host_on_mutated_completions():
    """Random edits (tags, spelled tags, specials, signs, separators) of well-formed completions."""
    rng = random.Random(0)
    pieces = ["<answer>", "</answer>", "<reasoning>", "\n", " ", "-", "+", "$", "\\", "{", "}", ",", ".",
              "0", "4", "7", "<", "a", "/", "answer", ">", "<eos>", "<pad>", "<unk>", "x"]
    texts, golds = [], []
    for _ in range(600):
        gold = str(rng.choice([47, 0, -5, 1234, 7, 100]))
        answer = rng.choice([gold, "0" + gold, f" {gold} ", "+" + gold, gold + ".0", gold + ".", "$" + gold,
                             "1,234", "1{,}234", "\\$" + gold, "-0", gold + "5", "4 7"])
        chars = list(f"<reasoning>\n1+1={gold}\n</reasoning>\n<answer>\n{answer}\n</answer>")
        for _ in range(rng.randint(0, 3)):
            i = rng.randrange(len(chars))
            op = rng.random()
            if op < 0.4:
                chars.insert(i, rng.choice(pieces))
            elif op < 0.7:
                del chars[i]
            else:
                chars[i] = rng.choice(pieces)
        texts.append("".join(chars))
        golds.append(gold)
    tokens, mask = _encode(texts, 64)
    host, got, decoded = _agree(tokens, mask, golds)
    assert 0.2 < host.mean() < 0.8  # both outcomes well represented
    bad = np.nonzero(got != host)[0]
    assert not len(bad), [(decoded[i], golds[i], host[i]) for i in bad[:5]]


def _sft_params(steps):
    """A tiny model briefly warm-started on the quick-start format (one device)."""
    from grpo_jax import sft
    mesh = jax.make_mesh((1, 1), ("data", "fsdp"), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)
    params = model_lib.init_params(TINY, jax.random.key(0))
    return sft.run_sft(TINY, params, TOK, lambda i: arithmetic.example(0, i), steps=steps, batch_size=32,
                       learning_rate=1e-2, warmup_steps=5, mesh=mesh, max_prompt_length=16,
                       max_target_length=32, log_every=steps,
                       prompt_fn=lambda e: e.prompt)


@pytest.mark.slow
def test_verifier_matches_host_on_sampled_completions():
    """Hundreds of completions sampled (temperature 1.5) from a briefly warm-started model."""
    params = jax.device_get(_sft_params(120))
    examples = [arithmetic.example(0, i, split="eval") for i in range(64)]
    prompts = sweep.encode_batch(TOK, examples, max_prompt_length=16)
    rep = lambda x: np.repeat(x, 6, axis=0)  # noqa: E731  384 rows
    rollout = sampling.sample(TINY, params, rep(prompts.prompt_tokens), rep(prompts.prompt_mask),
                              jax.random.key(1), max_new_tokens=32, eos_id=EOS, temperature=1.5)
    tokens, mask = np.asarray(rollout.tokens), np.asarray(rollout.mask)
    texts = tok_lib.decode_completions(TOK, tokens, mask, eos_id=EOS)
    golds = [e.answer for e in examples for _ in range(6)]
    # A tiny model rarely gets the sum right: on odd rows take the integer it wrote (if any) as the
    # gold, so both outcomes occur on real sampled text.
    for i in range(1, len(golds), 2):
        written = rewards.normalize_number(rewards.extract_answer(texts[i]) or "")
        if written is not None and "." not in written and len(written) <= 8:
            golds[i] = written
    host, got, texts = _agree(tokens, mask, golds)
    formatted = np.mean(["<answer>" in t and "</answer>" in t for t in texts])
    assert formatted > 0.3 and 0.1 < host.mean() < 0.9, (formatted, host.mean(), texts[:4])
    bad = np.nonzero(got != host)[0]
    assert not len(bad), [(texts[i], golds[i], host[i]) for i in bad[:5]]


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_masked_group_advantages_equal_group_advantages_on_used_rows(scale):
    rewards_ = jax.random.bernoulli(jax.random.key(0), 0.4, (5 * 6,)).astype(jnp.float32)
    rewards_ = rewards_.at[:6].set(1.0)  # an all-equal group: advantage 0
    for g in (2, 3, 6):
        got = np.asarray(sweep.masked_group_advantages(rewards_, 6, g, scale=scale))
        used = (np.arange(30) % 6) < g
        want = np.asarray(adv_lib.group_advantages(rewards_[used], g, scale=scale))
        np.testing.assert_allclose(got[used], want, atol=1e-6)
        np.testing.assert_array_equal(got[~used], 0.0)
        assert np.abs(want).max() > 0.1


def test_masked_group_advantages_tied_non_binary_group_is_exactly_zero():
    # Three used rows of 2.9229512 (f32 mean off by one ulp): the sweep's old copy gave -2.4e-3.
    rewards_ = jnp.array([2.9229512214660645] * 3 + [7.0, 0.25, 1.75, 3.5, 7.0], jnp.float32)
    got = np.asarray(sweep.masked_group_advantages(rewards_, 4, 3, scale="group"))
    np.testing.assert_array_equal(got[:4], 0.0)
    want = np.asarray(adv_lib.group_advantages(jnp.array([0.25, 1.75, 3.5]), 3, scale="group"))
    np.testing.assert_allclose(got[4:7], want, rtol=1e-6)


def _tiny_state(optimizer, seed=0):
    return sweep.init_state(model_lib.init_params(TINY, jax.random.key(seed)), optimizer)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_rescaled_masked_loss_equals_loss_on_used_rows(loss_type):
    """The identity the masked update rests on: masking rows and scaling A and beta by
    c = G_max / G (1 for bnpo) gives the loss and metrics of the used rows alone."""
    n, t, g_max, g = 8, 5, 4, 3
    k = jax.random.split(jax.random.key(0), 4)
    logps = -jax.random.uniform(k[0], (n, t), minval=0.1, maxval=3.0)
    old = logps + 0.3 * jax.random.normal(k[1], (n, t))  # ratios far from 1: clipping is active
    ref = logps + 0.5 * jax.random.normal(k[2], (n, t))
    mask = (jnp.arange(t)[None] < jnp.array([5, 2, 4, 1, 3, 5, 2, 4])[:, None]).astype(jnp.float32)
    adv = jax.random.normal(k[3], (n,))
    used = (jnp.arange(n) % g_max) < g
    c = 1.0 if loss_type == "bnpo" else g_max / g
    kw = dict(epsilon=0.2, epsilon_high=0.3, loss_type=loss_type, max_completion_length=t)
    loss, met = losses.grpo_loss(logps, old, ref, adv * c, mask * used[:, None], beta=0.04 * c, **kw)
    want_loss, want = losses.grpo_loss(logps[used], old[used], ref[used], adv[used], mask[used], beta=0.04, **kw)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for key in want:
        np.testing.assert_allclose(met[key], want[key], rtol=1e-6, err_msg=key)
    assert float(want["clip_fraction"]) > 0.05 and float(want["kl"]) > 0.01
    # Without the rescaling the row-count aggregations would be off by G / G_max.
    plain, _ = losses.grpo_loss(logps, old, ref, adv, mask * used[:, None], beta=0.04, **kw)
    assert (abs(float(plain) - float(want_loss)) > 1e-3) == (loss_type != "bnpo")


def test_masked_update_equals_genuine_group_size():
    """Groups of G_max = 4 rows using the first G = 2 == a train step on those rows with G = 2."""
    g_max, g, b, p, t = 4, 2, 3, 6, 8
    # SGD: Adam divides by sqrt(v), which turns float noise in near-zero gradients into ~lr-sized
    # differences; plain SGD keeps the comparison about the gradients themselves.
    optimizer = optax.sgd(1.0)
    state = _tiny_state(optimizer)
    ref = model_lib.init_params(TINY, jax.random.key(7))  # a different reference: KL is not 0
    keys = jax.random.split(jax.random.key(3), 4)
    n = b * g_max
    prompt_tokens = jax.random.randint(keys[0], (n, p), 4, len(TOK))
    prompt_mask = jnp.ones((n, p), jnp.int32).at[:, :2].set(0)
    tokens = jax.random.randint(keys[1], (n, t), 4, len(TOK))
    lengths = jax.random.randint(keys[2], (n,), 1, t + 1)
    mask = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.float32)  # ragged lengths
    rewards_ = jax.random.bernoulli(keys[3], 0.5, (n,)).astype(jnp.float32)
    hp = ts.make_hparams(epsilon=0.1, epsilon_high=0.15, beta=0.3, temperature=1.0)
    loss_type, scale, mu = "grpo", "group", 2
    kw = dict(loss_type=loss_type, num_iterations=mu, max_completion_length=t)

    update = sweep.build_masked_update(TINY, optimizer, group_size=g_max, max_new_tokens=t, scale_rewards=scale,
                                       loss_type=loss_type, num_iterations=mu)
    batch = ts.Batch(prompt_tokens, prompt_mask, tokens, mask, jnp.zeros((n,)))
    got_state, got = jax.jit(update)(state, ref, batch, rewards_, hp, jnp.int32(g))

    used = np.asarray((jnp.arange(n) % g_max) < g)
    sub = ts.Batch(prompt_tokens[used], prompt_mask[used], tokens[used], mask[used],
                   adv_lib.group_advantages(rewards_[used], g, scale=scale))
    want_state, want = jax.jit(ts.build_train_step(TINY, optimizer, **kw))(state, ref, sub, hp)
    for key in want:
        mine = got[key][used] if key == ts.ROW_CLIPPED else got[key]  # per row: the used rows', in order
        np.testing.assert_allclose(mine, want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert abs(float(want["loss"])) > 1e-3 and float(want["kl"]) > 1e-3
    used_rewards = np.asarray(rewards_)[used].reshape(b, g)
    want_zero = np.mean(used_rewards.std(axis=1) == 0)  # as train.py logs it
    assert 0 < want_zero < 1 and float(got["zero_std_fraction"]) == pytest.approx(want_zero)
    assert float(got["reward_mean"]) == pytest.approx(used_rewards.mean())
    assert float(want["clip_fraction"]) > 0  # the second iteration (mu = 2) is off-policy: clipping acts
    chex.assert_trees_all_close(got_state.params, want_state.params, atol=1e-6, rtol=1e-7)
    moved = jax.tree.map(lambda x, y: float(jnp.abs(x - y).max()), want_state.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-3


def _dense_reward(tokens, mask, answer_tokens, answer_mask):
    """A dense test reward (fraction of even token ids): every group has distinct rewards."""
    del answer_tokens, answer_mask
    return ((tokens % 2 == 0) * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)


def test_vmapped_sweep_equals_one_by_one():
    """2 seeds x 2 (epsilon, beta) x G in {4, 2}, one compiled program == each run alone, 2 iterations."""
    optimizer = optax.adam(1e-3)
    params = model_lib.init_params(TINY, jax.random.key(0))
    state = sweep.init_state(params, optimizer)
    iteration = sweep.build_grpo_iteration(TINY, optimizer, _dense_reward, group_size=4, max_new_tokens=6,
                                           eos_id=EOS)
    examples = [arithmetic.example(0, i) for i in range(4)]
    batches = [sweep.encode_batch(TOK, examples[2 * s : 2 * s + 2], max_prompt_length=16) for s in range(2)]
    seeds = [0, 0, 1, 1]
    keys = jax.vmap(jax.random.key)(jnp.array(seeds))
    hp = sweep.sweep_hparams(epsilon=[0.2, 0.05, 0.2, 0.05], beta=[0.04, 0.0, 0.04, 0.0])
    group_sizes = [4, 2, 2, 4]
    vstate, history = sweep.run_sweep(sweep.build_sweep(iteration), sweep.stack(state, 4), params, batches.__getitem__,
                                      keys, hp, group_sizes, steps=2)
    single = jax.jit(iteration)
    for c in range(4):
        s = state
        for step in range(2):
            s, m = single(s, params, batches[step], jax.random.fold_in(keys[c], step),
                          jax.tree.map(lambda x: x[c], hp), jnp.int32(group_sizes[c]))
            for k, v in m.items():
                np.testing.assert_allclose(history[step][k][c], v, rtol=1e-5, atol=1e-5, err_msg=f"{c} {step} {k}")
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[c], vstate.params), s.params, atol=1e-5, rtol=1e-7)
    # The configurations really differ: otherwise the comparison proves little.
    flat = np.concatenate([np.asarray(x).reshape(4, -1) for x in jax.tree.leaves(vstate.params)], axis=1)
    assert min(np.abs(flat[i] - flat[j]).max() for i in range(4) for j in range(i)) > 1e-4
    assert history[0]["reward_mean"][0] != history[0]["reward_mean"][2]  # seeds sample differently
