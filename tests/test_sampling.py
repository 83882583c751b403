"""grpo_jax.sampling: greedy == teacher-forced argmax, logps == training logps, EOS masking,
determinism, top-k / top-p / temperature distributions, 8 devices == 1, no recompilation.

Most tests share one shape (N=8, P=6, T=10) and static arguments, so the sampler compiles few times.
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import model, sampling, scoring, sharding
from grpo_jax.losses import token_logps
from grpo_jax.model import ModelConfig

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, rope_theta=10000.0, tie_embeddings=False, attention_bias=True)
N, P, T = 8, 6, 10
NO_EOS = -1  # outside the vocabulary: never matches


def _params(key=jax.random.key(0)):
    params = model.init_params(CFG, key)
    # A random init has near-uniform logits (std ~0.1); scale the head so logits have std ~3 and
    # greedy choices are not decided by float noise.
    params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * 25.0
    return params


PARAMS = _params()


def _prompts():
    tokens = np.array(jax.random.randint(jax.random.key(1), (N, P), 0, CFG.vocab_size))
    mask = np.ones((N, P), np.int32)
    mask[1, :2] = 0
    mask[3, :5] = 0  # a one-token prompt
    # Row 2 = row 1 with different junk in the pad slots: padding must change nothing.
    tokens[2] = tokens[1]
    tokens[2, :2] = (tokens[1, :2] + 7) % CFG.vocab_size
    mask[2] = mask[1]
    return jnp.asarray(tokens), jnp.asarray(mask)


@jax.jit
def _full_logits(prompt, mask, completion):
    tokens = jnp.concatenate([prompt, completion], axis=1)
    full_mask = jnp.concatenate([mask, jnp.ones(completion.shape, jnp.int32)], axis=1)
    p = prompt.shape[1]  # index i predicts token i + 1: p - 1 .. p + T - 2 predict the completion
    return model.apply(CFG, PARAMS, tokens, attention_mask=full_mask)[:, p - 1 : -1]


@pytest.mark.parametrize("t", [T, 130])  # 130: decoded in two segments over a growing cache
def test_greedy_equals_teacher_forced_argmax(t):
    prompt, mask = _prompts()
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=t, eos_id=NO_EOS,
                          temperature=0.0)
    assert out.tokens.shape == (N, t) and out.tokens.dtype == jnp.int32
    assert out.mask.dtype == jnp.float32 and out.logps.dtype == jnp.float32
    np.testing.assert_array_equal(out.mask, 1.0)
    logits = _full_logits(prompt, mask, out.tokens)
    np.testing.assert_array_equal(out.tokens, jnp.argmax(logits, -1))
    np.testing.assert_array_equal(out.tokens[1], out.tokens[2])  # pad contents are ignored
    # Greedy reports log-probs of the T=1 distribution (temperature 0 read as 1).
    np.testing.assert_allclose(out.logps, token_logps(logits, out.tokens, temperature=1.0), atol=1e-5)
    assert np.unique(np.asarray(out.tokens)).size > 5  # not a degenerate constant model


@pytest.mark.parametrize("top_k, t", [(0, T), (5, T), (0, 256)])  # 256: four decode segments
def test_sampled_logps_equal_completion_logps(top_k, t):
    prompt, mask = _prompts()
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(3), max_new_tokens=t, eos_id=NO_EOS,
                          temperature=0.7, top_k=top_k)
    # Jitted as the train step would (completion_logps itself is not jitted).
    train = jax.jit(scoring.completion_logps, static_argnums=0)(CFG, PARAMS, prompt, mask, out.tokens,
                                                                 temperature=0.7)
    assert train.shape == (N, t)
    # Even under top-k truncation, the logps are those of the untruncated tempered distribution.
    np.testing.assert_allclose(out.logps, train, atol=1e-5)
    assert float(jnp.min(out.logps)) < -0.1  # really sampled, not argmax every time


def test_decode_segments_tile_the_completion():
    for t in [1, 10, 63, 64, 127, 128, 130, 200, 256, 1000, 1024]:
        ends = sampling._segment_ends(t)
        assert ends[-1] == t and ends == sorted(set(ends)) and 1 <= len(ends) <= 4, (t, ends)
        assert len(ends) == 1 or min(np.diff([0] + ends)) >= 64, (t, ends)
    assert sampling._segment_ends(256) == [64, 128, 192, 256]


def test_eos_masking():
    prompt, mask = _prompts()
    free = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=NO_EOS,
                           temperature=0.0)
    free_tokens = np.asarray(free.tokens)
    eos = int(free_tokens[0, 3])  # the greedy token at step 3 of row 0 becomes EOS
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=eos,
                          temperature=0.0)
    tokens, out_mask, logps = map(np.asarray, out)
    finished = 0
    for r in range(N):
        hits = np.flatnonzero(free_tokens[r] == eos)
        stop = hits[0] + 1 if hits.size else T  # tokens kept: up to and including the first EOS
        finished += bool(hits.size)
        np.testing.assert_array_equal(tokens[r, :stop], free_tokens[r, :stop])
        np.testing.assert_array_equal(tokens[r, stop:], eos)  # finished rows stop changing
        np.testing.assert_array_equal(out_mask[r], (np.arange(T) < stop).astype(np.float32))
        np.testing.assert_allclose(logps[r, :stop], np.asarray(free.logps)[r, :stop], atol=1e-6)
        np.testing.assert_array_equal(logps[r, stop:], 0.0)
    assert 0 < finished < N  # both kinds of rows were exercised
    assert out_mask[0].tolist() == [1.0] * 4 + [0.0] * (T - 4)

    # A tuple of EOS ids: the first occurrence of either stops the row.
    eos2 = int(free_tokens[5, 1])
    out2 = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T,
                           eos_id=(eos, eos2), temperature=0.0)
    for r in range(N):
        hits = np.flatnonzero((free_tokens[r] == eos) | (free_tokens[r] == eos2))
        stop = hits[0] + 1 if hits.size else T
        np.testing.assert_array_equal(np.asarray(out2.mask)[r], (np.arange(T) < stop).astype(np.float32))
        np.testing.assert_array_equal(np.asarray(out2.tokens)[r, stop:], eos)  # pad = eos_id[0]


def test_same_key_same_samples_different_key_different():
    prompt, mask = _prompts()

    def run(seed):
        return sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(seed), max_new_tokens=T,
                               eos_id=NO_EOS, temperature=1.0)

    a, b, c = run(7), run(7), run(8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logps, b.logps)
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).mean() > 0.2


def test_no_recompilation_on_second_call():
    prompt, mask = _prompts()
    kwargs = dict(max_new_tokens=T, eos_id=NO_EOS)
    sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), temperature=1.0, **kwargs)
    size = sampling._sample_jit._cache_size()
    # New key, new params values, new temperature and a different (single) EOS id: all traced.
    sampling.sample(CFG, _params(jax.random.key(5)), prompt + 1, mask, jax.random.key(1), temperature=0.5,
                    max_new_tokens=T, eos_id=3).tokens.block_until_ready()
    assert sampling._sample_jit._cache_size() == size


def test_top_k_1_and_tiny_top_p_are_greedy():
    prompt, mask = _prompts()
    greedy = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=NO_EOS,
                             temperature=0.0)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(4), max_new_tokens=T, eos_id=NO_EOS,
                              temperature=1.0, **kwargs)
        np.testing.assert_array_equal(out.tokens, greedy.tokens, err_msg=str(kwargs))
        # ... while their reported logps are still the full distribution's (not 0 = log 1).
        np.testing.assert_allclose(out.logps, greedy.logps, atol=1e-5)


def _first_token_frequencies(n_rows, temperature, **kwargs):
    """Sample token 0 for one prompt repeated n_rows times; return (empirical freqs, model logits)."""
    prompt, mask = _prompts()
    prompt = jnp.tile(prompt[:1], (n_rows, 1))
    mask = jnp.tile(mask[:1], (n_rows, 1))
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(11), max_new_tokens=1, eos_id=NO_EOS,
                          temperature=temperature, **kwargs)
    freqs = np.bincount(np.asarray(out.tokens[:, 0]), minlength=CFG.vocab_size) / n_rows
    # The logits at the last prompt slot (the dummy completion token itself is never scored).
    logits = _full_logits(prompt[:1], mask[:1], jnp.zeros((1, 1), jnp.int32))[0, 0]
    return freqs, np.asarray(logits, np.float64)


def _assert_matches(freqs, probs, n_rows):
    sigma = np.sqrt(probs * (1 - probs) / n_rows) + 1e-3
    np.testing.assert_array_less(np.abs(freqs - probs), 5 * sigma)


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_sets_the_sampling_distribution(temperature):
    n_rows = 4096
    freqs, logits = _first_token_frequencies(n_rows, temperature)
    probs = _softmax(logits / temperature)
    _assert_matches(freqs, probs, n_rows)
    # The two temperatures give clearly different distributions (so the check above has teeth).
    other = _softmax(logits / (2.0 if temperature == 0.5 else 0.5))
    assert np.abs(probs - other).sum() > 0.3


def test_top_k_and_top_p_truncate_and_renormalise():
    n_rows = 4096
    freqs, logits = _first_token_frequencies(n_rows, 1.0, top_k=3)
    order = np.argsort(-logits)
    probs = np.zeros_like(logits)
    probs[order[:3]] = _softmax(logits[order[:3]])
    _assert_matches(freqs, probs, n_rows)
    assert freqs[order[3:]].sum() == 0

    # Nucleus of the tempered distribution (temperature is applied before top-p, as in HF).
    freqs, logits = _first_token_frequencies(n_rows, 2.0, top_p=0.4)
    full = _softmax(logits / 2.0)
    sorted_p = full[order]
    keep = int(np.searchsorted(np.cumsum(sorted_p), 0.4) + 1)  # smallest prefix with mass >= 0.4
    assert keep >= 3  # a real nucleus, not just greedy
    probs = np.zeros_like(logits)
    probs[order[:keep]] = full[order[:keep]] / full[order[:keep]].sum()
    _assert_matches(freqs, probs, n_rows)
    assert freqs[order[keep:]].sum() == 0


@pytest.mark.parametrize("t", [T, 130])  # 130: the cache grows (sharded) between two decode segments
def test_eight_devices_equal_one_device(t):
    prompt, mask = _prompts()
    mesh = sharding.make_mesh(data=4, fsdp=2)
    params = jax.device_put(PARAMS, sharding.param_shardings(mesh, PARAMS))
    batch = sharding.batch_sharding(mesh)
    kwargs = dict(max_new_tokens=t, eos_id=NO_EOS, temperature=1.0)
    ref = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(9), **kwargs)
    out = sampling.sample(CFG, params, jax.device_put(prompt, batch), jax.device_put(mask, batch),
                          jax.random.key(9), **kwargs)
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    np.testing.assert_allclose(out.logps, ref.logps, atol=1e-5)


def test_early_exit_when_all_rows_finished():
    prompt, mask = _prompts()
    every_token = tuple(range(CFG.vocab_size))  # whatever is drawn first is an EOS
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T,
                          eos_id=every_token, temperature=1.0)
    np.testing.assert_array_equal(out.mask, np.eye(1, T, dtype=np.float32).repeat(N, 0))
    np.testing.assert_array_equal(out.tokens[:, 1:], 0)

    # Timing: 512 steps vs a loop that exits after step 0 (min of 3 runs each, a 5x margin).
    def best(eos_id):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=512, eos_id=eos_id,
                            temperature=1.0).tokens.block_until_ready()
            times.append(time.perf_counter() - start)
        return min(times)

    every_token_but_one = every_token[1:] + (NO_EOS,)  # same number of ids: the same compiled program
    best(every_token), best(every_token_but_one)  # compile
    assert 5 * best(every_token) < best((NO_EOS,) * CFG.vocab_size)


def test_bad_arguments():
    prompt, mask = _prompts()
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=0, eos_id=1)
    with pytest.raises(ValueError, match="top_p=0"):
        sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=1, top_p=0.0)
    with pytest.raises(ValueError, match="eos_id"):
        sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=())


def _sample_traced_jit(prompt, mask, key, **kwargs):
    """sample_traced inside the caller's own jit, as the sweep uses it."""
    return jax.jit(lambda p, m, k: sampling.sample_traced(CFG, PARAMS, p, m, k, **kwargs))(prompt, mask, key)


@pytest.mark.parametrize("sample_fn", [
    lambda p, m, k, **kw: sampling.sample(CFG, PARAMS, p, m, k, **kw), _sample_traced_jit],
    ids=["sample", "sample_traced"])
@pytest.mark.parametrize("bad, match", [
    # Today these fail deep inside prefill / the KV cache with a broadcasting or concatenate error.
    (lambda p, m: (p, m[:, 1:]), r"\[\(8, 6\), \(8, 5\)\].*prompt_tokens and prompt_mask must both be \[N, P\]"),
    (lambda p, m: (p, m[:4]), r"\[\(8, 6\), \(4, 6\)\].*prompt_tokens and prompt_mask must both be \[N, P\]"),
    (lambda p, m: (p[0], m[0]), r"rank 1 \(shape \(6,\)\) but expected 2.*prompt_tokens must be \[N, P\]"),
    (lambda p, m: (p.astype(jnp.float32), m), r"float32.*prompt_tokens must be integer token ids"),
], ids=["mask_other_p", "mask_other_n", "unbatched", "float_tokens"])
def test_prompt_shapes_are_checked_at_the_boundary(sample_fn, bad, match):
    prompt, mask = bad(*_prompts())
    with pytest.raises(AssertionError, match=match):
        sample_fn(prompt, mask, jax.random.key(0), max_new_tokens=T, eos_id=NO_EOS, temperature=1.0)
