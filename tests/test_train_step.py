"""The jitted GRPO step: sharded == single device, accumulation is exact, mu semantics, no recompiles."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from grpo_jax import model as model_lib
from grpo_jax import scoring, sharding
from grpo_jax import train_step as ts

CFG = model_lib.ModelConfig(vocab_size=48, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                            head_dim=8, intermediate_size=64, tie_embeddings=True, attention_bias=True)
N, P, T = 16, 6, 5  # 2 prompts x G = 8


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    prompt = rng.integers(4, CFG.vocab_size, (N, P)).astype(np.int32)
    pmask = np.ones((N, P), np.int32)
    pmask[::3, :2] = 0  # some left padding
    comp = rng.integers(4, CFG.vocab_size, (N, T)).astype(np.int32)
    lengths = rng.integers(1, T + 1, N)
    cmask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    adv = rng.normal(size=N).astype(np.float32)
    return ts.Batch(jnp.asarray(prompt), jnp.asarray(pmask), jnp.asarray(comp), jnp.asarray(cmask),
                    jnp.asarray(adv))


def run(mesh, *, lr=1e-2, beta=0.04, use_reference=True, steps=1, opt=None, **kw):
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    ref = sharding.init_params_sharded(CFG, jax.random.key(1), mesh) if use_reference else None
    opt = opt or ts.make_optimizer(learning_rate=lr, max_grad_norm=1.0)
    state = ts.init_state(params, opt, mesh)
    state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
    ref_sh = None if ref is None else sharding.param_shardings(mesh, ref)
    fn = ts.jit_train_step(ts.build_train_step(CFG, opt, use_reference=use_reference, **kw), mesh,
                           state_sh, ref_sh)
    hp = ts.make_hparams(epsilon=0.2, beta=beta, temperature=1.0)
    history = []
    for i in range(steps):
        state, metrics = fn(state, ref, make_batch(i), hp)
        history.append(jax.device_get(metrics))
    return state, history, fn


def mesh_of(data, fsdp):
    return sharding.make_mesh(data=data, fsdp=fsdp, devices=jax.devices()[: data * fsdp])


def test_sharded_4x2_equals_single_device():
    s1, m1, _ = run(mesh_of(1, 1), steps=2)
    s8, m8, _ = run(mesh_of(4, 2), steps=2)
    for a, b in zip(m1, m8):
        for k in a:
            np.testing.assert_allclose(a[k], b[k], atol=1e-4, err_msg=k)
    # Adam at lr 1e-2 turns reduction-order noise (~1e-7) into ~1e-5 parameter differences, and up
    # to 1.2e-4 on an entry whose gradient is ~4e-6 (Adam divides by its tiny second moment; with
    # plain SGD both layouts match one device to 4e-9).
    chex.assert_trees_all_close(s1.params, s8.params, atol=3e-4, rtol=1e-7)
    # Params and Adam moments really are sharded over fsdp, by name: the embedding along "embed" (D).
    emb = s8.params["embed_tokens"]["embedding"]
    assert emb.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
    mu = s8.opt_state[1][0].mu["embed_tokens"]["embedding"]
    assert mu.sharding.spec == emb.sharding.spec


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
def test_gradient_accumulation_is_exact(loss_type):
    # Plain SGD with lr 1, so the parameter change IS the accumulated gradient (Adam's first step,
    # ~lr * sign(g), would amplify float noise on near-zero gradient entries).
    mesh = mesh_of(2, 1)
    s1, m1, _ = run(mesh, loss_type=loss_type, num_minibatches=1, opt=optax.sgd(1.0))
    s4, m4, _ = run(mesh, loss_type=loss_type, num_minibatches=4, opt=optax.sgd(1.0))
    for k in ("loss", "kl", "entropy", "grad_norm", "clip_fraction"):
        np.testing.assert_allclose(m1[0][k], m4[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    chex.assert_trees_all_close(s1.params, s4.params, atol=1e-6, rtol=1e-7)


def test_on_policy_first_iteration_ratio_is_exactly_one():
    _, m, _ = run(mesh_of(1, 1), beta=0.0, use_reference=False)
    assert m[0]["ratio_mean"] == 1.0 and m[0]["ratio_max"] == 1.0
    assert m[0]["clip_fraction"] == 0.0 and m[0]["kl"] == 0.0


def test_reference_equal_to_policy_gives_zero_kl():
    mesh = mesh_of(1, 1)
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    opt = ts.make_optimizer(learning_rate=1e-3)
    state = ts.init_state(params, opt, mesh)
    step = ts.build_train_step(CFG, opt)
    _, m = jax.jit(step)(state, params, make_batch(), ts.make_hparams(epsilon=0.2, beta=0.04, temperature=1.0))
    assert float(m["kl"]) == pytest.approx(0.0, abs=1e-7)


def test_mu_two_goes_off_policy_and_clips():
    # With a large learning rate the second iteration's ratio moves away from 1 and gets clipped.
    _, m1, _ = run(mesh_of(1, 1), lr=0.1, num_iterations=1)
    _, m2, _ = run(mesh_of(1, 1), lr=0.1, num_iterations=2)
    assert m1[0]["ratio_max"] == 1.0
    assert m2[0]["ratio_max"] > 1.2  # iteration 2 saw ratios beyond 1 + epsilon ...
    assert m2[0]["clip_fraction"] > 0  # ... and clipping switched on
    # Per row: the clipped tokens of both passes (groups.jsonl's clip rate by difficulty). At K = 1 the
    # token-weighted clip fraction is their total over (tokens x passes); none at mu = 1.
    mask = np.asarray(make_batch(0).completion_mask)
    rows = np.asarray(m2[0][ts.ROW_CLIPPED])
    assert rows.shape == (mask.shape[0],) and np.all(rows <= 2 * mask.sum(1)) and rows.sum() > 0
    assert rows.sum() / (2 * mask.sum()) == pytest.approx(m2[0]["clip_fraction"], rel=1e-5)
    assert not np.asarray(m1[0][ts.ROW_CLIPPED]).any()
    # Split into 4 strided minibatches (the same update: accumulation is exact), each row's count
    # comes back to its own row.
    _, m4, _ = run(mesh_of(1, 1), lr=0.1, num_iterations=2, num_minibatches=4)
    np.testing.assert_array_equal(np.asarray(m4[0][ts.ROW_CLIPPED]), rows)


def test_update_raises_logps_of_positive_advantage_rows():
    mesh = mesh_of(1, 1)
    batch = make_batch()
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)

    def logps(p):
        logits = scoring.completion_logits(CFG, p, batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens)
        from grpo_jax.losses import token_logps
        lp = token_logps(logits, batch.completion_tokens)
        return np.asarray((lp * batch.completion_mask).sum(1))

    before = logps(params)
    opt = ts.make_optimizer(learning_rate=1e-3)
    state = ts.init_state(params, opt, mesh)
    step = jax.jit(ts.build_train_step(CFG, opt, use_reference=False))
    state, _ = step(state, None, batch, ts.make_hparams(epsilon=0.2, beta=0.0, temperature=1.0))
    delta = logps(state.params) - before
    adv = np.asarray(batch.advantages)
    # The surrogate's first-order change is sum_i A_i * delta_i / |row_i| > 0.
    assert np.sum(adv * delta / np.asarray(batch.completion_mask).sum(1)) > 0
    assert np.corrcoef(adv, delta)[0, 1] > 0.5


def test_no_recompilation_across_steps_and_hparams():
    mesh = mesh_of(4, 2)
    state, _, fn = run(mesh, steps=3)
    assert fn._cache_size() == 1
    params_ref = sharding.init_params_sharded(CFG, jax.random.key(1), mesh)
    fn(state, params_ref, make_batch(5), ts.make_hparams(epsilon=0.3, beta=0.1, temperature=0.7))
    assert fn._cache_size() == 1  # new epsilon / beta / temperature values are traced, not static


def test_state_is_donated():
    mesh = mesh_of(1, 1)
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    opt = ts.make_optimizer(learning_rate=1e-3)
    state = ts.init_state(params, opt, mesh)
    state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
    fn = ts.jit_train_step(ts.build_train_step(CFG, opt, use_reference=False), mesh, state_sh, None)
    fn(state, None, make_batch(), ts.make_hparams(epsilon=0.2, beta=0.0, temperature=1.0))
    assert state.params["embed_tokens"]["embedding"].is_deleted()


# --- K optimizer steps per sampled batch (train.steps_per_generation) ----------------------------


def _manual_updates(params, batch, opt, *, K, beta=0.04, ref=None, epsilon=0.2, loss_type="grpo"):
    """The K-step schedule written out by hand: old log-probs from the starting params, then one
    plain jax.grad + optax update per part (rows k, k+K, k+2K, ...)."""
    from grpo_jax.losses import grpo_loss, token_logps

    def logps_of(p, b):
        logits = scoring.completion_logits(CFG, p, b.prompt_tokens, b.prompt_mask, b.completion_tokens)
        return token_logps(logits, b.completion_tokens)

    # Jitted as whole functions (one compile per shape; op by op, the gradient compiled ~400 tiny
    # programs per test): still plain jax.grad of grpo_loss, nothing of the train step's code.
    @jax.jit
    def grad_of(p, part, old_part, ref_part):
        def loss(q):
            return grpo_loss(logps_of(q, part), old_part, ref_part, part.advantages, part.completion_mask,
                             epsilon=epsilon, beta=beta, loss_type=loss_type)[0]
        return jax.grad(loss)(p)

    old = jax.jit(logps_of)(params, batch)
    refs = jax.jit(logps_of)(ref, batch) if ref is not None else None
    opt_state = opt.init(params)
    for k in range(K):
        part = ts.Batch(*(None if x is None else x[k::K] for x in batch))
        grads = grad_of(params, part, old[k::K], None if refs is None else refs[k::K])
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("K, loss_type", [(1, "grpo"), (2, "grpo"), (4, "bnpo")])
def test_steps_per_generation_equals_k_hand_written_updates(K, loss_type):
    # SGD lr 1 again: the parameter change is the gradient itself, so a wrong old_logps, part or
    # weighting shows up at full size.
    mesh = mesh_of(1, 1)
    opt = optax.sgd(1.0)
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    ref = sharding.init_params_sharded(CFG, jax.random.key(1), mesh)
    want = _manual_updates(params, make_batch(), opt, K=K, ref=ref, loss_type=loss_type)
    state, _, _ = run(mesh, opt=opt, steps_per_generation=K, loss_type=loss_type)
    # The updates reach 3.6 in size (SGD lr 1: the gradients themselves); two differently compiled
    # programs summing in their own orders agree to ~3e-5 after K = 4 of them (1e-5 relative). A
    # wrong old_logps, part or weighting moves them by O(1).
    chex.assert_trees_all_close(state.params, want, atol=1e-4, rtol=1e-7)


def test_steps_per_generation_goes_off_policy_and_clips():
    # After the first of K updates the parts are scored by moved params: the ratio leaves 1 and the
    # clip becomes active; at K = 1 (and mu = 1) it is exactly 1.
    _, m1, _ = run(mesh_of(1, 1), lr=0.1, steps_per_generation=1)
    _, m4, _ = run(mesh_of(1, 1), lr=0.1, steps_per_generation=4)
    assert m1[0]["ratio_max"] == 1.0 and m1[0]["clip_fraction"] == 0.0
    assert m4[0]["ratio_max"] > 1.2 and m4[0]["clip_fraction"] > 0


def test_steps_per_generation_sharded_equals_single_device():
    _, m1, _ = run(mesh_of(1, 1), steps_per_generation=2, num_minibatches=2)
    _, m8, _ = run(mesh_of(2, 2), steps_per_generation=2, num_minibatches=2)
    for k in m1[0]:
        np.testing.assert_allclose(m1[0][k], m8[0][k], atol=1e-4, err_msg=k)


def test_steps_per_generation_must_divide_the_batch():
    with pytest.raises(ValueError, match="steps_per_generation"):
        run(mesh_of(1, 1), steps_per_generation=3)


# --- the boundary assertions: Batch fields consistent, checked while tracing ------------------------


# kind -> (how the batch is broken, what the message must say). Today every one of these reaches the
# loss: a deep broadcasting / reshape error naming no field, or (advantages [N, 1]) silent broadcasting.
BAD_BATCHES = {
    "advantages_n": (lambda b: b._replace(advantages=b.advantages[:-1]),
                     r"\[\(16,\), \(16,\), \(16,\), \(16,\), \(15,\)\].*every field needs the same N rows"),
    "completions_n": (lambda b: b._replace(completion_tokens=b.completion_tokens[:8],
                                           completion_mask=b.completion_mask[:8]),
                      r"\[\(16,\), \(16,\), \(8,\), \(8,\), \(16,\)\].*every field needs the same N rows"),
    "completion_mask_t": (lambda b: b._replace(completion_mask=b.completion_mask[:, :-1]),
                          r"\[\(16, 5\), \(16, 4\)\].*completion_tokens and completion_mask must both be"),
    "prompt_mask_p": (lambda b: b._replace(prompt_mask=b.prompt_mask[:, 1:]),
                      r"\[\(16, 6\), \(16, 5\)\].*prompt_tokens and prompt_mask must both be"),
    "advantages_column": (lambda b: b._replace(advantages=b.advantages[:, None]),
                          r"input 4 has rank 2 \(shape \(16, 1\)\) but expected 1"),
    "float_tokens": (lambda b: b._replace(completion_tokens=b.completion_tokens.astype(jnp.float32)),
                     r"float32.*integer prompt/completion tokens"),
}


@pytest.mark.parametrize("kind", list(BAD_BATCHES))
def test_mismatched_batch_fails_at_the_boundary(kind):
    # The check runs while tracing: jax.eval_shape traces jit(step) without compiling or running it.
    breaks, match = BAD_BATCHES[kind]
    opt = ts.make_optimizer(learning_rate=1e-3)
    params = jax.eval_shape(lambda k: model_lib.init_params(CFG, k), jax.random.key(0))
    state = ts.TrainState(jax.ShapeDtypeStruct((), jnp.int32), params, jax.eval_shape(opt.init, params))
    step = jax.jit(ts.build_train_step(CFG, opt, use_reference=False))
    hp = ts.make_hparams(epsilon=0.2, beta=0.0, temperature=1.0)
    jax.eval_shape(step, state, None, make_batch(), hp)  # control: the well-formed batch traces
    with pytest.raises(AssertionError, match=match):
        jax.eval_shape(step, state, None, breaks(make_batch()), hp)


def test_completion_logits_checks_prompt_and_completion_rows():
    batch = make_batch()
    params = jax.eval_shape(lambda k: model_lib.init_params(CFG, k), jax.random.key(0))

    def logits(*args):  # traced only: the check needs shapes, not values
        return jax.eval_shape(lambda p, *a: scoring.completion_logits(CFG, p, *a), params, *args)

    assert logits(batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens).shape == (N, T, CFG.vocab_size)
    # Today: a concatenate error naming neither argument.
    with pytest.raises(AssertionError, match=r"\[\(16,\), \(8,\)\].*prompts and completions need the same N"):
        logits(batch.prompt_tokens, batch.prompt_mask, batch.completion_tokens[:8])
    with pytest.raises(AssertionError, match=r"\[\(16, 6\), \(16, 5\)\].*prompt_tokens and prompt_mask"):
        logits(batch.prompt_tokens, batch.prompt_mask[:, 1:], batch.completion_tokens)


def test_chunked_lm_head_step_equals_one_chunk():
    # chunk_size=24 on 8-row parts (K = 2): 3 positions per chunk, T = 5 padded to 6, two chunks under
    # jax.checkpoint; sharded 4 x 2. Plain SGD, so the parameter change is the gradient itself.
    mesh = mesh_of(4, 2)
    kw = dict(opt=optax.sgd(1.0), steps_per_generation=2, num_iterations=2)
    s1, m1, _ = run(mesh, **kw)
    s2, m2, _ = run(mesh, chunk_size=24, **kw)
    for k in m1[0]:
        np.testing.assert_allclose(m1[0][k], m2[0][k], rtol=1e-5, atol=1e-6, err_msg=k)
    chex.assert_trees_all_close(s1.params, s2.params, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])  # bnpo divides by tokens: never diluted
def test_fill_rows_do_not_dilute_the_update(loss_type):
    # DAPO dynamic sampling fills a short batch with rows that carry no loss (row_mask 0). Before,
    # they counted in the grpo / dr_grpo row counts, so a half-filled batch updated half as much. Now
    # the 16-row batch whose last 8 rows are fill updates exactly as the 8 real rows alone (M = 2
    # accumulation chunks: the strided chunks hold the same real rows in both).
    mesh = mesh_of(1, 1)
    full = make_batch(0)
    real = jax.tree.map(lambda x: x[:8], full)
    filled = full._replace(completion_mask=full.completion_mask.at[8:].set(0.0),
                           row_mask=jnp.repeat(jnp.array([1.0, 0.0]), 8))
    opt = optax.sgd(1.0)
    outs = []
    for batch in (real, filled):
        params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
        state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
        fn = ts.jit_train_step(ts.build_train_step(CFG, opt, use_reference=False, loss_type=loss_type,
                                                   num_minibatches=2, max_completion_length=T),
                                mesh, state_sh, None)
        state, metrics = fn(ts.init_state(params, opt, mesh), None, batch,
                            ts.make_hparams(epsilon=0.2, beta=0.0, temperature=1.0))
        outs.append((state.params, jax.device_get(metrics)))
    (p_real, m_real), (p_fill, m_fill) = outs
    for k in ("loss", "entropy", "grad_norm", "clip_fraction"):
        np.testing.assert_allclose(m_fill[k], m_real[k], rtol=1e-5, atol=1e-6, err_msg=k)
    chex.assert_trees_all_close(p_fill, p_real, atol=1e-6, rtol=1e-6)
