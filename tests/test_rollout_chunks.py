"""Rollouts in row chunks (`sampling.batch_size`, `rollout.sample_rows`): one compiled sampler for every
chunk of whole groups, chunk i drawn with fold_in(key, i); no chunking (0) or a single chunk is the
unchunked call, bit for bit; chunk sizes that cannot work are refused naming the key."""
import types

import jax
import numpy as np
import pytest

from grpo_jax import build, rollout, sampling, sharding
from grpo_jax import config as cfg_lib
from grpo_jax.model import ModelConfig, init_params

MODEL = ModelConfig(vocab_size=40, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                    intermediate_size=64)
B, G, P, T = 4, 4, 6, 8  # N = 16 rows, group-major
EOS = (39,)


@pytest.fixture(scope="module")
def run():
    """rows(batch_size, key) -> (tokens, mask) from rollout.sample_rows on a data=4 mesh, and the
    direct sampler call it must reproduce."""
    mesh = sharding.make_mesh(data=4, fsdp=1, devices=jax.devices()[:4])
    params = init_params(MODEL, jax.random.key(0))
    rng = np.random.default_rng(0)
    lengths = np.array([P, 1, 3, 5])
    pmask = np.repeat((np.arange(P)[None] >= P - lengths[:, None]).astype(np.int32), G, 0)  # [N, P]
    ptok = np.where(pmask == 1, np.repeat(rng.integers(0, 39, (B, P)), G, 0), 0).astype(np.int32)

    def setup(batch_size):
        c = cfg_lib.Config()
        c.grpo.group_size, c.train.prompts_per_step = G, B
        c.sampling.max_new_tokens, c.sampling.max_prompt_length, c.sampling.batch_size = T, P, batch_size
        cfg_lib.validate(c, num_devices=4)
        return types.SimpleNamespace(config=c, model_config=MODEL, put=build.make_put(mesh), eos_ids=EOS)

    def rows(batch_size, key):
        return rollout.sample_rows(setup(batch_size), params, ptok, pmask, key)

    def direct(part, key):
        put = build.make_put(mesh)
        r = sampling.sample(MODEL, params, put(ptok[part]), put(pmask[part]), key, max_new_tokens=T, eos_id=EOS,
                            group_size=G, logps=False)
        return np.asarray(r.tokens), np.asarray(r.mask)
    return rows, direct


def test_no_chunks_or_one_chunk_is_the_unchunked_call(run):
    rows, direct = run
    key = jax.random.key(7)
    want = direct(slice(None), key)
    for batch_size in (0, B * G):  # 0 = all rows at once; B * G = one chunk: the step's key itself
        got = rows(batch_size, key)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        assert got[0].dtype == np.int32 and got[1].dtype == np.float32


def test_chunks_share_one_program_and_fold_the_key_per_chunk(run):
    rows, direct = run
    key = jax.random.key(8)
    programs = sampling._sample_jit._cache_size()
    tokens, mask = rows(G, key)  # 4 chunks of one group each
    assert sampling._sample_jit._cache_size() <= programs + 1  # at most one new program for the 4 calls
    for i in range(B):
        part = slice(i * G, (i + 1) * G)
        want = direct(part, jax.random.fold_in(key, i))
        np.testing.assert_array_equal(tokens[part], want[0])
        np.testing.assert_array_equal(mask[part], want[1])
    programs = sampling._sample_jit._cache_size()
    again = rows(G, key)  # a pure function of the step's key: a resumed step samples the same rows
    np.testing.assert_array_equal(again[0], tokens)
    assert sampling._sample_jit._cache_size() == programs  # and compiles nothing new


@pytest.mark.parametrize("overrides, devices, allowed", [
    (["sampling.batch_size=6"], None, "whole groups"),  # G = 4 rows per group
    (["sampling.batch_size=12"], None, "a divisor of the 16 rows"),  # B * G = 16
    (["sampling.batch_size=-4"], None, ">= 0"),
    (["grpo.dynamic_sampling=true", "grpo.dynamic_sampling_factor=1.5", "sampling.batch_size=16"], None,
     "a divisor of the 24 rows"),  # one round: ceil(4 * 1.5) * 4 = 24 rows
    (["sampling.batch_size=4"], 8, "divisible by the mesh's 8 devices"),
])
def test_bad_chunk_sizes_are_refused_naming_the_key(overrides, devices, allowed):
    base = ["grpo.group_size=4", "train.prompts_per_step=4", "train.eval_batch_size=8", "sft.batch_size=8"]
    config = cfg_lib.apply_overrides(cfg_lib.Config(), base + overrides)
    with pytest.raises(cfg_lib.ConfigError, match=r"`sampling\.batch_size`") as error:
        cfg_lib.validate(config, num_devices=devices)
    assert allowed in str(error.value)


def test_good_chunk_sizes_pass():
    base = ["grpo.group_size=4", "train.prompts_per_step=4", "train.eval_batch_size=8", "sft.batch_size=8"]
    for overrides in (["sampling.batch_size=8"], ["sampling.batch_size=0"],
                      ["grpo.dynamic_sampling=true", "grpo.dynamic_sampling_factor=1.5", "sampling.batch_size=8"]):
        cfg_lib.validate(cfg_lib.apply_overrides(cfg_lib.Config(), base + overrides), num_devices=8)
    assert cfg_lib.sampler_rows(cfg_lib.apply_overrides(
        cfg_lib.Config(), base + ["grpo.dynamic_sampling=true", "grpo.dynamic_sampling_factor=3"])) == 48
