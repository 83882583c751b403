"""The GRPO objective on hand-computed numbers, gradients, and properties.

The hand example (N = 2 rows, T = 2 tokens, epsilon = 0.2):
  row 0: A = +1, mask [1, 1], ratios [1.5, 0.9] -> clipped surrogate [1.2, 0.9]
  row 1: A = -1, mask [1, 0], ratios [0.5, 2.0] -> clipped surrogate [-0.8, (masked)]
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_jax.losses import grpo_loss, k3_kl, token_logps

RATIOS = np.array([[1.5, 0.9], [0.5, 2.0]], np.float32)
OLD = np.array([[-1.0, -2.0], [-0.5, -3.0]], np.float32)
LOGPS = OLD + np.log(RATIOS)
ADV = np.array([1.0, -1.0], np.float32)
MASK = np.array([[1, 1], [1, 0]], np.float32)


class TestHandExample(chex.TestCase):
    """The hand example, each case run both through jax.jit and eagerly (chex.variants)."""

    def loss_of(self, ref_logps=None, **kw):
        # Everything but the arrays is closed over: static under jit, as in the trainer.
        fn = self.variant(lambda lp, old, ref, adv, mask: grpo_loss(lp, old, ref, adv, mask, **kw))
        loss, metrics = fn(LOGPS, OLD, ref_logps, ADV, MASK)
        return float(loss), {k: float(v) for k, v in metrics.items()}

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("grpo", "grpo", {}, -((1.2 + 0.9) / 2 + -0.8) / 2),      # mean over rows of row means = 0.125
        ("bnpo", "bnpo", {}, -(1.2 + 0.9 - 0.8) / 3),             # token mean over the batch
        ("dr_grpo", "dr_grpo", {}, -(1.2 + 0.9 - 0.8) / (2 * 2)),  # / (N * T)
        ("dr_grpo_max_len", "dr_grpo", {"max_completion_length": 4}, -(1.2 + 0.9 - 0.8) / (2 * 4)),
    )
    def test_aggregations_hand_computed(self, loss_type, kw, expected):
        loss, metrics = self.loss_of(beta=0.0, loss_type=loss_type, **kw)
        assert loss == pytest.approx(expected, abs=1e-6)
        # Clipped: row 0 token 0 (1.5 > 1.2, A > 0) and row 1 token 0 (0.5 < 0.8, A < 0); 3 tokens.
        assert metrics["clip_fraction"] == pytest.approx(2 / 3)
        assert metrics["clip_fraction_high"] == pytest.approx(1 / 3)
        assert metrics["clip_fraction_low"] == pytest.approx(1 / 3)
        assert metrics["ratio_mean"] == pytest.approx((1.5 + 0.9 + 0.5) / 3, rel=1e-6)
        assert metrics["kl"] == 0.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_clip_higher(self):
        # epsilon_high = 0.6 lets ratio 1.5 through for A > 0; the low side is unchanged.
        loss, metrics = self.loss_of(beta=0.0, epsilon_high=0.6)
        assert loss == pytest.approx(-((1.5 + 0.9) / 2 - 0.8) / 2, abs=1e-6)
        assert metrics["clip_fraction"] == pytest.approx(1 / 3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_kl_term_hand_computed(self):
        # ref - logps = [ln 2, 0] on row 0 -> k3 = [1 - ln 2, 0]; row 1 k3 = 0 on its real token and a
        # huge value on the masked one, which must not leak into loss or metric.
        ref = LOGPS + np.array([[math.log(2.0), 0.0], [0.0, 5.0]], np.float32)
        k = 1 - math.log(2.0)
        loss, metrics = self.loss_of(beta=0.1, ref_logps=ref)
        assert loss == pytest.approx(-(((1.2 - 0.1 * k) + 0.9) / 2 - 0.8) / 2, abs=1e-6)
        assert metrics["kl"] == pytest.approx(k / 3, rel=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_gspo_sequence_ratio(self):
        # Row 0: exp(mean(ln 1.5, ln 0.9)) = sqrt(1.35), inside [0.8, 1.2]; row 1 (one real token):
        # 0.5 -> clipped to 0.8 with A < 0 -> -0.8. The masked token's ratio 2.0 must be ignored.
        loss, metrics = self.loss_of(beta=0.0, importance_level="sequence")
        assert loss == pytest.approx(-(math.sqrt(1.35) - 0.8) / 2, abs=1e-6)
        assert metrics["clip_fraction"] == pytest.approx(1 / 3)
        # GSPO's published clip range (3e-4, 4e-4): both rows clipped.
        loss, _ = self.loss_of(beta=0.0, importance_level="sequence", epsilon=3e-4, epsilon_high=4e-4)
        assert loss == pytest.approx(-(1.0004 - 0.9997) / 2, abs=1e-6)

    # --- the boundary assertions: shapes and dtypes, checked while tracing (jit or not) ----------

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        # Today a [N, 1] advantage broadcasts silently to [N, N, T]; a wrong N or T fails deep inside.
        ("advantages_wrong_length", dict(adv=ADV[:1]), r"\(1,\) but expected \(2\).*advantages must be \[N\]"),
        ("advantages_column", dict(adv=ADV[:, None]), r"\(2, 1\) but expected \(2\)"),
        ("mask_wrong_t", dict(mask=np.ones((2, 3), np.float32)), r"\[\(2, 2\), \(2, 2\), \(2, 3\)\]"),
        ("ref_wrong_t", dict(ref=np.zeros((2, 3), np.float32)), r"logps, old_logps, ref_logps, mask must all be"),
        ("old_wrong_n", dict(old=OLD[:1]), r"\[\(2, 2\), \(1, 2\), \(2, 2\)\]"),
        ("integer_advantages", dict(adv=np.array([1, -1], np.int32)), r"must be floating point"),
    )
    def test_wrong_shapes_fail_at_the_boundary(self, bad, match):
        args = dict(lp=LOGPS, old=OLD, ref=None, adv=ADV, mask=MASK) | bad
        fn = self.variant(lambda lp, old, ref, adv, mask: grpo_loss(lp, old, ref, adv, mask, beta=0.04))
        with pytest.raises(AssertionError, match=match):
            fn(**args)


def loss_of(**kw):
    ref = kw.pop("ref_logps", None)
    loss, metrics = grpo_loss(jnp.asarray(LOGPS), jnp.asarray(OLD), ref, jnp.asarray(ADV),
                              jnp.asarray(MASK), **kw)
    return float(loss), {k: float(v) for k, v in metrics.items()}


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("importance_level", ["token", "sequence"])
def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage(loss_type, importance_level):
    key = jax.random.key(0)
    logps = -jax.random.uniform(key, (8, 5)) * 3
    adv = jnp.array([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.7, -0.7])
    mask = jnp.ones((8, 5))
    loss, metrics = grpo_loss(logps, logps, logps, adv, mask, beta=0.04, loss_type=loss_type,
                              importance_level=importance_level)
    assert float(metrics["ratio_mean"]) == 1.0
    assert float(metrics["clip_fraction"]) == 0.0
    assert float(metrics["kl"]) == 0.0
    assert float(loss) == pytest.approx(-float(adv.mean()), abs=1e-6)


def test_on_policy_ragged_masks():
    # With ragged masks the aggregations differ: grpo = -mean_i A_i; bnpo = -(token-weighted mean).
    logps = jnp.full((2, 4), -1.0)
    adv = jnp.array([1.0, -1.0])
    mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]], jnp.float32)
    got = {lt: float(grpo_loss(logps, logps, None, adv, mask, loss_type=lt)[0])
           for lt in ("grpo", "bnpo", "dr_grpo")}
    assert got["grpo"] == pytest.approx(0.0)
    assert got["bnpo"] == pytest.approx(-(4 - 1) / 5)
    assert got["dr_grpo"] == pytest.approx(-(4 - 1) / 8)


def test_on_policy_gradient_is_policy_gradient():
    # At rho = 1 the surrogate's gradient wrt logps is A_i * m / |row| / N (grpo): REINFORCE with
    # the group baseline. stop_gradient on old_logps is what makes the ratio differentiable.
    logps = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.2, -4.0]])
    adv = jnp.array([2.0, -1.0])
    mask = jnp.array([[1, 1, 1], [1, 1, 0]], jnp.float32)
    grad = jax.grad(lambda lp: grpo_loss(lp, jax.lax.stop_gradient(lp), None, adv, mask)[0])(logps)
    expected = -np.array([[2 / 3, 2 / 3, 2 / 3], [-1 / 2, -1 / 2, 0.0]]) / 2
    np.testing.assert_allclose(grad, expected, atol=1e-7)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo"])
@pytest.mark.parametrize("importance_level", ["token", "sequence"])
def test_gradient_matches_finite_differences(loss_type, importance_level):
    # float64 central differences at a point away from the clip kinks.
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        old = -rng.uniform(0.5, 3.0, (4, 3))
        logps = old + rng.uniform(-0.1, 0.1, (4, 3))  # ratios in [0.9, 1.1]: inside the clip range
        ref = old + rng.uniform(-0.5, 0.5, (4, 3))
        adv = np.array([1.0, -0.5, 0.3, -0.8])
        mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], np.float64)

        def f(lp):
            return grpo_loss(lp, jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), jnp.asarray(mask),
                             epsilon=0.2, beta=0.04, loss_type=loss_type,
                             importance_level=importance_level)[0]

        grad = np.asarray(jax.grad(f)(jnp.asarray(logps)))
        h = 1e-6
        numeric = np.zeros_like(logps)
        for idx in np.ndindex(logps.shape):
            e = np.zeros_like(logps)
            e[idx] = h
            numeric[idx] = (f(jnp.asarray(logps + e)) - f(jnp.asarray(logps - e))) / (2 * h)
        np.testing.assert_allclose(grad, numeric, atol=1e-8)
        assert np.all(grad[mask == 0] == 0)  # padding gets no gradient


def test_traced_hyperparameters_vmap():
    # epsilon, epsilon_high and beta can be traced: one vmapped call == separate calls.
    logps, old, adv, mask = map(jnp.asarray, (LOGPS, OLD, ADV, MASK))
    ref = logps + 0.3
    eps = jnp.array([0.1, 0.2, 0.3])
    beta = jnp.array([0.0, 0.04, 0.1])
    vm = jax.vmap(lambda e, b: grpo_loss(logps, old, ref, adv, mask, epsilon=e, beta=b)[0])(eps, beta)
    one = [float(grpo_loss(logps, old, ref, adv, mask, epsilon=float(e), beta=float(b))[0])
           for e, b in zip(eps, beta)]
    np.testing.assert_allclose(vm, one, rtol=1e-6)


def test_token_logps_hand_computed():
    logits = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    np.testing.assert_allclose(token_logps(logits, jnp.array([1])), [math.log(0.25)], rtol=1e-6)
    # Temperature 2 on logits log p: p^(1/2) renormalised.
    p = np.sqrt([0.5, 0.25, 0.25])
    np.testing.assert_allclose(token_logps(logits, jnp.array([0]), temperature=2.0),
                               [math.log(p[0] / p.sum())], rtol=1e-6)
    # Temperature 0 (greedy sampling) is scored at temperature 1.
    np.testing.assert_allclose(token_logps(logits, jnp.array([0]), temperature=0.0), [math.log(0.5)],
                               rtol=1e-6)


def test_token_logps_logits_must_be_tokens_shape_plus_vocab():
    # Today [3, V] logits against [2] tokens fail inside take_along_axis with a broadcasting error.
    with pytest.raises(AssertionError, match=r"\[\(3,\), \(2,\)\].*tokens' shape \+ \(V,\)"):
        token_logps(jnp.zeros((3, 5)), jnp.zeros((2,), jnp.int32))
    with pytest.raises(AssertionError, match=r"rank 1 \(shape \(5,\)\) but expected 2"):
        token_logps(jnp.zeros((5,)), jnp.zeros((2,), jnp.int32))


def test_bad_switches_raise():
    with pytest.raises(ValueError, match="loss_type"):
        loss_of(loss_type="ppo")
    with pytest.raises(ValueError, match="importance_level"):
        loss_of(importance_level="row")


floats = st.floats(-5.0, 5.0, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(floats, floats, floats, st.floats(-3, 3, width=32)), min_size=1, max_size=12),
       st.floats(0.01, 0.9), st.floats(0.01, 2.0))
def test_clipping_never_raises_the_objective(rows, epsilon, epsilon_high):
    # min(rho A, clip(rho) A) <= rho A, so the clipped loss is >= the unclipped one, whatever the
    # ratios, advantages and clip range.
    arr = np.array(rows, np.float32)
    logps, old, _, adv = (arr[:, i:i + 1] for i in range(4))
    adv = adv[:, 0]
    mask = np.ones_like(logps)
    clipped = grpo_loss(logps, old, None, adv, mask, epsilon=epsilon, epsilon_high=epsilon_high)[0]
    unclipped = grpo_loss(logps, old, None, adv, mask, epsilon=1e9, epsilon_high=1e30)[0]
    assert float(clipped) >= float(unclipped) - 1e-4 * (1 + abs(float(unclipped)))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(floats, floats), min_size=1, max_size=32))
def test_k3_nonnegative_and_zero_iff_equal(pairs):
    arr = np.array(pairs, np.float32)
    kl = np.asarray(k3_kl(jnp.asarray(arr[:, 0]), jnp.asarray(arr[:, 1])))
    assert np.all(kl >= 0)
    equal = arr[:, 0] == arr[:, 1]
    assert np.all(kl[equal] == 0)
    # Away from equality k3 is strictly positive (>= ~d^2/2 for small d; checked where d is not tiny).
    far = np.abs(arr[:, 0] - arr[:, 1]) > 1e-2
    assert np.all(kl[far] > 0)


@pytest.mark.parametrize("loss_type,expected_fill,expected_truncated",
                         [("grpo", -1.0, -0.5), ("dr_grpo", -0.75, -0.375), ("bnpo", -1.0, -1.0)])
def test_fill_rows_count_nowhere_truncated_rows_count_as_trl_does(loss_type, expected_fill, expected_truncated):
    # On-policy (rho = 1), beta 0: the per-token objective is A. Row 0 has A = 1 on 3 of 4 tokens;
    # row 1 (A = 3) has its tokens masked. As a dynamic-sampling fill row (row_mask 0) it counts in no
    # denominator: grpo -1 (row 0's mean), dr_grpo -3 / (1 row * 4). As a truncated completion under
    # mask_truncated_completions (row_mask 1) it still counts, TRL's convention: grpo -(1 + 0) / 2,
    # dr_grpo -3 / (2 rows * 4). bnpo divides by tokens either way: -1.
    logps = jnp.full((2, 4), -1.0)
    adv = jnp.array([1.0, 3.0])
    mask = jnp.array([[1, 1, 1, 0], [0, 0, 0, 0]], jnp.float32)
    kw = dict(beta=0.0, loss_type=loss_type, max_completion_length=4)
    fill, _ = grpo_loss(logps, logps, None, adv, mask, row_mask=jnp.array([1.0, 0.0]), **kw)
    truncated, _ = grpo_loss(logps, logps, None, adv, mask, row_mask=jnp.array([1.0, 1.0]), **kw)
    assert float(fill) == pytest.approx(expected_fill)
    assert float(truncated) == pytest.approx(expected_truncated)
    # a row outside row_mask counts nowhere even where its mask is not 0
    leaky, _ = grpo_loss(logps, logps, None, adv, jnp.ones((2, 4)), row_mask=jnp.array([1.0, 0.0]), **kw)
    assert float(leaky) == pytest.approx(-1.0)
