"""The train step's switches beyond the plain GRPO update: every loss_type under accumulation and K,
the entropy bonus (fixed, top-entropy tokens, adaptive), the KL folded into the reward, the config's
step options, the sharded step, and which sweep cells run as the trainer.

Every expectation is computed outside the step: log-probs and entropies come from
`scoring.completion_scores` on the whole batch, the objectives are written out here (A * logp with
each loss type's normaliser: at the first update of a call every surrogate's gradient is
A * grad logp), and the advantages of rewards - beta * KL from `advantages.compute`. With plain SGD
the parameter change of an update IS -lr * its gradient, so a gradient can be read off the params.

Compile time dominates on CPU, and most of a tiny step's compile time is paid once per program, not
per step in it: the steps are therefore compiled several at a time as one program (`_programs`, a
dict of steps -> one jit): three step programs and the sharded step, plus the small reference
computations (the file takes ~30 s on a loaded 2-core machine). The loss-menu and controller cases
use a bigram NNX model (tests/test_nnx.py: next-token logits from the current token; the step's
weighting and control flow do not care which model scores) which compiles 3x faster than the
transformer; the KL-in-reward, entropy-gradient, step-options and sharding cases use the tiny
transformer of tests/test_train_step.py (its chunked LM head, grouped prefix and FSDP layout).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from grpo_jax import advantages as adv_lib
from grpo_jax import config as cfg_lib
from grpo_jax import scoring, sharding, sweep
from grpo_jax import train_step as ts
from grpo_jax.losses import LOSS_TYPES, TOKEN_SUM_LOSS_TYPES
from test_nnx import BigramLM
from test_train_step import CFG, N, T, make_batch, mesh_of

V = CFG.vocab_size
G = 8  # make_batch's 16 rows: 2 groups of 8
# Plain SGD: an update's parameter change is -lr * its gradient. The transformer's cases make one
# update per call, at lr 1 (the change IS the gradient); the bigram's K = 2 and K = 3 calls use 0.3,
# enough to move the later updates off-policy (ratios up to 1.05-1.25) while staying stable (at lr 1,
# luspo's unnormalised row sums meet a k3 gradient exp(ref - logp) that grows the params 100x).
LR = 1.0
BIGRAM_LR = 0.3


def _programs(steps: dict):
    """{name: step} -> one jitted f({name: (state, ref, batch, hp)}) -> {name: (state, metrics)}.
    Always called with every name (another set of names would be another program)."""
    return jax.jit(lambda args: {name: steps[name](*args[name]) for name in steps})


def _hp(beta=0.04, entropy_coef=0.0, temperature=1.0):
    return ts.make_hparams(epsilon=0.2, beta=beta, temperature=temperature, entropy_coef=entropy_coef)


def _tree_diff(a, b):
    return jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b)


def _masked_mean(x, m):
    return float((np.asarray(x, np.float64) * m).sum() / m.sum())


# --- the bigram model: loss menu x accumulation, the K normaliser, bonus on top tokens, controller ---


@pytest.fixture(scope="module")
def bigram():
    graphdef, state = nnx.split(BigramLM(V, 8, rngs=nnx.Rngs(0)))
    params = state.to_pure_dict()
    # Logits 4x the init's: token entropies spread over 2.1-3.6 nats instead of 3.70-3.85 (log V = 3.87),
    # so the top-entropy selection and the bonus's gradient are well above round-off.
    params["out"]["kernel"] = params["out"]["kernel"] * 4.0
    ref = nnx.split(BigramLM(V, 8, rngs=nnx.Rngs(1)))[1].to_pure_dict()
    return graphdef, params, ref


# Rows that carry a loss in the partial case: uneven over the strided chunks (chunk (k, m) of K = 2,
# M = 2 holds rows 2k + m + 4j): 4, 3, 2 and 3 of their 4 rows.
PARTIAL_ROWS = np.array([1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 1], np.float32)


@pytest.fixture(scope="module")
def menu_runs(bigram):
    """Every loss_type at K = 2 with M = 1 and M = 2, entropy bonus on, one program of 16 steps, run on
    three batches: every row counts (coef 0.1), a partial row mask (coef 0.1), and the normaliser
    batch (odd rows' advantages 0, beta = 0, coef 0: the second update has no gradient at all)."""
    graphdef, params, ref = bigram
    opt = optax.sgd(BIGRAM_LR)
    steps = {(lt, m): ts.build_train_step(graphdef, opt, loss_type=lt, steps_per_generation=2, num_minibatches=m,
                                          entropy_bonus=True)
             for lt in LOSS_TYPES for m in (1, 2)}
    fn = _programs(steps)
    state = ts.init_state(params, opt, mesh_of(1, 1))
    full = make_batch(0)._replace(row_mask=jnp.ones(N, jnp.float32))
    normaliser = full._replace(advantages=full.advantages * jnp.asarray(np.arange(N) % 2 == 0, jnp.float32))
    cases = {"full": (full, _hp(entropy_coef=0.1)),
             "partial": (full._replace(row_mask=jnp.asarray(PARTIAL_ROWS)), _hp(entropy_coef=0.1)),
             "normaliser": (normaliser, _hp(beta=0.0))}
    return {case: jax.device_get(fn({k: (state, ref, batch, hp) for k in steps}))
            for case, (batch, hp) in cases.items()}, normaliser


@pytest.mark.parametrize("case", ["full", "partial"])
@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_accumulation_is_exact_for_every_loss_type(menu_runs, loss_type, case):
    # M = 2 accumulation chunks per update (strided) against one: the same two updates, to round-off,
    # for the token-sum types whose normaliser spans the whole rollout too, with the entropy bonus on.
    # The second update is off-policy (its ratios reach 1.05-1.25), so the ratio, the clip and vespo's
    # sequence weight act. The updates move the params by 0.05-0.3; a chunk weighted by the wrong
    # share, or a part holding other rows, moves them by 1e-3 or more.
    runs, _ = menu_runs
    (s1, m1), (s2, m2) = runs[case][(loss_type, 1)], runs[case][(loss_type, 2)]
    chex.assert_trees_all_close(s1.params, s2.params, atol=2e-6, rtol=1e-6)
    for k in ("loss", "kl", "entropy", "entropy_coef", "clip_fraction", "ratio_mean", "ratio_max", "grad_norm"):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-6, err_msg=k)
    np.testing.assert_array_equal(m1[ts.ROW_CLIPPED], m2[ts.ROW_CLIPPED])
    assert m1["entropy_coef"] == np.float32(0.1)
    assert m1["ratio_max"] > 1.03  # the second update really was off-policy


def test_first_update_normalisers(menu_runs, bigram):
    """The first of K = 2 updates, for every loss_type, is one plain gradient of its hand-written
    aggregate over part 0 (the even rows): sum_{i,t} m A_i logp_{i,t} divided per row by its length
    and averaged over the part's 8 rows (grpo, sapo), summed per row and averaged (luspo), divided by
    the part's tokens (bnpo), by 8 rows * T (dr_grpo), or by the tokens of the WHOLE batch / K (dapo,
    cispo, vespo: DAPO's normaliser, TRL's num_items_in_batch). The odd rows' advantages are 0 and
    beta = 0, so the second update's gradient is exactly 0 and the final params are p0 - lr * g1.
    The params rather than metrics["loss"]: the loss metric is the mean over the K updates, and at
    rho = 1 the loss values of the surrogates differ (cispo's A * logp is not A) while the gradients
    agree."""
    runs, batch = menu_runs
    graphdef, params, _ = bigram
    mask = np.asarray(batch.completion_mask)
    part_tokens, total = mask[0::2].sum(), mask.sum()
    assert abs(part_tokens / (total / 2) - 1) > 0.1  # bnpo's and dapo's normalisers really differ here
    part = jax.tree.map(lambda x: x[0::2], batch)
    rows = part.advantages.shape[0]
    lengths = part.completion_mask.sum(1)

    @jax.jit
    def gradients(p):
        def weighted(norm):  # -sum_{i,t} m A logp * norm_{i}
            def objective(q):
                lp = scoring.completion_scores(graphdef, q, part.prompt_tokens, part.prompt_mask,
                                               part.completion_tokens)[0]
                return -((lp * part.completion_mask).sum(1) * part.advantages * norm).sum()
            return jax.grad(objective)(p)
        return {"row_mean": weighted(1.0 / (rows * lengths)), "row_sum": weighted(jnp.full(rows, 1.0 / rows)),
                "part_tokens": weighted(jnp.full(rows, 1.0 / part_tokens)),
                "dr_grpo": weighted(jnp.full(rows, 1.0 / (rows * T))),
                "rollout_tokens": weighted(jnp.full(rows, 2.0 / total))}

    grads = jax.device_get(gradients(params))
    which = {"grpo": "row_mean", "sapo": "row_mean", "luspo": "row_sum", "bnpo": "part_tokens",
             "dr_grpo": "dr_grpo", **{lt: "rollout_tokens" for lt in TOKEN_SUM_LOSS_TYPES}}
    assert set(which) == set(LOSS_TYPES)
    for loss_type in LOSS_TYPES:
        for m in (1, 2):
            state, metrics = runs["normaliser"][(loss_type, m)]
            step = jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / BIGRAM_LR, params, state.params)
            chex.assert_trees_all_close(step, grads[which[loss_type]], atol=2e-6, rtol=1e-5,
                                        custom_message=f"{loss_type}, M = {m}")


@pytest.fixture(scope="module")
def bigram_step_runs(bigram):
    """One program: the top-entropy bonus (grpo, quantile 0.25, K = 1) and the adaptive controller
    ((target, delta, min, max) = (10, 0.03, 0.01, 0.1): every entropy <= log V < 10, and (0, ...):
    every entropy > 0) with K = 3 updates, and K = 3 with a fixed coefficient; run twice."""
    graphdef, params, ref = bigram
    opt = optax.sgd(BIGRAM_LR)
    build = lambda **kw: ts.build_train_step(graphdef, opt, **kw)  # noqa: E731
    fn = _programs({
        "quantile": build(entropy_bonus=True, loss_options=dict(top_entropy_quantile=0.25)),
        "up": build(steps_per_generation=3, adaptive_entropy=(10.0, 0.03, 0.01, 0.1)),
        "down": build(steps_per_generation=3, adaptive_entropy=(0.0, 0.03, 0.01, 0.1)),
        "fixed": build(steps_per_generation=3, entropy_bonus=True)})
    mesh = mesh_of(1, 1)
    state = ts.init_state(params, opt, mesh)
    b16 = make_batch(0)
    b24 = jax.tree.map(lambda a, b: jnp.concatenate([a, b[:8]]), make_batch(1), make_batch(2))  # K = 3 divides
    runs = []
    for coef, c_up, c_down in ((0.0, 0.0, 0.05), (0.1, 0.02, 0.05)):
        runs.append(jax.device_get(fn({
            "quantile": (state, ref, b16, _hp(entropy_coef=coef)),
            "up": (ts.init_state(params, opt, mesh, entropy_coef=c_up), ref, b24, _hp(entropy_coef=0.5)),
            "down": (ts.init_state(params, opt, mesh, entropy_coef=c_down), ref, b24, _hp(entropy_coef=0.5)),
            "fixed": (state, ref, b24, _hp(entropy_coef=coef))})))
    return runs, b16


def test_entropy_bonus_on_top_entropy_tokens(bigram_step_runs, bigram):
    # quantile 0.25: the bonus is the mean entropy of the masked tokens at or above the 0.75 quantile
    # of the masked tokens' entropies (numpy's linear interpolation, as torch.quantile), and its
    # gradient is c * grad of that mean with the selection held fixed.
    runs, batch = bigram_step_runs
    graphdef, params, _ = bigram
    mask = np.asarray(batch.completion_mask)

    def mean_entropy(p, sel):
        h = scoring.completion_scores(graphdef, p, batch.prompt_tokens, batch.prompt_mask,
                                      batch.completion_tokens, entropy="grad")[1]["entropy"]
        return (h * sel).sum() / sel.sum()

    h = np.asarray(scoring.completion_scores(graphdef, params, batch.prompt_tokens, batch.prompt_mask,
                                             batch.completion_tokens, entropy=True)[1]["entropy"])
    threshold = np.quantile(h[mask > 0], 0.75)
    assert np.abs(h[mask > 0] - threshold).min() > 1e-4  # no token's selection hangs on round-off
    sel = ((h >= threshold) & (mask > 0)).astype(np.float32)
    assert 0 < sel.sum() < mask.sum() / 2
    bonus = _masked_mean(h, sel)
    assert bonus - _masked_mean(h, mask) > 0.05  # the selection matters at this tolerance
    (s0, m0), (s1, m1) = runs[0]["quantile"], runs[1]["quantile"]
    np.testing.assert_allclose(m1["loss"] - m0["loss"], -0.1 * bonus, rtol=1e-4, atol=1e-6)
    grad = jax.device_get(jax.jit(jax.grad(mean_entropy))(params, jnp.asarray(sel)))
    # SGD: p_c - p_0 = -lr * (g_c - g_0) = lr * c * grad(bonus).
    chex.assert_trees_all_close(_tree_diff(s1.params, s0.params), jax.tree.map(lambda g: BIGRAM_LR * 0.1 * g, grad),
                                atol=1e-6, rtol=1e-4)


def test_adaptive_entropy_controller(bigram_step_runs):
    # Target 10 >= every entropy: the coefficient applied to the K = 3 updates is 0 (no entropy measured
    # yet: last = inf), then c0 + d, c0 + 2d; the state ends at min(c0 + 3d, max). hparams.entropy_coef
    # (0.5) is ignored: the controller in the state decides.
    runs, _ = bigram_step_runs
    for run, c0, applied, final in ((runs[0], 0.0, [0.0, 0.03, 0.06], 0.09),
                                    (runs[1], 0.02, [0.0, 0.05, 0.08], 0.1)):  # 0.11 clamped at max 0.1
        state, metrics = run["up"]
        np.testing.assert_allclose(metrics["entropy_coef"], np.mean(applied), rtol=1e-6, err_msg=f"c0 = {c0}")
        np.testing.assert_allclose(state.entropy["coef"], final, rtol=1e-6, err_msg=f"c0 = {c0}")
        assert 0 < state.entropy["last"] <= np.log(V) + 1e-5  # the third update's measured entropy
        # The bonus was applied: the params left the fixed-coefficient-0 run's.
        moved = _tree_diff(state.params, runs[0]["fixed"][0].params)
        assert max(np.abs(d).max() for d in jax.tree.leaves(moved)) > 1e-3
    # Target 0 < every entropy: the coefficient falls by d per update to its min (0.05 -> 0.02 -> 0.01
    # -> 0.01) and is never applied: the same updates as a fixed coefficient 0.
    state, metrics = runs[0]["down"]
    assert metrics["entropy_coef"] == 0.0
    np.testing.assert_allclose(state.entropy["coef"], 0.01, rtol=1e-6)
    chex.assert_trees_all_close(state.params, runs[0]["fixed"][0].params, atol=1e-6, rtol=0)
    # The controller is replicated state.
    sh = ts.state_shardings(mesh_of(4, 2), optax.sgd(BIGRAM_LR), jax.eval_shape(lambda p: p, state.params),
                            entropy=True)
    assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(sh.entropy))


# --- the transformer: KL in the reward, the entropy bonus's gradient, step_options, sharding -------


def _kl_step(opt):
    return ts.build_train_step(CFG, opt, loss_type="cispo", entropy_bonus=True, kl_in_reward=True, group_size=G,
                               advantage_options=dict(estimator="rloo"))


def _kl_batch():
    rewards = np.random.default_rng(7).uniform(0, 1, N).astype(np.float32)
    return make_batch(0)._replace(rewards=jnp.asarray(rewards))


KL_CASES = {"beta_small": (0.04, 0.0), "beta_big": (2.0, 0.0), "bonus": (2.0, 0.1)}  # (beta, entropy_coef)


@pytest.fixture(scope="module")
def cfg_runs():
    """One program on one device: the cispo + entropy bonus + kl_in_reward step (rloo advantages) at the
    KL_CASES' hparams, and the step of step_options(Config()) next to the call the trainer made before
    step_options existed; plus the independent scores of the whole batch."""
    mesh = mesh_of(1, 1)
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    ref = sharding.init_params_sharded(CFG, jax.random.key(1), mesh)
    opt = optax.sgd(LR)
    c = cfg_lib.Config()
    g = c.grpo
    old = ts.build_train_step(CFG, opt, loss_type=g.loss_type, importance_level=g.importance_level,
                              num_iterations=g.num_iterations, num_minibatches=c.train.num_minibatches,
                              steps_per_generation=c.train.steps_per_generation, use_reference=True,
                              max_completion_length=c.sampling.max_new_tokens, lora=False,
                              shared_prefix=c.train.shared_prefix, group_size=g.group_size)
    new = ts.build_train_step(CFG, opt, use_reference=True, lora=False, **ts.step_options(c))
    assert new.shared_group_size == old.shared_group_size == G  # the grouped forward, on both sides
    fn = _programs({"kl": _kl_step(opt), "old": old, "new": new})
    state = ts.init_state(params, opt, mesh)
    old_hp = ts.make_hparams(epsilon=g.epsilon, epsilon_high=g.epsilon_high, beta=g.beta,
                             temperature=c.sampling.temperature)
    runs = {case: jax.device_get(fn({"kl": (state, ref, _kl_batch(), _hp(beta, coef)),
                                     "old": (state, ref, make_batch(0), old_hp),
                                     "new": (state, ref, make_batch(0), ts.hparams_from_config(c))}))
            for case, (beta, coef) in KL_CASES.items()}

    batch = _kl_batch()

    @jax.jit
    def scores(p, r):
        def score(q, entropy):
            return scoring.completion_scores(CFG, q, batch.prompt_tokens, batch.prompt_mask,
                                             batch.completion_tokens, entropy=entropy)
        m = batch.completion_mask
        lp, stats = score(p, True)
        mean_entropy = lambda q: (score(q, "grad")[1]["entropy"] * m).sum() / m.sum()  # noqa: E731
        return lp, stats["entropy"], score(r, False)[0], jax.grad(mean_entropy)(p)

    return runs, jax.device_get(scores(params, ref)), params


def test_kl_in_reward_advantages_and_loss(cfg_runs):
    # The step's advantages are rloo's of r_i - beta * sum_t m k3(policy, ref) per group of 8, and the
    # loss has no KL term: at mu = K = 1 (rho = 1, cispo's weight 1) it is -sum m A logp / sum m
    # - c * (mean entropy). batch.advantages (random) are unused.
    runs, (lp, h, ref_lp, _), _ = cfg_runs
    batch = _kl_batch()
    mask = np.asarray(batch.completion_mask, np.float64)
    d = np.asarray(ref_lp, np.float64) - np.asarray(lp, np.float64)
    k3 = np.exp(d) - d - 1.0
    kl_rows = (k3 * mask).sum(1)
    rewards = np.asarray(batch.rewards, np.float64)
    for case, (beta, coef) in KL_CASES.items():
        _, metrics = runs[case]["kl"]
        want_adv = np.asarray(adv_lib.compute(jnp.asarray(rewards - beta * kl_rows, jnp.float32), G,
                                              estimator="rloo"))
        got_adv = metrics[ts.ROW_ADVANTAGES]
        np.testing.assert_allclose(got_adv, want_adv, atol=2e-5, err_msg=case)
        _, popped = ts.pop_row_advantages(metrics)
        np.testing.assert_array_equal(popped, got_adv)
        np.testing.assert_allclose(metrics["kl"], (k3 * mask).sum() / mask.sum(), rtol=1e-4, err_msg=case)
        want_loss = -(mask * want_adv[:, None] * lp).sum() / mask.sum() - coef * _masked_mean(h, mask)
        np.testing.assert_allclose(metrics["loss"], want_loss, rtol=1e-5, atol=1e-6, err_msg=case)
        np.testing.assert_allclose(metrics["advantage_abs_mean"], np.abs(want_adv).mean(), rtol=1e-5)
    # The KL reached the advantages: beta = 2 against the rewards' own advantages.
    plain = np.asarray(adv_lib.compute(jnp.asarray(rewards, jnp.float32), G, estimator="rloo"))
    assert np.abs(runs["beta_big"]["kl"][1][ts.ROW_ADVANTAGES] - plain).max() > 0.05


def test_entropy_bonus_loss_and_gradient(cfg_runs):
    # mu = K = 1, coefficient c = 0.1 against 0 at the same beta: the loss is lower by c * the mean token
    # entropy over the completion mask, and (SGD) the params differ by lr * c * grad(mean entropy).
    runs, (_, h, _, grad_h), _ = cfg_runs
    mask = np.asarray(_kl_batch().completion_mask)
    (s0, m0), (s1, m1) = runs["beta_big"]["kl"], runs["bonus"]["kl"]
    np.testing.assert_allclose(m1["loss"] - m0["loss"], -0.1 * _masked_mean(h, mask), rtol=1e-4, atol=1e-6)
    assert m1["entropy_coef"] == np.float32(0.1) and m0["entropy_coef"] == 0.0
    chex.assert_trees_all_close(_tree_diff(s1.params, s0.params), jax.tree.map(lambda g: LR * 0.1 * g, grad_h),
                                atol=1e-6, rtol=1e-4)
    assert max(np.abs(g).max() for g in jax.tree.leaves(grad_h)) > 1e-3


def test_step_options_reproduce_the_old_default_call(cfg_runs):
    # Config()'s step_options + hparams_from_config against the keywords the trainer passed before
    # (grouped prefix on, max_completion_length 64): the same program, the same numbers, bit for bit.
    runs, _, _ = cfg_runs
    (s_old, m_old), (s_new, m_new) = runs["beta_small"]["old"], runs["beta_small"]["new"]
    assert m_old.keys() == m_new.keys() and "entropy_coef" not in m_new
    for k in m_old:
        np.testing.assert_array_equal(m_new[k], m_old[k], err_msg=k)
    jax.tree.map(np.testing.assert_array_equal, s_new, s_old)
    c = cfg_lib.Config()
    # The old four hparams, and the entropy coefficient at 0.
    np.testing.assert_array_equal(ts.hparams_from_config(c), np.float32([0.2, 0.2, 0.04, 1.0, 0.0]))


def test_sharded_kl_in_reward_step_equals_single_device(cfg_runs):
    # cispo + entropy bonus + kl_in_reward on a 4 x 2 (data x fsdp) mesh through jit_train_step, against
    # the one-device run of the same step (tolerances of test_train_step's sharded test).
    runs, _, _ = cfg_runs
    mesh = mesh_of(4, 2)
    params = sharding.init_params_sharded(CFG, jax.random.key(0), mesh)
    ref = sharding.init_params_sharded(CFG, jax.random.key(1), mesh)
    opt = optax.sgd(LR)
    state_sh = ts.state_shardings(mesh, opt, jax.eval_shape(lambda p: p, params))
    fn = ts.jit_train_step(_kl_step(opt), mesh, state_sh, sharding.param_shardings(mesh, ref))
    beta, coef = KL_CASES["bonus"]
    state, metrics = fn(ts.init_state(params, opt, mesh), ref, _kl_batch(), _hp(beta, coef))
    s1, m1 = runs["bonus"]["kl"]
    assert metrics.keys() == m1.keys()
    for k in m1:
        np.testing.assert_allclose(metrics[k], m1[k], atol=1e-4, err_msg=k)
    chex.assert_trees_all_close(jax.device_get(state.params), s1.params, atol=3e-4, rtol=1e-7)
    assert state.params["embed_tokens"]["embedding"].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")


# --- the sweep ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, trainer", [
    ([], False),
    (["grpo.adaptive_entropy=true"], True),
    (["grpo.kl_in_reward=true"], True),
    (["grpo.ref_sync_every=10"], True),
    (["grpo.dynamic_sampling=true"], True),
    # carried by the vmapped program: hparams and static step options
    (["grpo.entropy_coef=0.01", "grpo.loss_type=cispo", "grpo.top_entropy_quantile=0.2"], False),
])
def test_runs_as_trainer(overrides, trainer):
    assert sweep.runs_as_trainer(cfg_lib.apply_overrides(cfg_lib.Config(), overrides)) is trainer
