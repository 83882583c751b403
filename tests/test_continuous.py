"""grpo_jax.continuous: the continuous-batching engine draws the lockstep engine's samples (per-row
random streams) whatever the slot count, block size, budget (preemption) or mesh; its accounting;
bad input named before any work.

Rows of very different lengths: three EOS ids of the tiny model make some rows end after 1-3 tokens
while others run to the limit (checked, so the comparison cannot pass on uniform lengths).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import continuous, model, sampling, sharding
from grpo_jax.model import ModelConfig

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, rope_theta=10000.0, tie_embeddings=False, attention_bias=True)
N, P, T, G = 16, 6, 24, 4
PARAMS = model.init_params(CFG, jax.random.key(0))
PARAMS["lm_head"]["kernel"] = PARAMS["lm_head"]["kernel"] * 8.0  # peaked enough to end rows early
EOS = (3, 17, 40)


def _prompts():
    tokens = np.array(jax.random.randint(jax.random.key(1), (N, P), 0, CFG.vocab_size))
    tokens = np.repeat(tokens[::G], G, axis=0)  # group-major: G rows per prompt
    mask = np.ones((N, P), np.int32)
    mask[G:2 * G, :2] = 0  # left padding
    mask[2 * G:3 * G, :5] = 0  # a one-token prompt
    return jnp.asarray(tokens), jnp.asarray(mask)


KW = dict(max_new_tokens=T, eos_id=EOS, temperature=1.0, group_size=G)


def _lockstep(key=jax.random.key(7), **kw):
    return sampling.sample(CFG, PARAMS, *_prompts(), key, **{**KW, **kw})


def _assert_same(a, b):
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    np.testing.assert_allclose(np.asarray(a.logps), np.asarray(b.logps), atol=2e-5)


def test_rows_have_very_different_lengths():
    lengths = np.asarray(_lockstep().mask.sum(-1))
    assert lengths.min() <= 3 and lengths.max() == T and len(set(lengths.tolist())) >= 5, lengths


@pytest.mark.parametrize("slots, block_size", [(16, 8), (4, 4), (3, 8), (1, 24)])
def test_same_samples_as_lockstep(slots, block_size):
    ref = _lockstep()
    out, stats = continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(7), **KW, slots=slots,
                                   block_size=block_size)
    _assert_same(out, ref)
    # Every decode step draws one token per live slot; token 0 comes from the prefill's logits.
    assert int(stats.slot_steps.sum()) == int(ref.mask.sum()) - N and int(stats.preempted.sum()) == 0
    assert int(stats.steps.sum()) >= -(-int(ref.mask.sum() - N) // slots)


@pytest.mark.parametrize("kw", [dict(temperature=0.0), dict(top_k=5, truncated_logps=True),
                                dict(top_p=0.7, min_p=0.05, truncated_logps=True), dict(top_p=0.7),
                                dict(group_size=1), dict(logps=False)],
                         ids=["greedy", "top_k", "top_p_min_p", "top_p_full_logps", "g1", "no_logps"])
def test_same_samples_with_every_sampler_option(kw):
    # (top_p 0.8 would put one token of this model exactly at the edge, cumulative mass 0.80000013:
    # round-off between the two layouts then moves it in or out of the kept set)
    out, _ = continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(7), **{**KW, **kw}, slots=5, block_size=4)
    _assert_same(out, _lockstep(**kw))


def test_preemption_changes_the_time_not_the_samples():
    budget = continuous.min_cache_tokens(N // G, P, T, 4)  # one full completion beside the prompts
    out, stats = continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(7), **KW, slots=6, block_size=4,
                                   cache_tokens=budget)
    assert int(stats.preempted.sum()) > 0
    _assert_same(out, _lockstep())


def test_other_key_other_samples_same_key_same():
    a, _ = continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(7), **KW, slots=4, block_size=4)
    b, _ = continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(8), **KW, slots=4, block_size=4)
    assert not np.array_equal(a.tokens, b.tokens)
    _assert_same(b, _lockstep(jax.random.key(8)))


def test_engine_switch_of_sampling_sample():
    out = sampling.sample(CFG, PARAMS, *_prompts(), jax.random.key(7), **KW, engine="continuous", slots=4,
                          block_size=4)
    _assert_same(out, _lockstep())


def test_mesh_4x2_equals_one_device():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    params = jax.device_put(PARAMS, sharding.param_shardings(mesh, PARAMS))
    batch = sharding.batch_sharding(mesh)
    prompt, mask = (jax.device_put(x, batch) for x in _prompts())
    out, stats = continuous.sample(CFG, params, prompt, mask, jax.random.key(7), **KW, slots=8, block_size=4)
    assert len(out.tokens.sharding.device_set) == 8 and stats.steps.shape == (8,)
    _assert_same(out, _lockstep())
    lock = sampling.sample(CFG, params, prompt, mask, jax.random.key(7), **KW)  # lockstep on the mesh too
    _assert_same(out, lock)


def test_no_recompilation_for_another_key_or_temperature():
    continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(1), **KW, slots=4, block_size=4)
    before = continuous._sample_jit._cache_size()
    continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(2), **{**KW, "temperature": 0.7}, slots=4,
                      block_size=4)
    assert continuous._sample_jit._cache_size() == before


@pytest.mark.parametrize("kw, match", [
    (dict(block_size=5), r"sampling.block_size.*= 5.*divide.*max_new_tokens = 24"),
    (dict(block_size=4, cache_tokens=40), r"sampling.cache_tokens.*= 40 is too small.*at least 60"),
    (dict(slots=-1, block_size=4), r"sampling.slots.*= -1"),
])
def test_bad_shapes_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        continuous.sample(CFG, PARAMS, *_prompts(), jax.random.key(7), **KW, **kw)


def test_min_cache_tokens_by_hand():
    # scratch block + 4 prompts x ceil(6 / 4) blocks, in tokens, + one completion of 24
    assert continuous.min_cache_tokens(4, 6, 24, 4) == 4 * (1 + 4 * 2) + 24 == 60
    assert continuous.default_cache_tokens(4, 6, 24, 4, slots=3) == 36 + 3 * 24


def test_tensor_layout_on_a_mesh_is_refused():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    batch = sharding.batch_sharding(mesh)
    prompt, mask = (jax.device_put(x, batch) for x in _prompts())
    with pytest.raises(ValueError, match="sampling.weight_layout"):
        continuous.sample(CFG, PARAMS, prompt, mask, jax.random.key(7), **KW, slots=8, block_size=4,
                          weight_layout="tensor")
