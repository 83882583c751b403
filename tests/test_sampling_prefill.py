"""grpo_jax.sampling doing less work: one prefill per prompt group (group_size), no per-step log-softmax
when the caller does not want the sampler's log-probs (logps=False), no vocabulary sort at top_p = 1.
Each changes the work, never the tokens.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax import model, sampling, sharding
from grpo_jax.model import ModelConfig

CFG = ModelConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                  intermediate_size=64, rope_theta=10000.0, tie_embeddings=False, attention_bias=True)
P, T = 6, 130  # T = 130: two decode segments, the (repeated) cache grows between them
NO_EOS = -1
PARAMS = model.init_params(CFG, jax.random.key(0))
PARAMS["lm_head"]["kernel"] = PARAMS["lm_head"]["kernel"] * 25.0  # logits std ~3, as in test_sampling


def _groups(b: int, g: int):
    """b distinct left-padded prompts, each repeated g times group-major: [b * g, P] (as rollout.generate)."""
    tokens = np.array(jax.random.randint(jax.random.key(1), (8, P), 0, CFG.vocab_size))
    mask = np.ones((8, P), np.int32)
    mask[1, :2] = 0
    mask[3, :5] = 0  # a one-token prompt
    tokens[mask == 0] = 7  # junk in the pad slots
    return jnp.asarray(np.repeat(tokens[:b], g, 0)), jnp.asarray(np.repeat(mask[:b], g, 0))


def _lower(n, *, t=10, **static):
    """The sampler's StableHLO for n rows of P prompt tokens (one device)."""
    kw = dict(max_new_tokens=t, top_k=0, top_p=1.0, prompt_sharding=None) | static
    shape = jax.ShapeDtypeStruct((n, P), jnp.int32)
    return sampling._sample_jit.lower(CFG, PARAMS, shape, shape, jax.random.key(0), jnp.float32(1.0),
                                      jnp.array([NO_EOS]), **kw).as_text()


def _assert_same(out, ref):
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    # Not bit-identical: XLA:CPU picks its kernels by shape, so the B-row prefill rounds some values of
    # layer 1 on differently from the N-row one (1 ulp, 3e-8); log-probs of ~-3 then differ by up to
    # 3e-6 (relative 9e-7). Float rounding, not a different computation: a 1e-6-relative bound.
    np.testing.assert_allclose(out.logps, ref.logps, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_group_prefill_gives_the_same_rollout(temperature):
    prompt, mask = _groups(4, 4)  # N = 16 rows, B = 4 prompts
    kw = dict(max_new_tokens=T, eos_id=NO_EOS, temperature=temperature)
    ref = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(3), **kw)
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(3), group_size=4, **kw)
    _assert_same(out, ref)
    if temperature:  # the G rows of a group share a prompt, not their samples
        assert len({tuple(r) for r in np.asarray(out.tokens[:4])}) > 1


@pytest.mark.parametrize("g, layout", [(2, "replicated"),  # B = 8 prompts: the prefill split over 8 devices
                                       (4, "replicated"),  # B = 4 < 8 devices: an uneven (padded) split
                                       (4, "tensor")])  # rows over "data" (4), KV heads over "fsdp"
def test_group_prefill_on_eight_devices(g, layout):
    prompt, mask = _groups(16 // g, g)
    mesh = sharding.make_mesh(data=4, fsdp=2)
    params = jax.device_put(PARAMS, sharding.param_shardings(mesh, PARAMS))
    batch = sharding.batch_sharding(mesh)
    prompt, mask = jax.device_put(prompt, batch), jax.device_put(mask, batch)
    kw = dict(max_new_tokens=T, eos_id=NO_EOS, temperature=1.0, weight_layout=layout)
    ref = sampling.sample(CFG, params, prompt, mask, jax.random.key(9), **kw)
    out = sampling.sample(CFG, params, prompt, mask, jax.random.key(9), group_size=g, **kw)
    assert len(out.tokens.sharding.device_set) == 8
    _assert_same(out, ref)


def test_group_size_with_a_protocol_model():
    # A protocol model's cache layout is its own: it prefills all N rows, and group_size changes nothing.
    from flax import nnx
    graphdef, state = nnx.split(model.CausalLM.from_params(CFG, PARAMS))
    prompt, mask = _groups(2, 2)
    kw = dict(max_new_tokens=4, eos_id=NO_EOS, temperature=1.0)
    ref = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(5), group_size=2, **kw)
    _assert_same(sampling.sample(graphdef, state.to_pure_dict(), prompt, mask, jax.random.key(5), group_size=2,
                                 **kw), ref)


def test_group_size_must_divide_the_rows():
    prompt, mask = _groups(3, 2)  # N = 6
    for bad in (4, 0):
        with pytest.raises(ValueError, match="group_size"):
            sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=2, eos_id=NO_EOS,
                            group_size=bad)
    with pytest.raises(ValueError, match="group_size"):
        sampling.sample_traced(CFG, PARAMS, prompt, mask, jax.random.key(0), max_new_tokens=2, eos_id=NO_EOS,
                               group_size=4)


def _dot_rows(text: str) -> set:
    """Leading dims of the program's matmul results (the prefill's projections are [rows * P, ...])."""
    return {int(d) for d in re.findall(r"stablehlo\.dot_general.*-> tensor<(\d+)x", text)}


def test_prefill_runs_on_one_row_per_group():
    n, g = 16, 4
    assert n * P in _dot_rows(_lower(n)) and (n // g) * P not in _dot_rows(_lower(n))
    rows = _dot_rows(_lower(n, group_size=g))
    assert (n // g) * P in rows and n * P not in rows  # prefill over B = 4 prompts, not N = 16 rows
    assert n in rows  # the decode steps still run all N rows


def test_logps_false_skips_the_log_softmax_and_keeps_the_tokens():
    prompt, mask = _groups(4, 2)
    kw = dict(max_new_tokens=T, eos_id=(5, 9), temperature=1.0)  # EOS: some rows stop early
    ref = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(4), **kw)
    out = sampling.sample(CFG, PARAMS, prompt, mask, jax.random.key(4), logps=False, **kw)
    np.testing.assert_array_equal(out.tokens, ref.tokens)
    np.testing.assert_array_equal(out.mask, ref.mask)
    assert 0 < float(ref.mask.mean()) < 1
    assert not np.any(np.asarray(out.logps)) and np.any(np.asarray(ref.logps))
    # One exp (the log-sum-exp of token_logps) less per emit site: token 0 and each decode segment.
    sites = 1 + len(sampling._segment_ends(T))
    with_logps, without = _lower(8, t=T), _lower(8, t=T, logps=False)
    count = lambda text: text.count("stablehlo.exponential")  # noqa: E731
    assert count(with_logps) - count(without) == sites
    assert len(without) < len(with_logps)


def test_no_vocabulary_sort_unless_top_p_truncates():
    assert "stablehlo.sort" not in _lower(8, top_p=1.0)
    assert "stablehlo.sort" not in _lower(8, top_p=1.0, top_k=5)  # top-k is lax.top_k, not a sort
    assert "stablehlo.sort" in _lower(8, top_p=0.9)
