"""Length buckets (train.length_buckets, grpo_jax/buckets.py): the bucket set, trimming never cuts a
real token, a trimmed update equals the padded one, and the program compiles only a few shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax import buckets
from grpo_jax import model as model_lib
from grpo_jax import sampling
from grpo_jax import train
from grpo_jax import train_step as ts

from test_train import QUICKSTART, TINY


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_bucket_length_properties(data):
    maximum = data.draw(st.integers(1, 4096))
    n = data.draw(st.integers(0, maximum))
    widths = buckets.bucket_lengths(maximum)
    b = buckets.bucket_length(n, maximum)
    assert n <= b <= maximum and b in widths
    assert buckets.bucket_length(b, maximum) == b  # idempotent
    assert all(w < b for w in widths if w < b) and not any(n <= w < b for w in widths)  # the smallest fit
    assert widths[-1] == maximum and list(widths) == sorted(set(widths)) and len(widths) <= 4
    assert all(w % buckets.BUCKET_MULTIPLE == 0 or w == maximum for w in widths)
    assert b - n < max(maximum / 4 + buckets.BUCKET_MULTIPLE, 1)  # waste under a quarter (+ alignment)


def test_bucket_examples_and_errors():
    assert buckets.bucket_lengths(16) == (8, 16)
    assert buckets.bucket_lengths(32) == (8, 16, 24, 32)
    assert buckets.bucket_lengths(1024) == (256, 512, 768, 1024)
    assert buckets.bucket_lengths(5) == (5,)
    assert buckets.bucket_length(0, 32) == 8
    with pytest.raises(ValueError):
        buckets.bucket_length(33, 32)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_trimming_never_cuts_a_real_token(data):
    n, p, t = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    plen = np.array(data.draw(st.lists(st.integers(0, p), min_size=n, max_size=n)))
    clen = np.array(data.draw(st.lists(st.integers(0, t), min_size=n, max_size=n)))
    rng = np.random.default_rng(0)
    ptok, ctok = rng.integers(0, 50, (n, p)), rng.integers(0, 50, (n, t))
    pmask = (np.arange(p)[None] >= p - plen[:, None]).astype(np.int32)  # left-padded
    cmask = (np.arange(t)[None] < clen[:, None]).astype(np.float32)  # right-padded
    tp, tm = buckets.trim_prompts(ptok, pmask)
    assert tp.shape[1] == buckets.bucket_length(int(plen.max()), p) and tm.shape == tp.shape
    np.testing.assert_array_equal(tp, ptok[:, p - tp.shape[1]:])  # the rightmost columns
    np.testing.assert_array_equal(tm.sum(1), plen)
    tc, tcm = buckets.trim_completions(ctok, cmask)
    assert tc.shape[1] == buckets.bucket_length(int(clen.max()), t)
    np.testing.assert_array_equal(tc, ctok[:, :tc.shape[1]])  # the leftmost columns
    np.testing.assert_array_equal(tcm.sum(1), clen)
    # Trimming again, against the configured maximum, stays on the same bucket.
    assert buckets.trim_prompts(tp, tm, p)[0].shape == tp.shape
    assert buckets.trim_completions(tc, tcm, t)[0].shape == tc.shape
    padded = buckets.left_pad(tp, p)
    np.testing.assert_array_equal(buckets.left_pad(tm, p).sum(1), plen)
    assert padded.shape == (n, p)


CFG = model_lib.ModelConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=8, intermediate_size=64, tie_embeddings=True, attention_bias=True)
N, P, T = 16, 16, 24  # buckets: P -> {8, 16}, T -> {8, 16, 24}


def padded_batch():
    """Prompts of 3..6 real tokens in 16 columns, completions of <= 10 loss-masked tokens in 24, with
    random ids (not pad) in every padding column, a row whose loss mask is all 0 (DAPO-masked
    truncated row: real tokens to the end, no loss) and one empty completion."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(4, CFG.vocab_size, (N, P)).astype(np.int32)
    plen = rng.integers(3, 7, N)
    pmask = (np.arange(P)[None] >= P - plen[:, None]).astype(np.int32)
    comp = rng.integers(4, CFG.vocab_size, (N, T)).astype(np.int32)
    clen = rng.integers(1, 11, N)
    clen[3], clen[5] = 0, 10
    cmask = (np.arange(T)[None] < clen[:, None]).astype(np.float32)
    adv = rng.normal(size=N).astype(np.float32)
    return prompt, pmask, comp, cmask, adv


@pytest.mark.parametrize("loss_type,importance_level", [("grpo", "token"), ("bnpo", "token"),
                                                        ("dr_grpo", "token"), ("grpo", "sequence")])
def test_trimmed_update_equals_padded(loss_type, importance_level):
    # Plain SGD, lr 1: the parameter change is the gradient itself (Adam would blow float noise on
    # near-zero gradient entries up to ~lr). K = 2 optimizer steps, so the second one's ratios leave
    # 1; the reference (beta > 0) is a different model, so the KL is nonzero.
    prompt, pmask, comp, cmask, adv = padded_batch()
    tp, tpm = buckets.trim_prompts(prompt, pmask)
    tc, tcm = buckets.trim_completions(comp, cmask)
    assert tp.shape == (N, 8) and tc.shape == (N, 16)
    opt = optax.sgd(1.0)
    step = jax.jit(ts.build_train_step(CFG, opt, loss_type=loss_type, importance_level=importance_level,
                                       steps_per_generation=2,
                                       max_completion_length=T))  # dr_grpo: the configured T, static
    params = model_lib.init_params(CFG, jax.random.key(0))
    ref = model_lib.init_params(CFG, jax.random.key(1))
    hp = ts.make_hparams(epsilon=0.2, beta=0.04, temperature=0.9)
    out = {}
    for name, arrays in (("padded", (prompt, pmask, comp, cmask)), ("trimmed", (tp, tpm, tc, tcm))):
        state = ts.TrainState(jnp.zeros((), jnp.int32), params, opt.init(params))
        batch = ts.Batch(*map(jnp.asarray, arrays), jnp.asarray(adv))
        out[name] = jax.device_get(step(state, ref, batch, hp))
    (s_full, m_full), (s_cut, m_cut) = out["padded"], out["trimmed"]
    assert m_full["ratio_max"] > 1.0  # really off-policy in the later updates
    for k in m_full:
        np.testing.assert_allclose(m_cut[k], m_full[k], rtol=1e-5, atol=1e-6, err_msg=k)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), s_cut.params, s_full.params)
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(s_cut.params),
                                                          jax.tree.leaves(params))) > 1e-3  # it trained


# The quick start shrunk (test_train.TINY: 4 prompts x G = 4 = 16 rows, a 30-step SFT warm start),
# 5 GRPO steps, no eval, with room to spare: P = 40 (buckets 16, 24, 32, 40) for prompts of ~14
# tokens, T = 64 (16, 32, 48, 64) for completions of ~30.
FAST = TINY + ["train.steps=5", "train.eval_every=0", "sft.eval_every=0", "train.samples_every=0",
               "train.checkpoint_every=0", "sft.stop_accuracy=0", "mesh.data=1", "mesh.fsdp=1",
               "sampling.max_prompt_length=40", "sampling.max_new_tokens=64"]


def spy_run(workdir, monkeypatch, *extra):
    """Runs the program; returns (update batch shapes, prompt widths the sampler saw, train-step
    compiles), counted by wrapping the jitted step and the sampler."""
    shapes, widths, jitted = [], [], []
    make = ts.jit_train_step

    def spy_jit(*args, **kwargs):
        fn = make(*args, **kwargs)
        jitted.append(fn)

        def step(state, second, batch, hp):
            shapes.append((batch.prompt_tokens.shape, batch.completion_tokens.shape))
            return fn(state, second, batch, hp)
        return step

    sample = sampling.sample

    def spy_sample(config, params, prompt_tokens, *args, **kwargs):
        widths.append(prompt_tokens.shape[1])
        return sample(config, params, prompt_tokens, *args, **kwargs)

    monkeypatch.setattr(ts, "jit_train_step", spy_jit)
    monkeypatch.setattr(sampling, "sample", spy_sample)
    rows = train.run(["--config", QUICKSTART, "--workdir", str(workdir)]
                     + [f"--config.{o}" for o in FAST + list(extra)])
    return shapes, widths, jitted[0]._cache_size(), rows


def test_program_compiles_a_few_bucket_shapes(tmp_path, monkeypatch):
    # temperature 0.3: the tiny SFT'd model then ends whole batches before 64 tokens, so some updates'
    # completions are cut (at 1.0 every step of this short run had a row run to the limit)
    shapes, widths, compiles, rows = spy_run(tmp_path / "on", monkeypatch, "sampling.temperature=0.3")
    print(f"length buckets on: update shapes {shapes}, {compiles} train-step compile(s); "
          f"sampler prompt widths {sorted(set(widths))}")
    assert len(shapes) == 5 and all(p[0] == c[0] == 16 for p, c in shapes)
    assert all(p[1] in (16, 24, 32, 40) and c[1] in (16, 32, 48, 64) for p, c in shapes)
    assert compiles == len(set(shapes)) <= 3, shapes  # one compile per distinct bucket pair
    assert set(widths) == {16}  # the sampler saw prompts cut from 40 to 16 columns
    # each update's completions cut to the bucket of its longest completion, and some of them cut
    longest = [r["completion_length_max"] for r in rows if "loss" in r]
    assert [c[1] for _, c in shapes] == [next(b for b in (16, 32, 48, 64) if b >= m) for m in longest], longest
    assert any(c[1] < 64 for _, c in shapes), longest
    logged = [(r["update_prompt_width"], r["update_completion_width"]) for r in rows if "loss" in r]
    assert logged == [(float(p[1]), float(c[1])) for p, c in shapes]
    assert all(r["completion_length_max"] <= r["update_completion_width"] for r in rows if "loss" in r)
    assert all(r["prompt_length_max"] <= r["update_prompt_width"] for r in rows if "loss" in r)


def test_switch_off_keeps_full_shapes(tmp_path, monkeypatch):
    shapes, widths, compiles, _ = spy_run(tmp_path / "off", monkeypatch, "train.length_buckets=false")
    assert shapes == [((16, 40), (16, 64))] * 5 and compiles == 1
    assert set(widths) == {40}


def test_dynamic_sampling_rounds_of_different_prompt_buckets_concatenate(monkeypatch):
    # Round 0's prompts were cut to 8 columns, round 1's to 16: the kept rows are left-padded to 16
    # (real tokens and their mask unchanged), and the update then cuts them to their own bucket.
    from types import SimpleNamespace

    from grpo_jax import config as cfg_lib
    from grpo_jax import rollout

    c = cfg_lib.Config()
    c.train.prompts_per_step, c.grpo.group_size, c.grpo.dynamic_sampling = 2, 2, True
    c.grpo.dynamic_sampling_factor, c.sampling.max_prompt_length = 1.0, 16
    calls = []

    def fake_generate(s, params, examples, key):
        r = len(calls)
        calls.append(r)
        width, real = (8, 5) if r == 0 else (16, 12)
        n = 2 * len(examples)
        tokens = np.full((n, width), 100 + r, np.int32)
        mask = np.zeros((n, width), np.int32)
        mask[:, width - real:] = 1
        rewards = np.array([0.0, 1.0, 0.0, 0.0], np.float32) if r == 0 else np.array([1, 0, 1, 0], np.float32)
        return rollout.Generation(list(examples), tokens, mask, np.zeros((n, 4), np.int32),
                                  np.ones((n, 4), np.float32), rewards, {}, {"sample_seconds": 0.0},
                                  [""] * n)

    monkeypatch.setattr(rollout, "generate", fake_generate)
    s = SimpleNamespace(config=c, task=SimpleNamespace(train_example=lambda i: i))
    gen, valid, _ = rollout.collect(s, None, 0, jax.random.key(0))
    assert len(calls) == 2 and valid.tolist() == [1.0] * 4
    assert gen.prompt_tokens.shape == gen.prompt_mask.shape == (4, 16)
    assert gen.prompt_mask.sum(1).tolist() == [5, 5, 12, 12]
    np.testing.assert_array_equal(gen.prompt_tokens[:2, -5:], 100)  # round 0's group, right-aligned
    assert buckets.trim_prompts(gen.prompt_tokens, gen.prompt_mask, 16)[0].shape == (4, 16)
    assert buckets.trim_prompts(gen.prompt_tokens[:2], gen.prompt_mask[:2], 16)[0].shape == (2, 8)
