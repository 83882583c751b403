"""grpo_jax.truncation: the top-k / top-p / min-p kept set (hand-computed, ties, a value-only property
against an O(V^2) numpy reference), the truncated log-probs, and the issue's end-to-end check: the
sampler draws from the truncated distribution and the trainer scores each sampled token under exactly
that distribution (numpy from a teacher-forced forward), on one device and on eight.

The sampler tests share one shape (N=8, P=6, T=8) and a few static truncations: a few compiles.
"""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import config as cfg_lib
from grpo_jax import model, sampling, scoring, sharding
from grpo_jax import train_step as ts
from grpo_jax import truncation as tr
from grpo_jax.losses import grpo_loss, token_logps
from grpo_jax.truncation import Truncation

CFG = model.ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                        intermediate_size=64, rope_theta=10000.0, tie_embeddings=False, attention_bias=True)
N, P, T = 8, 6, 8
NO_EOS = -1
TEMPERATURE = 0.9


def _params():
    params = model.init_params(CFG, jax.random.key(0))
    # Logits of std ~1 (a random init is near uniform): at V = 64 top_k = 20 cuts 64 -> 20, top_p = 0.9
    # then ~17 -> ~16, min_p = 0.1 anywhere from 11 to 56 tokens. Truncation is real but not greedy.
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 8.0
    return params


PARAMS = _params()


def _keep(probs_or_logits, *, logits=False, **trunc):
    s = jnp.asarray(probs_or_logits if logits else np.log(probs_or_logits), jnp.float32)
    return np.asarray(tr.keep_mask(s, Truncation(**trunc))).tolist()


def np_keep(s, trunc):
    """Independent reference, by the value rules of the module docstring (no sort): O(V^2), float64."""
    s = np.asarray(s, np.float64)
    greater = s[..., None, :] > s[..., :, None]  # [..., i, j]: s_j > s_i
    keep = np.ones(s.shape, bool)
    v = s.shape[-1]
    if 0 < trunc.top_k < v:
        keep = greater.sum(-1) < trunc.top_k
    if trunc.top_p < 1:
        p1 = np.where(keep, np.exp(s - s.max(-1, keepdims=True)), 0.0)
        p1 = p1 / p1.sum(-1, keepdims=True)
        above = (greater * p1[..., None, :]).sum(-1)  # mass strictly above token i
        keep = keep & (above < trunc.top_p)
    if trunc.min_p > 0:
        keep = keep & (s >= s.max(-1, keepdims=True) + math.log(trunc.min_p))
    return keep


def np_log_q(logits, tokens, temperature, trunc):
    """log q(y) = s_y - logsumexp over K(s) u {y}, float64 numpy."""
    s = np.asarray(logits, np.float64) / (temperature if temperature > 0 else 1.0)
    keep = np_keep(s, trunc)
    keep |= np.arange(s.shape[-1]) == np.asarray(tokens)[..., None]
    m = s.max(-1, keepdims=True)
    logz = m[..., 0] + np.log(np.where(keep, np.exp(s - m), 0.0).sum(-1))
    return np.take_along_axis(s, np.asarray(tokens)[..., None], -1)[..., 0] - logz


# ---------------------------------------------------------------- keep_mask, by hand

PROBS = [0.1, 0.4, 0.2, 0.3]  # positions shuffled: the mask must follow values, not positions


@pytest.mark.parametrize("trunc, kept", [
    (dict(top_k=2), [0.4, 0.3]),
    (dict(top_k=1), [0.4]),
    (dict(top_p=0.35), [0.4]),  # mass above 0.3 is 0.4 >= 0.35
    (dict(top_p=0.5), [0.4, 0.3]),  # above 0.3: 0.4 < 0.5; above 0.2: 0.7
    (dict(top_p=0.75), [0.4, 0.3, 0.2]),  # above 0.1: 0.9
    (dict(top_p=0.95), [0.4, 0.3, 0.2, 0.1]),
    (dict(min_p=0.6), [0.4, 0.3]),  # p >= 0.24
    (dict(min_p=0.45), [0.4, 0.3, 0.2]),  # p >= 0.18
    # top-k then top-p over the renormalised survivors: above 0.2 is 0.7 / 0.9 = 0.78 >= 0.72, so 0.2
    # goes; top-p alone keeps it (0.7 < 0.72): the order is top-k, then top-p, as HF.
    (dict(top_k=3, top_p=0.72), [0.4, 0.3]),
    (dict(top_p=0.72), [0.4, 0.3, 0.2]),
    (dict(top_k=3, min_p=0.6), [0.4, 0.3]),
    (dict(top_p=0.75, min_p=0.3), [0.4, 0.3, 0.2]),  # min-p's 0.12 removes nothing more
    (dict(top_p=0.95, min_p=0.6), [0.4, 0.3]),
    (dict(top_k=3, top_p=0.95, min_p=0.6), [0.4, 0.3]),
    # No truncation: k >= V, p = 1, min_p = 0.
    (dict(top_k=4), [0.4, 0.3, 0.2, 0.1]),
    (dict(top_k=100), [0.4, 0.3, 0.2, 0.1]),
    (dict(), [0.4, 0.3, 0.2, 0.1]),
])
def test_keep_mask_by_hand(trunc, kept):
    assert _keep(PROBS, **trunc) == [p in kept for p in PROBS]


def test_ties_at_the_cut_are_kept_together():
    # top-k: the k-th value's ties are all kept (k = 1 keeps both 2s; k = 3 keeps the three 1s).
    assert _keep([2.0, 0.0, 2.0, 1.0], logits=True, top_k=1) == [True, False, True, False]
    assert _keep([1.0, 3.0, 1.0, 0.0, 1.0], logits=True, top_k=2) == [True, True, True, False, True]
    # top-p: the mass above each 0.2 is 0.4 < 0.5, whichever of them a sort puts first.
    assert _keep([0.2, 0.4, 0.2, 0.2], top_p=0.5) == [True] * 4
    assert _keep([0.2, 0.4, 0.2, 0.2], top_p=0.3) == [False, True, False, False]
    # min-p: equal probabilities on the threshold's side are kept together.
    assert _keep([0.25, 0.25, 0.25, 0.25], min_p=0.5) == [True] * 4
    # Every permutation of a row with ties gives the permuted mask.
    s = np.array([1.0, 2.0, 1.0, 3.0, 2.0, 0.0, 2.0])
    for trunc in [Truncation(top_k=2), Truncation(top_p=0.6), Truncation(top_k=4, top_p=0.9, min_p=0.2)]:
        base = np.asarray(tr.keep_mask(jnp.asarray(s), trunc))
        for seed in range(5):
            perm = np.random.default_rng(seed).permutation(s.size)
            np.testing.assert_array_equal(np.asarray(tr.keep_mask(jnp.asarray(s[perm]), trunc)), base[perm])


def test_keep_mask_batched_and_filter_logits():
    s = np.random.default_rng(0).normal(size=(2, 3, 16)).astype(np.float32) * 2
    trunc = Truncation(top_k=6, top_p=0.8, min_p=0.05)
    keep = np.asarray(tr.keep_mask(jnp.asarray(s), trunc))
    np.testing.assert_array_equal(keep, np_keep(s, trunc))
    filtered = np.asarray(tr.filter_logits(jnp.asarray(s), trunc))
    np.testing.assert_array_equal(filtered, np.where(keep, s, -np.inf))
    # Inactive: the logits untouched; an invalid truncation names the config keys.
    np.testing.assert_array_equal(tr.filter_logits(jnp.asarray(s), Truncation()), s)
    assert not Truncation().active and Truncation(top_k=1).active and Truncation(min_p=0.1).active
    with pytest.raises(ValueError, match="sampling.top_k / top_p / min_p"):
        tr.keep_mask(jnp.asarray(s), Truncation(min_p=1.0))


_row = st.lists(st.integers(-30, 30), min_size=1, max_size=12)  # tenths: many ties


@settings(max_examples=80, deadline=None)
@given(_row, st.integers(0, 14), st.sampled_from([1.0, 0.95, 0.9, 0.7, 0.5, 0.3, 0.05]),
       st.sampled_from([0.0, 0.05, 0.2, 0.5, 0.9]), st.randoms(use_true_random=False))
def test_kept_set_is_the_largest_values_by_the_value_rules(row, top_k, top_p, min_p, rnd):
    s = np.asarray(row, np.float32) / 10
    trunc = Truncation(top_k=top_k, top_p=top_p, min_p=min_p)
    keep = np.asarray(tr.keep_mask(jnp.asarray(s), trunc))
    filtered = np.asarray(tr.filter_logits(jnp.asarray(s), trunc))
    assert keep.any() and keep[np.argmax(s)]  # at least the most likely token
    assert np.isfinite(filtered).sum() == keep.sum()
    if not keep.all():  # the kept probabilities are the largest ones (ties on one side together)
        assert s[keep].min() > s[~keep].max()
    # Value-only: a shuffled row gives the shuffled mask.
    perm = list(range(s.size))
    rnd.shuffle(perm)
    np.testing.assert_array_equal(np.asarray(tr.keep_mask(jnp.asarray(s[perm]), trunc)), keep[perm])
    # The O(V^2) reference of the docstring's rules, away from float-level edges of the mass test.
    p = np.exp(s - s.max())
    if 0 < top_k < s.size:
        p = p * (s >= np.sort(s)[::-1][top_k - 1])
    p = p / p.sum()
    above = np.array([p[s > x].sum() for x in s])
    if np.all(np.abs(above - top_p) > 1e-5):
        np.testing.assert_array_equal(keep, np_keep(s, trunc))


# ---------------------------------------------------------------- truncated_token_logps

@pytest.mark.parametrize("temperature", [0.7, 0.0])  # 0: read as 1, as token_logps
def test_truncated_token_logps_equal_numpy(temperature):
    rng = np.random.default_rng(1)
    logits = (rng.normal(size=(3, 5, 32)) * 3).astype(np.float32)
    tokens = rng.integers(0, 32, (3, 5)).astype(np.int32)  # many outside the kept set
    trunc = Truncation(top_k=10, top_p=0.8, min_p=0.02)
    got = tr.truncated_token_logps(jnp.asarray(logits), jnp.asarray(tokens), temperature=temperature, trunc=trunc)
    assert got.shape == (3, 5) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_log_q(logits, tokens, temperature, trunc), atol=1e-5)
    s = logits / (temperature or 1.0)
    outside = ~np.take_along_axis(np_keep(s, trunc), tokens[..., None], -1)[..., 0]
    assert outside.sum() >= 5  # the union rule is exercised: still finite, below 0
    assert np.all(np.isfinite(got)) and np.all(np.asarray(got) < 0)
    # Inactive or None: exactly the full distribution's token_logps.
    full = token_logps(jnp.asarray(logits), jnp.asarray(tokens), temperature=temperature)
    for none in (None, Truncation(top_k=32)):
        np.testing.assert_array_equal(
            tr.truncated_token_logps(jnp.asarray(logits), jnp.asarray(tokens), temperature=temperature,
                                     trunc=none), full)


def test_truncated_probabilities_sum_to_one_and_gradient_is_renormalised():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.normal(size=(24,)) * 2, jnp.float32)
    trunc = Truncation(top_k=12, top_p=0.85, min_p=0.03)
    keep = np.asarray(tr.keep_mask(logits / 0.8, trunc))
    assert 1 < keep.sum() < 12
    logq_of = jax.jit(lambda x, y: tr.truncated_token_logps(x, y, temperature=0.8, trunc=trunc))
    logq = logq_of(jnp.broadcast_to(logits, (24, 24)), jnp.arange(24))  # row i: token i
    assert float(jnp.exp(logq)[keep].sum()) == pytest.approx(1.0, abs=1e-6)
    # d log q(y) / d s = onehot(y) - q on the kept set, 0 outside (s = logits / T: a factor 1 / T).
    y = int(np.flatnonzero(keep)[1])
    grad = jax.jit(jax.grad(logq_of))(logits, jnp.int32(y))
    q = np.where(keep, np.exp(np.asarray(logq)), 0.0)
    np.testing.assert_allclose(grad, (np.eye(24)[y] - q) / 0.8, atol=1e-6)


def test_for_scoring_reads_the_sampling_section():
    base = cfg_lib.Config()
    assert tr.for_scoring(base) is None  # top_k 0, top_p 1, min_p 0: nothing truncates
    on = cfg_lib.apply_overrides(base, ["sampling.top_k=20", "sampling.top_p=0.9", "sampling.min_p=0.05"])
    assert tr.for_scoring(on) == Truncation(20, 0.9, 0.05)
    assert tr.for_scoring(cfg_lib.apply_overrides(on, ["sampling.truncated_logps=false"])) is None


# ---------------------------------------------------------------- sampler and trainer (the issue)

def _prompts():
    tokens = np.array(jax.random.randint(jax.random.key(1), (N, P), 0, CFG.vocab_size))
    mask = np.ones((N, P), np.int32)
    mask[1, :2] = 0
    mask[3, :5] = 0
    return jnp.asarray(tokens), jnp.asarray(mask)


@jax.jit
def _full_logits(prompt, mask, completion):
    """Teacher-forced logits of the completion tokens by the plain forward (model.apply)."""
    tokens = jnp.concatenate([prompt, completion], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones(completion.shape, jnp.int32)], axis=1)
    p = prompt.shape[1]
    return model.apply(CFG, PARAMS, tokens, attention_mask=full_mask)[:, p - 1: -1]


_scores = jax.jit(scoring.completion_scores, static_argnums=0,
                  static_argnames=("truncation", "chunk_size", "entropy", "full_logps"))

TRUNCATIONS = [Truncation(top_k=20, top_p=0.9), Truncation(min_p=0.1), Truncation(top_k=20, top_p=0.9, min_p=0.1)]
_SAMPLES = {}


def _sample(trunc):
    """The sampler with truncated_logps, one device (cached per truncation: shared by the tests)."""
    if trunc not in _SAMPLES:
        prompt, mask = _prompts()
        _SAMPLES[trunc] = sampling.sample(
            CFG, PARAMS, prompt, mask, jax.random.key(3), max_new_tokens=T, eos_id=NO_EOS, temperature=TEMPERATURE,
            top_k=trunc.top_k, top_p=trunc.top_p, min_p=trunc.min_p, truncated_logps=True)
    return _SAMPLES[trunc]


@pytest.mark.parametrize("trunc", TRUNCATIONS, ids=["top_k20_top_p0.9", "min_p0.1", "all_three"])
def test_trainer_scores_sampled_tokens_under_the_truncated_distribution(trunc):
    prompt, mask = _prompts()
    out = _sample(trunc)
    tokens = np.asarray(out.tokens)
    logits = np.asarray(_full_logits(prompt, mask, out.tokens))  # [N, T, V]
    want = np_log_q(logits, tokens, TEMPERATURE, trunc)
    # The sampled tokens lie in the kept set of the teacher-forced logits (no float-edge cases here).
    keep = np_keep(logits / TEMPERATURE, trunc)
    assert np.take_along_axis(keep, tokens[..., None], -1).all()
    assert (keep.sum(-1) < CFG.vocab_size).all() and (keep.sum(-1) > 1).mean() > 0.9  # truncating, not greedy
    # (a) the trainer's log-probs = log q, in numpy from the teacher-forced forward; one chunk and a scan.
    for chunk_size in (None, 3 * N) if trunc == TRUNCATIONS[0] else (None,):  # 3 * N: a scan over chunks
        train, stats = _scores(CFG, PARAMS, prompt, mask, out.tokens, temperature=TEMPERATURE, truncation=trunc,
                               chunk_size=chunk_size, entropy=True, full_logps=True)
        np.testing.assert_allclose(train, want, atol=1e-5, err_msg=str(chunk_size))
        # The entropy stat stays the full tempered distribution's.
        logp = jax.nn.log_softmax(logits / TEMPERATURE)
        np.testing.assert_allclose(stats["entropy"], -(np.exp(logp) * logp).sum(-1), atol=1e-4)
    # (b) the sampler reports the very same numbers.
    np.testing.assert_allclose(out.logps, train, atol=1e-5)
    # (c) today's scoring (no truncation) is the full distribution's: lower by log of the kept mass,
    # visibly so: the test above would have failed before.
    full, _ = _scores(CFG, PARAMS, prompt, mask, out.tokens, temperature=TEMPERATURE)
    np.testing.assert_allclose(full, token_logps(jnp.asarray(logits), out.tokens, temperature=TEMPERATURE), atol=1e-5)
    np.testing.assert_allclose(stats["full_logps"], full, atol=1e-5)  # the KL's policy side, alongside
    gap = np.asarray(train) - np.asarray(full)
    assert gap.min() > -1e-6 and gap.mean() > 0.05, gap.mean()
    if trunc == TRUNCATIONS[0]:  # completion_logps takes it too
        np.testing.assert_allclose(
            jax.jit(scoring.completion_logps, static_argnums=0, static_argnames="truncation")(
                CFG, PARAMS, prompt, mask, out.tokens, temperature=TEMPERATURE, truncation=trunc), train, atol=1e-6)


def test_sampler_without_truncated_logps_reports_the_full_distribution():
    trunc = TRUNCATIONS[0]
    prompt, mask = _prompts()
    exact = _sample(trunc)
    full = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(3), max_new_tokens=T, eos_id=NO_EOS,
                           temperature=TEMPERATURE, top_k=trunc.top_k, top_p=trunc.top_p)
    np.testing.assert_array_equal(full.tokens, exact.tokens)  # the same draws
    logits = _full_logits(prompt, mask, full.tokens)
    np.testing.assert_allclose(full.logps, token_logps(logits, full.tokens, temperature=TEMPERATURE), atol=1e-5)
    assert float(jnp.mean(exact.logps - full.logps)) > 0.05


def test_min_p_bounds_are_checked():
    prompt, mask = _prompts()
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="min_p"):
            sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=NO_EOS,
                            min_p=bad)
        with pytest.raises(ValueError, match="min_p"):
            sampling.sample_traced(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=NO_EOS,
                                   min_p=bad)


def test_min_p_sampling_distribution():
    # Token 0 of one prompt, 4096 times: the frequencies are the min-p truncated, renormalised probs.
    n_rows, trunc = 4096, Truncation(min_p=0.1)
    prompt, mask = _prompts()
    prompt, mask = jnp.tile(prompt[:1], (n_rows, 1)), jnp.tile(mask[:1], (n_rows, 1))
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(11), max_new_tokens=1, eos_id=NO_EOS,
                          temperature=TEMPERATURE, min_p=trunc.min_p, truncated_logps=True)
    s = np.asarray(_full_logits(prompt[:1], mask[:1], jnp.zeros((1, 1), jnp.int32))[0, 0], np.float64) / TEMPERATURE
    keep = np_keep(s, trunc)
    assert 2 < keep.sum() < CFG.vocab_size
    q = np.where(keep, np.exp(s - s.max()), 0.0)
    q /= q.sum()
    freqs = np.bincount(np.asarray(out.tokens[:, 0]), minlength=CFG.vocab_size) / n_rows
    assert freqs[~keep].sum() == 0
    np.testing.assert_array_less(np.abs(freqs - q), 5 * np.sqrt(q * (1 - q) / n_rows) + 1e-3)
    np.testing.assert_allclose(out.logps[:, 0], np.log(q[np.asarray(out.tokens[:, 0])]), atol=1e-5)


def test_reported_logps_add_no_vocabulary_sort():
    # The sampler's truncated log-probs reuse the logits it filtered: one sort per emitted token (the
    # prefill's token 0 and the loop body's), with or without truncated_logps.
    prompt, mask = _prompts()

    def sorts(truncated_logps):
        text = sampling._sample_jit.lower(
            CFG, PARAMS, prompt, mask, jax.random.key(0), jnp.float32(1.0), jnp.asarray([NO_EOS], jnp.int32),
            max_new_tokens=T, top_k=0, top_p=0.9, min_p=0.1, prompt_sharding=None,
            truncated_logps=truncated_logps).as_text()
        return text.count("stablehlo.sort")

    assert sorts(False) == sorts(True) == 2


def test_eight_devices_equal_one_device():
    trunc = TRUNCATIONS[2]
    prompt, mask = _prompts()
    mesh = sharding.make_mesh(data=4, fsdp=2)
    params = jax.device_put(PARAMS, sharding.param_shardings(mesh, PARAMS))
    batch = sharding.batch_sharding(mesh)
    ref = _sample(trunc)
    out = sampling.sample(CFG, params, jax.device_put(prompt, batch), jax.device_put(mask, batch), jax.random.key(3),
                          max_new_tokens=T, eos_id=NO_EOS, temperature=TEMPERATURE, top_k=trunc.top_k,
                          top_p=trunc.top_p, min_p=trunc.min_p, truncated_logps=True)
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_allclose(out.logps, ref.logps, atol=1e-5)


# ---------------------------------------------------------------- the train step (top_k 20, top_p 0.9)

def _batch():
    prompt, mask = _prompts()
    out = _sample(TRUNCATIONS[0])
    advantages = jnp.asarray(np.random.default_rng(0).normal(size=N), jnp.float32)
    return ts.Batch(prompt, mask, out.tokens, out.mask, advantages)


def _train_step(mesh, trunc, *, opt, beta=0.0, ref=None):
    """One GRPO step (mu = 1, K = 1) of PARAMS on the sampled batch -> (params, metrics) on the host."""
    # A copy of PARAMS: the step donates its state, and on one device device_put may not copy.
    params = jax.device_put(jax.tree.map(jnp.array, PARAMS), sharding.param_shardings(mesh, PARAMS))
    state = ts.init_state(params, opt, mesh)
    state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
    ref_sh = None if ref is None else sharding.param_shardings(mesh, ref)
    fn = ts.jit_train_step(ts.build_train_step(CFG, opt, use_reference=ref is not None, truncation=trunc),
                           mesh, state_sh, ref_sh)
    state, metrics = fn(state, ref, _batch(), ts.make_hparams(epsilon=0.2, beta=beta, temperature=TEMPERATURE))
    return jax.device_get(state.params), jax.device_get(metrics)


def _mesh(data, fsdp):
    return sharding.make_mesh(data=data, fsdp=fsdp, devices=jax.devices()[: data * fsdp])


def test_train_step_scores_under_the_truncation_on_policy():
    # SGD lr 1: the parameter change is the gradient itself.
    opt, trunc = optax.sgd(1.0), TRUNCATIONS[0]
    params, m = _train_step(_mesh(1, 1), trunc, opt=opt)
    assert m["ratio_mean"] == 1.0 and m["ratio_max"] == 1.0 and m["clip_fraction"] == 0.0
    # A hand-written update: grpo_loss on log q from the full logits (not the step's chunked head).
    batch = _batch()

    @jax.jit
    def grad_of(p):
        def loss(q):
            logits = scoring.completion_logits(CFG, q, batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens)
            logps = tr.truncated_token_logps(logits, batch.completion_tokens, temperature=TEMPERATURE, trunc=trunc)
            return grpo_loss(logps, jax.lax.stop_gradient(logps), None, batch.advantages, batch.completion_mask,
                             epsilon=0.2, beta=0.0)[0]
        return jax.grad(loss)(p)

    want = optax.apply_updates(PARAMS, jax.tree.map(lambda g: -g, grad_of(PARAMS)))
    chex.assert_trees_all_close(params, want, atol=1e-5)
    # ... which is not the untruncated step's: the truncation reached the gradient.
    untruncated, _ = _train_step(_mesh(1, 1), None, opt=opt)
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(untruncated)))
    assert diff > 1e-2, diff


def test_train_step_truncated_sharded_equals_single_device():
    opt, trunc = optax.sgd(0.1), TRUNCATIONS[0]
    ref = model.init_params(CFG, jax.random.key(1))
    p1, m1 = _train_step(_mesh(1, 1), trunc, opt=opt, beta=0.04, ref=ref)
    mesh = _mesh(4, 2)
    p8, m8 = _train_step(mesh, trunc, opt=opt, beta=0.04, ref=jax.device_put(ref, sharding.param_shardings(mesh, ref)))
    assert m8["ratio_mean"] == 1.0 and m8["clip_fraction"] == 0.0 and m1["kl"] > 0
    for k in m1:
        np.testing.assert_allclose(m1[k], m8[k], atol=1e-5, err_msg=k)
    chex.assert_trees_all_close(p1, p8, atol=1e-5)


def test_train_step_kl_to_an_equal_reference_is_zero_under_truncation():
    # DESIGN: the KL to the reference is on the full tempered distribution, so a reference equal to the
    # policy gives KL 0 whatever the truncation (as it does without: test_train_step). Before the fix
    # the step paired the truncated policy log-probs with the full reference ones: kl ~0.09 here.
    _, m = _train_step(_mesh(1, 1), TRUNCATIONS[0], opt=optax.sgd(0.1), beta=0.04, ref=PARAMS)
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-7)
