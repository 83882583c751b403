"""Shared-prefix forward (model.grouped_hidden_states, train.shared_prefix): each prompt encoded once
for its G completions gives the hidden states, log-probs, gradients and train steps of the plain
forward over the B*G concatenated rows, to float round-off."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import config as config_lib
from grpo_jax import model as model_lib
from grpo_jax import scoring, sharding
from grpo_jax import train_step as ts

CFG = model_lib.ModelConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=8, intermediate_size=64, tie_embeddings=True, attention_bias=True)
VARIANTS = {
    "gqa_bias_tied": CFG,
    "qk_norm_mha_untied": dataclasses.replace(CFG, qk_norm=True, attention_bias=False, num_kv_heads=4,
                                              tie_embeddings=False),
    "scan_remat_full": dataclasses.replace(CFG, scan_layers=True, remat="full"),
    "remat_dots_unrolled": dataclasses.replace(CFG, qk_norm=True, num_kv_heads=1, remat="dots"),
}
B, G, P, T = 4, 4, 7, 6  # N = 16 rows, group-major


def make_batch(seed=0, b=B, g=G, p=P, t=T):
    """A group-major batch: b left-padded prompts of different lengths (one all-pad-free, one a single
    token), each repeated g times; completions with padding (pad id 0) after a random EOS."""
    rng = np.random.default_rng(seed)
    prompts = rng.integers(4, CFG.vocab_size, (b, p)).astype(np.int32)
    lengths = np.array([p, 1, *rng.integers(2, p, b - 2)])[:b]
    pmask = (np.arange(p)[None] >= p - lengths[:, None]).astype(np.int32)
    prompts = np.where(pmask == 1, prompts, 0)
    n = b * g
    comp = rng.integers(4, CFG.vocab_size, (n, t)).astype(np.int32)
    clen = rng.integers(1, t + 1, n)
    cmask = (np.arange(t)[None] < clen[:, None]).astype(np.float32)
    comp = np.where(cmask == 1, comp, 0)
    adv = rng.normal(size=n).astype(np.float32)
    return ts.Batch(jnp.asarray(np.repeat(prompts, g, 0)), jnp.asarray(np.repeat(pmask, g, 0)),
                    jnp.asarray(comp), jnp.asarray(cmask), jnp.asarray(adv))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_grouped_hidden_states_equal_full_forward(variant):
    cfg = VARIANTS[variant]
    params = model_lib.init_params(cfg, jax.random.key(0))
    batch = make_batch()
    tokens = jnp.concatenate([batch.prompt_tokens, batch.completion_tokens], axis=1)
    mask = jnp.concatenate([batch.prompt_mask, jnp.ones_like(batch.completion_tokens)], axis=1)
    full = jax.jit(lambda p: model_lib.hidden_states(cfg, p, tokens, attention_mask=mask))(params)
    prompt_hidden, completion_hidden = jax.jit(lambda p: model_lib.grouped_hidden_states(
        cfg, p, batch.prompt_tokens[::G], batch.prompt_mask[::G], batch.completion_tokens, G))(params)
    assert prompt_hidden.shape == (B, P, cfg.hidden_size)
    assert completion_hidden.shape == (B * G, T, cfg.hidden_size)
    real = np.repeat(np.asarray(batch.prompt_mask[::G], bool), G, 0)  # pad rows: finite, never read
    np.testing.assert_allclose(np.asarray(jnp.repeat(prompt_hidden, G, 0))[real], np.asarray(full[:, :P])[real],
                               atol=2e-5)
    np.testing.assert_allclose(completion_hidden, full[:, P:], atol=2e-5)


# Per variant: the LM head in one chunk or in a scan of chunks, and a second shared group size.
SCORE_CASES = {"gqa_bias_tied": (None, 2), "qk_norm_mha_untied": (3 * B * G, None),
               "scan_remat_full": (3 * B * G, None), "remat_dots_unrolled": (None, None)}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_completion_scores_and_gradients_equal(variant):
    cfg = VARIANTS[variant]
    chunk_size, other_group_size = SCORE_CASES[variant]  # 3 * N rows: chunks of 3 of the T = 6 positions
    params = model_lib.init_params(cfg, jax.random.key(1))
    batch = make_batch(1)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=batch.completion_mask.shape), jnp.float32)

    def scores(params, group_size):
        logps, stats = scoring.completion_scores(cfg, params, batch.prompt_tokens, batch.prompt_mask,
                                                 batch.completion_tokens, temperature=0.9, entropy=True,
                                                 chunk_size=chunk_size, group_size=group_size)
        return (logps * weights * batch.completion_mask).sum(), (logps, stats["entropy"])

    scores = jax.jit(jax.value_and_grad(scores, has_aux=True), static_argnums=1)
    (v1, (l1, e1)), g1 = scores(params, 1)
    for group_size in (G, other_group_size) if other_group_size else (G,):
        (vg, (lg, eg)), gg = scores(params, group_size)
        np.testing.assert_allclose(lg, l1, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(eg, e1, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(vg, v1, rtol=1e-5)
        chex.assert_trees_all_close(gg, g1, rtol=1e-5, atol=1e-5)  # gradients are ~0.1


def test_bfloat16_compute_close():
    cfg = dataclasses.replace(CFG, dtype="bfloat16")
    params = model_lib.init_params(cfg, jax.random.key(0))
    batch = make_batch(3)
    fn = jax.jit(lambda p, g: scoring.completion_logps(cfg, p, batch.prompt_tokens, batch.prompt_mask,
                                                       batch.completion_tokens) if g == 1 else
                 scoring.completion_scores(cfg, p, batch.prompt_tokens, batch.prompt_mask,
                                           batch.completion_tokens, group_size=g)[0], static_argnums=1)
    np.testing.assert_allclose(fn(params, G), fn(params, 1), atol=3e-2)  # bf16 round-off


@pytest.mark.parametrize("g", [1, 2, 3, 4, 6, 8, 12])
@pytest.mark.parametrize("chunks", [1, 2, 3, 4, 8])
def test_strided_chunks_hold_contiguous_runs_of_one_prompt(g, chunks):
    b = 6
    n = b * g
    if n % chunks:
        return
    group_of_row = jnp.arange(n) // g
    share = ts.shared_group_size(g, chunks)
    assert share == (g // chunks if g % chunks == 0 else 1)
    for chunk in np.asarray(ts._split(group_of_row, chunks)):  # [chunks, n / chunks]
        runs = chunk.reshape(-1, share)  # each run of `share` rows: one prompt
        assert (runs == runs[:, :1]).all()
        if share > 1:  # every row of a group is in exactly one run of one chunk
            assert len(set(runs[:, 0])) == len(runs)


STEP_CFG = dataclasses.replace(CFG, num_layers=1)  # one layer: the train steps compile in half the time


def _run(mesh, *, steps=1, opt=None, **kw):
    params = sharding.init_params_sharded(STEP_CFG, jax.random.key(0), mesh)
    ref = sharding.init_params_sharded(STEP_CFG, jax.random.key(1), mesh)
    opt = opt or optax.sgd(0.5)
    state = ts.init_state(params, opt, mesh)
    state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
    fn = ts.jit_train_step(ts.build_train_step(STEP_CFG, opt, group_size=G, **kw), mesh, state_sh,
                           sharding.param_shardings(mesh, ref))
    hp = ts.make_hparams(epsilon=0.2, beta=0.04, temperature=1.0)
    history = []
    for i in range(steps):
        state, metrics = fn(state, ref, make_batch(10 + i), hp)
        history.append(jax.device_get(metrics))
    return state, history


def mesh_of(data, fsdp):
    return sharding.make_mesh(data=data, fsdp=fsdp, devices=jax.devices()[: data * fsdp])


def _assert_same(a, b, *, atol=2e-5):
    (s1, m1), (s2, m2) = a, b
    for x, y in zip(m1, m2):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=atol, err_msg=k)
    chex.assert_trees_all_close(s1.params, s2.params, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("loss_type,importance_level,K,M", [
    ("grpo", "token", 1, 1),
    ("bnpo", "token", 2, 1),  # two optimizer steps: each chunk holds runs of G / 2 rows per prompt
    ("dr_grpo", "sequence", 1, 2),  # accumulation over 2 chunks
])
def test_train_step_shared_equals_unshared(loss_type, importance_level, K, M):
    kw = dict(loss_type=loss_type, importance_level=importance_level, num_iterations=2,
              steps_per_generation=K, num_minibatches=M)
    step = ts.build_train_step(CFG, optax.sgd(0.5), shared_prefix=True, group_size=G, **kw)
    assert step.shared_group_size == G // (K * M)
    mesh = mesh_of(1, 1)
    _assert_same(_run(mesh, shared_prefix=False, **kw), _run(mesh, shared_prefix=True, **kw))


def test_train_step_no_sharing_when_chunks_do_not_divide_group():
    step = ts.build_train_step(CFG, optax.sgd(0.5), shared_prefix=True, group_size=G, num_minibatches=8)
    assert step.shared_group_size == 1  # G = 4 rows of a prompt over 8 strided chunks: nothing to share
    step = ts.build_train_step(CFG, optax.sgd(0.5), shared_prefix=True, group_size=6, num_minibatches=4)
    assert step.shared_group_size == 1  # 6 rows over 4 chunks: irregular runs
    assert ts.build_train_step(CFG, optax.sgd(0.5), group_size=G).shared_group_size == 1  # off by default


def test_train_step_sharded_8_devices_equals_single_device():
    kw = dict(loss_type="grpo", num_iterations=2, steps_per_generation=2, shared_prefix=True)
    # Against the plain forward on one device: sharded == single device and shared == unshared at once.
    single = _run(mesh_of(1, 1), steps=2, **{**kw, "shared_prefix": False})
    sharded = _run(mesh_of(4, 2), steps=2, **kw)
    _assert_same(single, sharded, atol=5e-5)


def test_cudnn_attention_is_refused():
    # cuDNN's padding masks cannot express a group's prompt keys: the grouped forward refuses it, the
    # train step scores every row whole instead, and the config takes any kernel with the default on.
    cfg = dataclasses.replace(CFG, attention="cudnn", dtype="bfloat16")
    params = model_lib.init_params(CFG, jax.random.key(0))
    batch = make_batch()
    with pytest.raises(ValueError, match="xla or splash, got 'cudnn'"):
        model_lib.grouped_hidden_states(cfg, params, batch.prompt_tokens[::G], batch.prompt_mask[::G],
                                        batch.completion_tokens, G)
    assert ts.build_train_step(cfg, optax.sgd(0.5), shared_prefix=True, group_size=G).shared_group_size == 1
    with pytest.raises(ValueError, match="not 4 prompts x group_size=3"):
        model_lib.grouped_hidden_states(CFG, params, batch.prompt_tokens[::G], batch.prompt_mask[::G],
                                        batch.completion_tokens, 3)
    config = config_lib.Config()
    config.train.shared_prefix = True
    for attention, dtype in (("xla", "float32"), ("splash", "float32"), ("cudnn", "bfloat16"), ("auto", "float32")):
        config.model.attention, config.model.dtype = attention, dtype
        config_lib.validate(config)


def test_plan_step_flops_shared_group():
    from grpo_jax import plan
    c = model_lib.ModelConfig(vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2,
                              head_dim=128, intermediate_size=8960)  # Qwen2.5-1.5B
    n, p, t, g = 128, 200, 300, 8  # GSM8K-shaped: B = 16 prompts x G = 8
    plain = plan.step_flops(c, n=n, p=p, t=t, use_reference=True)
    assert plan.step_flops(c, n=n, p=p, t=t, use_reference=True, shared_group=1) == plain
    shared = plan.step_flops(c, n=n, p=p, t=t, use_reference=True, shared_group=g)
    assert shared["sample"] == plain["sample"]
    head = 2.0 * n * t * c.hidden_size * c.vocab_size
    matmuls = c.num_layers * plan.layer_matmul_flops(c, n * (p + t))
    saved_matmuls = (g - 1) / g * p / (p + t) * matmuls  # the prompt share of the layer matmuls
    saved_attention = c.num_layers * 4.0 * c.num_heads * c.head_dim * (1 - 1 / g) * n * p * (p + 1) / 2
    np.testing.assert_allclose(plain["reference"] - shared["reference"], saved_matmuls + saved_attention,
                               rtol=1e-9)
    assert 0.25 < 1 - shared["reference"] / plain["reference"] < 0.35  # ~29% of the forward, head included
    assert shared["policy"] / plain["policy"] == pytest.approx(shared["reference"] / plain["reference"])
    assert head < plain["reference"]
