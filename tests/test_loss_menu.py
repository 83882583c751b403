"""The loss menu of grpo_jax.losses on hand-computed numbers: every loss_type's value and gradient,
INTELLECT-2's delta, the KL estimators, the top-entropy mask, the entropy bonus, the accumulation
weights and the on-policy gradient. Every expected number is worked out in the comments, so a wrong
formula fails (the TRL comparisons live in test_trl_parity.py).

The hand example (N = 2 rows, T = 3 tokens, epsilon = 0.2, beta = 0 unless a test says otherwise):
  row 0: A = +1, mask [1, 1, 1], ratios [1.5, 0.9, 1.1]    1.5 is above the clip range [0.8, 1.2]
  row 1: A = -1, mask [1, 1, 0], ratios [0.5, 2.0, (3.0)]  0.5 is below it; the masked 3.0 never counts
5 real tokens, row lengths 3 and 2. Gradients are w.r.t. logps with old_logps fixed: d rho / d logp = rho.

The aggregations' weight of one token's objective, d aggregate / d o_{i,t} (AGG below):
  grpo, sapo              1 / (N * len_i)   row 0: 1/6, row 1: 1/4
  bnpo, dapo, cispo, vespo  1 / 5 (the batch's tokens; one batch, K = 1)
  luspo                   1 / N = 1/2
  dr_grpo                 1 / (N * T) = 1/6

Every case runs eagerly on [2, 3] arrays (the accumulation test's whole updates [4, 3]): eager JAX
compiles each primitive once per shape, so one shape keeps the file fast.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grpo_jax.losses import (CLIPPED_LOSS_TYPES, KL_ESTIMATORS, LOSS_TYPES, TOKEN_SUM_LOSS_TYPES,
                             accumulation_weights, grpo_loss, high_entropy_mask, kl_estimate,
                             vespo_weights)

RATIOS = np.array([[1.5, 0.9, 1.1], [0.5, 2.0, 3.0]], np.float32)
OLD = np.array([[-1.0, -2.0, -1.5], [-0.5, -3.0, -2.0]], np.float32)
LOGPS = (OLD + np.log(RATIOS)).astype(np.float32)
ADV = np.array([1.0, -1.0], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
# Token entropies; the masked token has the largest one and must never be selected.
ENT = np.array([[0.1, 0.9, 0.5], [0.7, 0.3, 5.0]], np.float32)

AGG = {
    "row_mean": np.array([[1 / 6, 1 / 6, 1 / 6], [1 / 4, 1 / 4, 0]]),
    "tokens": MASK / 5,
    "luspo": MASK / 2,
    "dr_grpo": MASK / 6,
}
AGG_OF = {"grpo": "row_mean", "sapo": "row_mean", "bnpo": "tokens", "dapo": "tokens", "cispo": "tokens",
          "vespo": "tokens", "luspo": "luspo", "dr_grpo": "dr_grpo"}


def sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def run(lp=LOGPS, old=OLD, ref=None, adv=ADV, mask=MASK, **kw):
    """(loss, d loss / d logps, metrics) of grpo_loss, eagerly, old_logps fixed."""
    kw.setdefault("beta", 0.0)

    def f(x):
        return grpo_loss(x, jnp.asarray(old), None if ref is None else jnp.asarray(ref), jnp.asarray(adv),
                         jnp.asarray(mask), **kw)

    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
    return float(loss), np.asarray(grad), {k: np.asarray(v) for k, v in metrics.items()}


def test_constants_partition_the_menu():
    assert set(CLIPPED_LOSS_TYPES) | set(TOKEN_SUM_LOSS_TYPES) | {"sapo"} == set(LOSS_TYPES)
    assert set(TOKEN_SUM_LOSS_TYPES) & set(CLIPPED_LOSS_TYPES) == {"dapo"}
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


# --- the clipped family: grpo, bnpo, dapo, dr_grpo, luspo ------------------------------------------

# Per token (epsilon 0.2): o = min(rho A, clip(rho, 0.8, 1.2) A) and d o / d logp:
#   row 0 (A = +1): 1.5 -> 1.2 (clipped, d 0); 0.9 -> 0.9 (d 0.9); 1.1 -> 1.1 (d 1.1)
#   row 1 (A = -1): 0.5 -> min(-0.5, -0.8) = -0.8 (clipped, d 0); 2.0 -> min(-2.0, -1.2) = -2.0 (d -2.0)
# Row sums 3.2 and -2.8, token sum 0.4.
D_CLIPPED = np.array([[0.0, 0.9, 1.1], [0.0, -2.0, 0.0]])


@pytest.mark.parametrize("loss_type,expected", [
    ("grpo", -(3.2 / 3 + -2.8 / 2) / 2),  # -(1.0667 - 1.4) / 2 = 1/6
    ("bnpo", -0.4 / 5),                   # -0.08
    ("dapo", -0.4 / 5),                   # one batch: the same number as bnpo
    ("dr_grpo", -0.4 / (2 * 3)),          # / (N * T)
    ("luspo", -(3.2 + -2.8) / 2),         # mean of row sums: -0.2
])
def test_clipped_types_value_and_gradient(loss_type, expected):
    loss, grad, metrics = run(loss_type=loss_type)
    assert loss == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(grad, -D_CLIPPED * AGG[AGG_OF[loss_type]], atol=1e-6)
    assert float(metrics["clip_fraction_high"]) == pytest.approx(1 / 5)  # (0, 0)
    assert float(metrics["clip_fraction_low"]) == pytest.approx(1 / 5)   # (1, 0)


def test_dapo_equals_bnpo_on_one_batch():
    ref = LOGPS + 0.3  # with a KL term too
    for kw in ({}, {"ref": ref, "beta": 0.1}):
        b_loss, b_grad, _ = run(loss_type="bnpo", **kw)
        d_loss, d_grad, _ = run(loss_type="dapo", **kw)
        assert d_loss == b_loss
        np.testing.assert_array_equal(d_grad, b_grad)


# --- cispo: s = sg(min(rho, eps_max)) * A * logp, token sum / tokens -------------------------------

def test_cispo_capped_stop_gradient_weight():
    # eps_max = 1.4: weights row 0 [min(1.5, 1.4), 0.9, 1.1] = [1.4, 0.9, 1.1], row 1 [0.5, min(2, 1.4)] =
    # [0.5, 1.4]; loss = -(1.4 lp00 + 0.9 lp01 + 1.1 lp02 - 0.5 lp10 - 1.4 lp11) / 5
    #   = -(1.4 * -0.594535 + 0.9 * -2.105361 + 1.1 * -1.404690 + 0.5 * 1.193147 + 1.4 * 2.306853) / 5
    #   = 0.089233.
    # The weight is a stop-gradient coefficient: d loss / d logp = -w A / 5 on every token, clipped or not.
    lp = LOGPS
    loss, grad, metrics = run(loss_type="cispo", cispo_max_weight=1.4)
    expected = -(1.4 * lp[0, 0] + 0.9 * lp[0, 1] + 1.1 * lp[0, 2] - 0.5 * lp[1, 0] - 1.4 * lp[1, 1]) / 5
    assert expected == pytest.approx(0.089233, abs=1e-6)
    assert loss == pytest.approx(expected, abs=1e-6)
    np.testing.assert_allclose(grad, -np.array([[1.4, 0.9, 1.1], [-0.5, -1.4, 0.0]]) / 5, atol=1e-6)
    # TRL's cispo_clip_ratio: rho > eps_max with A > 0 -> only (0, 0); (1, 1) has A < 0.
    assert float(metrics["clip_fraction_high"]) == pytest.approx(1 / 5)
    assert float(metrics["clip_fraction_low"]) == 0.0


def test_cispo_default_cap_keeps_every_ratio():
    # eps_max = 5: nothing capped, w = rho; the token at 1.5 (clipped, gradient 0 in grpo) keeps -1.5 / 5.
    _, grad, metrics = run(loss_type="cispo")
    np.testing.assert_allclose(grad, -np.array([[1.5, 0.9, 1.1], [-0.5, -2.0, 0.0]]) / 5, atol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0


# --- sapo: s = sigmoid(tau (rho - 1)) * 4 / tau * A, tau = tau_pos if A > 0 else tau_neg -------------

@pytest.mark.parametrize("taus,expected,d_obj", [
    # (tau_pos, tau_neg) = (1, 2): row 0 s = 4 sig([0.5, -0.1, 0.1]) = [2.489837, 1.900083, 2.099917],
    # row 1 s = -2 sig(2 * [-0.5, 1.0]) = -2 sig([-1, 2]) = [-0.537883, -1.761594];
    # loss = -(6.489837 / 3 + -2.299477 / 2) / 2 = -0.506770.
    # d s / d logp = 4 sig(x) (1 - sig(x)) rho A (tau cancels but in x):
    #   row 0 [1.410022, 0.897754, 1.097255], row 1 [-0.393224, -0.839949].
    ((1.0, 2.0), -0.506770, [[1.410022, 0.897754, 1.097255], [-0.393224, -0.839949, 0]]),
    # (2, 1): row 0 s = 2 sig([1, -0.2, 0.2]) = [1.462117, 0.900332, 1.099668]; row 1 s = -4 sig([-0.5, 1])
    # = [-1.510163, -2.924234]; loss = -(3.462117 / 3 - 4.434397 / 2) / 2 = 0.531580.
    ((2.0, 1.0), 0.531580, [[1.179672, 0.891060, 1.089073], [-0.470007, -1.572895, 0]]),
])
def test_sapo_soft_gate_both_temperatures(taus, expected, d_obj):
    tau_pos, tau_neg = taus
    # The gate values from the formula, independent of the numbers in the table above.
    s0 = [4 / tau_pos * sig(tau_pos * (r - 1)) for r in (1.5, 0.9, 1.1)]
    s1 = [-4 / tau_neg * sig(tau_neg * (r - 1)) for r in (0.5, 2.0)]
    assert -(sum(s0) / 3 + sum(s1) / 2) / 2 == pytest.approx(expected, abs=1e-6)
    loss, grad, metrics = run(loss_type="sapo", sapo_temperatures=taus)
    assert loss == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(grad, -np.array(d_obj) * AGG["row_mean"], atol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0  # a soft gate clips nothing


# --- vespo: s = sg(phi(w_i)) * A * logp, w_i the sequence ratio, token sum / tokens ----------------

def test_vespo_weights_by_hand():
    # phi(w) = e^lam w^k e^(-lam w); (k, lam) = (2, 3) for A >= 0, (3, 2) for A < 0 (the defaults).
    #   w = 2, A > 0: e^3 * 4 * e^-6 = 4 e^-3 = 0.199148;   w = 2, A < 0: e^2 * 8 * e^-4 = 8 e^-2 = 1.082682
    #   w = 1: e^lam * 1 * e^-lam = 1 for either sign (phi(1) = 1).
    # The log ratios [2 ln 2, -ln 2] sum to ln 2: w is the product of the ratios, not their mean; the
    # masked token's log ratio 7 must not count.
    ln2 = math.log(2.0)
    mask = jnp.array([[1, 1, 0], [1, 1, 0]], jnp.float32)
    cases = [  # (log ratios, advantages, expected phi per row)
        ([[ln2, 0.0, 7.0], [2 * ln2, -ln2, 7.0]], [[1.0], [-1.0]], [4 * math.exp(-3), 8 * math.exp(-2)]),
        ([[0.0, 0.0, 7.0], [0.3, -0.3, 7.0]], [[1.0], [-2.0]], [1.0, 1.0]),
    ]
    for log_ratio, adv, expected in cases:
        phi = np.asarray(vespo_weights(jnp.array(log_ratio), mask, jnp.array(adv)))
        np.testing.assert_allclose(phi[:, 0], expected, rtol=1e-5)
    # No gradient flows through phi.
    g = jax.grad(lambda x: vespo_weights(x, mask, jnp.array(cases[0][1])).sum())(jnp.array(cases[0][0]))
    assert np.all(np.asarray(g) == 0)


def test_vespo_value_and_gradient():
    # Row 0: w = 1.5 * 0.9 * 1.1 = 1.485, A > 0: phi = 1.485^2 e^(3 (1 - 1.485)) = 0.514700.
    # Row 1: w = 0.5 * 2.0 = 1 (the masked 3.0 excluded), so phi = 1.
    # loss = -(phi0 (lp00 + lp01 + lp02) - (lp10 + lp11)) / 5 = -0.277474; d loss / d logp = -phi_i A_i / 5.
    phi0 = 1.485 ** 2 * math.exp(3 * (1 - 1.485))
    assert phi0 == pytest.approx(0.514700, abs=1e-6)
    lp = LOGPS
    expected = -(phi0 * lp[0].sum() - (lp[1, 0] + lp[1, 1])) / 5
    assert expected == pytest.approx(-0.277474, abs=1e-6)
    loss, grad, _ = run(loss_type="vespo")
    assert loss == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(grad, -np.array([[phi0] * 3, [-1.0, -1.0, 0.0]]) / 5, atol=1e-6)


# --- delta (INTELLECT-2's two-sided clip) -------------------------------------------------------

# Row 0: A = -1, ratios [3, 1, (5)]; row 1: A = +1, ratios [1, 1, (5)]; third tokens masked; grpo.
# The token at ratio 3 contributes min(min(3, delta) * -1, clip(3) * -1) = min(-min(3, delta), -1.2)
# = -min(3, delta) for delta >= 1.2. The other tokens contribute A. Loss = -((o00 - 1) / 2 + 1) / 2.
# d o00 / d logp: 0 when delta caps (a constant), -3 when it does not -> grad -(-3) / (2 * 2) = 0.75.
D_RATIOS = np.array([[3.0, 1.0, 5.0], [1.0, 1.0, 5.0]], np.float32)
D_OLD = np.array([[-2.0, -1.0, -3.0], [-1.0, -0.5, -3.0]], np.float32)
D_MASK = np.array([[1, 1, 0], [1, 1, 0]], np.float32)
D_ADV = np.array([-1.0, 1.0], np.float32)


@pytest.mark.parametrize("delta,o00,g00", [(None, -3.0, 0.75), (2.0, -2.0, 0.0), (2.5, -2.5, 0.0),
                                           (4.0, -3.0, 0.75)])
def test_delta_caps_negative_advantage_ratio(delta, o00, g00):
    lp = D_OLD + np.log(D_RATIOS)
    loss, grad, _ = run(lp=lp, old=D_OLD, adv=D_ADV, mask=D_MASK, delta=delta)
    assert loss == pytest.approx(-((o00 - 1) / 2 + 1) / 2, abs=1e-6)  # delta 2: 0.25; none: 0.5
    # The other tokens: d (rho A) / d logp = A at rho = 1, weighted 1/4.
    np.testing.assert_allclose(grad, [[g00, 0.25, 0], [-0.25, -0.25, 0]], atol=1e-6)


@pytest.mark.parametrize("loss_type", ["cispo", "sapo", "vespo"])
def test_delta_with_non_clipped_type_raises(loss_type):
    with pytest.raises(ValueError, match="delta"):
        run(loss_type=loss_type, delta=2.0)


# --- KL estimators --------------------------------------------------------------------------------

def test_kl_estimators_by_hand():
    # d = logp - ref = [ln 2, -ln 2, 0]:
    #   k1 = d                   = [0.693147, -0.693147, 0]            d k1 / d logp = 1
    #   k2 = d^2 / 2             = [0.240227, 0.240227, 0]             d k2 / d logp = d
    #   k3 = e^-d + d - 1        = [0.5 + ln 2 - 1, 2 - ln 2 - 1, 0]   d k3 / d logp = 1 - e^-d
    #                            = [0.193147, 0.306853, 0]                            = [0.5, -1, 0]
    ln2 = math.log(2.0)
    logps = jnp.zeros((2, 3))
    ref = jnp.array([[-ln2, ln2, 0.0], [-ln2, ln2, 0.0]])  # both rows the same
    cases = {
        "k1": ([ln2, -ln2, 0.0], [1.0, 1.0, 1.0]),
        "k2": ([ln2 ** 2 / 2, ln2 ** 2 / 2, 0.0], [ln2, -ln2, 0.0]),
        "k3": ([0.5 + ln2 - 1, 2 - ln2 - 1, 0.0], [0.5, -1.0, 0.0]),
    }
    for est, (value, slope) in cases.items():
        np.testing.assert_allclose(kl_estimate(logps, ref, est), [value] * 2, atol=1e-6, err_msg=est)
        grad = jax.grad(lambda x: kl_estimate(x, ref, est).sum())(logps)  # noqa: B023
        np.testing.assert_allclose(grad, [slope] * 2, atol=1e-6, err_msg=est)
    np.testing.assert_allclose(kl_estimate(logps, ref)[0], cases["k3"][0], atol=1e-6)  # k3 is the default
    with pytest.raises(ValueError, match="kl_estimator"):
        kl_estimate(logps, ref, "k4")


# d = logp - ref for the KL-in-the-loss tests: row 0 [0.5, 0, -0.5], row 1 [1.0, 0.2, (9.0 masked)].
KL_D = np.array([[0.5, 0.0, -0.5], [1.0, 0.2, 9.0]], np.float32)


@pytest.mark.parametrize("estimator,loss_type,agg_kl", [
    # k1 = d. grpo: (0 / 3 + 1.2 / 2) / 2 = 0.3; bnpo: 1.2 / 5 = 0.24; luspo: (0 + 1.2) / 2 = 0.6.
    ("k1", "grpo", 0.3), ("k1", "bnpo", 0.24), ("k1", "luspo", 0.6),
    # k2 = d^2 / 2 = [0.125, 0, 0.125], [0.5, 0.02]. grpo: (0.25 / 3 + 0.52 / 2) / 2 = 0.171667.
    ("k2", "grpo", (0.25 / 3 + 0.52 / 2) / 2),
])
def test_kl_enters_with_the_aggregation_and_is_not_entropy_masked(estimator, loss_type, agg_kl):
    # top_entropy_quantile 0.4 keeps the policy term only on (0, 1) (entropy 0.9: o = 0.9) and (1, 0)
    # (0.7: o = -0.8); see test_high_entropy_mask. Policy terms: grpo -(0.9 / 3 - 0.8 / 2) / 2 = 0.05;
    # bnpo -(0.9 - 0.8) / 5 = -0.02; luspo -(0.9 - 0.8) / 2 = -0.05. The KL term, beta 0.1, stays on
    # every masked token: loss = policy + 0.1 * agg(kl).
    policy = {"grpo": 0.05, "bnpo": -0.02, "luspo": -0.05}[loss_type]
    ref = LOGPS - KL_D
    loss, grad, metrics = run(ref=ref, beta=0.1, kl_estimator=estimator, loss_type=loss_type,
                              entropies=ENT, top_entropy_quantile=0.4)
    assert loss == pytest.approx(policy + 0.1 * agg_kl, abs=1e-6)
    # Gradient: the policy's only non-clipped kept token is (0, 1) (d o = 0.9; (1, 0) is clipped); the
    # KL's d k / d logp (k1: 1, k2: d) on every masked token, both weighted by the aggregation.
    slope = np.ones_like(KL_D) if estimator == "k1" else KL_D
    d_policy = np.array([[0.0, 0.9, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(grad, (-d_policy + 0.1 * slope) * AGG[AGG_OF[loss_type]], atol=1e-6)
    # The kl metric: the token mean of k over the mask (k1: 1.2 / 5).
    if estimator == "k1":
        assert float(metrics["kl"]) == pytest.approx(0.24, abs=1e-6)


# --- the top-entropy mask ------------------------------------------------------------------------

# The masked entropies sorted: [0.1, 0.3, 0.5, 0.7, 0.9] (n = 5); the threshold is the (1 - q) quantile,
# at position (1 - q) * 4, interpolated linearly:
#   q = 1    pos 0    threshold 0.1                      every masked token
#   q = 0.75 pos 1    threshold 0.3                      all but 0.1
#   q = 0.5  pos 2    threshold 0.5                      0.5, 0.7, 0.9
#   q = 0.4  pos 2.4  threshold 0.5 + 0.4 * 0.2 = 0.58   0.7, 0.9 (nearest / lower would keep 0.5)
#   q = 0.2  pos 3.2  threshold 0.7 + 0.2 * 0.2 = 0.74   0.9 only (lower / nearest would keep 0.7)
#   q = 0    pos 4    threshold 0.9                      only the max
# The masked token (entropy 5.0) is never selected.
@pytest.mark.parametrize("q,expected", [
    (1.0, [[1, 1, 1], [1, 1, 0]]),
    (0.75, [[0, 1, 1], [1, 1, 0]]),
    (0.5, [[0, 1, 1], [1, 0, 0]]),
    (0.4, [[0, 1, 0], [1, 0, 0]]),
    (0.2, [[0, 1, 0], [0, 0, 0]]),
    (0.0, [[0, 1, 0], [0, 0, 0]]),
])
def test_high_entropy_mask(q, expected):
    got = np.asarray(high_entropy_mask(jnp.asarray(ENT), jnp.asarray(MASK), q))
    np.testing.assert_array_equal(got, np.array(expected, bool))


def test_high_entropy_mask_interpolates_between_order_statistics():
    # Sorted [1, 2, 4, 8], q = 0.5: position 0.5 * 3 = 1.5 -> threshold 2 + 0.5 * (4 - 2) = 3: keeps 4, 8
    # (a "lower" rule, threshold 2, would keep 2 too).
    # The 4 masked values in a [2, 3] array; the two masked slots hold 99 (never selected).
    ent = jnp.array([[1.0, 2.0, 4.0], [8.0, 99.0, 99.0]])
    mask = jnp.array([[1, 1, 1], [1, 0, 0]], jnp.float32)
    np.testing.assert_array_equal(high_entropy_mask(ent, mask, 0.5), [[0, 0, 1], [1, 0, 0]])
    # Ties at the threshold are kept (>=): [2, 2, 2, 8], q = 0.5 -> threshold 2 -> all four.
    ties = jnp.array([[2.0, 2.0, 2.0], [8.0, 99.0, 99.0]])
    np.testing.assert_array_equal(high_entropy_mask(ties, mask, 0.5), [[1, 1, 1], [1, 0, 0]])
    # q = 0.6 on [1, 2, 4, 8]: position 0.4 * 3 = 1.2 -> threshold 2 + 0.2 * 2 = 2.4: keeps 4, 8 (2 < 2.4).
    np.testing.assert_array_equal(high_entropy_mask(ent, mask, 0.6), [[0, 0, 1], [1, 0, 0]])
    # q = 0.7: position 0.9 -> threshold 1 + 0.9 * 1 = 1.9: keeps 2, 4, 8.
    np.testing.assert_array_equal(high_entropy_mask(ent, mask, 0.7), [[0, 1, 1], [1, 0, 0]])


def test_high_entropy_mask_edge_cases():
    ent = jnp.asarray(ENT)
    for q in (0.0, 0.4, 1.0):
        # No masked token: nothing selected (no NaN, no inf threshold leaking through).
        assert not np.asarray(high_entropy_mask(ent, jnp.zeros((2, 3)), q)).any()
        # One masked token: it is its own quantile, always kept.
        one = jnp.zeros((2, 3)).at[1, 1].set(1.0)
        np.testing.assert_array_equal(high_entropy_mask(ent, one, q), np.asarray(one, bool))
    # No gradient through the mask.
    g = jax.grad(lambda e: high_entropy_mask(e, jnp.asarray(MASK), 0.4).astype(jnp.float32).sum())(ent)
    assert np.all(np.asarray(g) == 0)


@pytest.mark.parametrize("loss_type,expected,d_kept", [
    # q = 0.4 keeps (0, 1) and (1, 0). grpo: -(0.9 / 3 + -0.8 / 2) / 2 = 0.05 (the row lengths stay the
    # mask's, 3 and 2, not the kept tokens'); d o: 0.9 at (0, 1), 0 at (1, 0) (clipped).
    ("grpo", 0.05, [[0, 0.9, 0], [0, 0, 0]]),
    # cispo: -(0.9 lp01 - 0.5 lp10) / 5 (still / 5 tokens); d o = w A: 0.9 at (0, 1), -0.5 at (1, 0).
    ("cispo", None, [[0, 0.9, 0], [-0.5, 0, 0]]),
])
def test_top_entropy_quantile_zeroes_low_entropy_policy_terms(loss_type, expected, d_kept):
    if expected is None:
        expected = -(0.9 * LOGPS[0, 1] - 0.5 * LOGPS[1, 0]) / 5
    loss, grad, _ = run(loss_type=loss_type, entropies=ENT, top_entropy_quantile=0.4)
    assert loss == pytest.approx(expected, abs=1e-6)
    # (0, 2) and (1, 1) would have gradients (-1.1 / 6 and 2 / 4 in grpo): dropped to 0.
    np.testing.assert_allclose(grad, -np.array(d_kept) * AGG[AGG_OF[loss_type]], atol=1e-6)


def test_entropy_arguments_required():
    with pytest.raises(ValueError, match="entropies"):
        run(entropy_coef=0.01)
    with pytest.raises(ValueError, match="entropies"):
        run(top_entropy_quantile=0.5)


# --- the entropy bonus ----------------------------------------------------------------------------

@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("q,mean_entropy,used", [
    # q = 1: the mean over the 5 masked tokens, (0.1 + 0.9 + 0.5 + 0.7 + 0.3) / 5 = 0.5 (not the masked 5.0).
    (1.0, 0.5, [[1, 1, 1], [1, 1, 0]]),
    # q = 0.4: over the kept (0, 1) and (1, 0): (0.9 + 0.7) / 2 = 0.8.
    (0.4, 0.8, [[0, 1, 0], [1, 0, 0]]),
])
def test_entropy_bonus(loss_type, q, mean_entropy, used):
    coef = 0.01

    def f(lp, ent, c):
        return grpo_loss(lp, jnp.asarray(OLD), jnp.asarray(LOGPS + 0.2), jnp.asarray(ADV), jnp.asarray(MASK),
                         beta=0.04, loss_type=loss_type, entropies=ent, entropy_coef=c, top_entropy_quantile=q)

    with_bonus, metrics = f(jnp.asarray(LOGPS), jnp.asarray(ENT), coef)
    without, _ = f(jnp.asarray(LOGPS), jnp.asarray(ENT), 0.0)
    # The same decrease for every loss_type: coef * mean entropy, not rescaled by the aggregation.
    assert float(with_bonus) - float(without) == pytest.approx(-coef * mean_entropy, abs=1e-6)
    assert float(metrics["entropy_bonus"]) == pytest.approx(mean_entropy, abs=1e-6)
    # d loss / d entropies = -coef / (tokens used) on the tokens used, 0 elsewhere.
    used = np.array(used, np.float32)
    g = jax.grad(lambda e: f(jnp.asarray(LOGPS), e, coef)[0])(jnp.asarray(ENT))
    np.testing.assert_allclose(g, -coef * used / used.sum(), atol=1e-7)
    # A coefficient given as an array (the adaptive controller's, traced in the train step) applies too.
    as_array, _ = f(jnp.asarray(LOGPS), jnp.asarray(ENT), jnp.float32(coef))
    assert float(as_array) == pytest.approx(float(with_bonus), abs=1e-6)


# --- accumulation weights -------------------------------------------------------------------------

# K = 2 updates of M = 2 chunks. Tokens [[3, 1], [2, 4]] (update totals 4 and 6, rollout 10); rows that
# count [[2, 1], [2, 2]] (update totals 3 and 4).
#   token shares          [[3/4, 1/4], [2/6, 4/6]]
#   row means             rows / update rows                 [[2/3, 1/3], [1/2, 1/2]]
#   bnpo                  the token shares
#   dapo, cispo, vespo    tokens * K / rollout tokens = tokens * 2 / 10   [[0.6, 0.2], [0.4, 0.8]]
ACC_TOKENS = np.array([[3.0, 1.0], [2.0, 4.0]], np.float32)
ACC_ROWS = np.array([[2.0, 1.0], [2.0, 2.0]], np.float32)
SHARES = [[3 / 4, 1 / 4], [1 / 3, 2 / 3]]
ACC_EXPECTED = {"row_mean": [[2 / 3, 1 / 3], [1 / 2, 1 / 2]], "tokens": [[0.6, 0.2], [0.4, 0.8]],
                "bnpo": SHARES}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_accumulation_weights_by_hand(loss_type):
    family = ("bnpo" if loss_type == "bnpo" else "tokens" if loss_type in TOKEN_SUM_LOSS_TYPES
              else "row_mean")
    weights, shares = accumulation_weights(loss_type, jnp.asarray(ACC_TOKENS), jnp.asarray(ACC_ROWS))
    np.testing.assert_allclose(weights, ACC_EXPECTED[family], rtol=1e-6)
    np.testing.assert_allclose(shares, SHARES, rtol=1e-6)


def test_accumulation_weights_edge_cases():
    # An update without tokens: shares 0, no NaN.
    weights, shares = accumulation_weights("bnpo", jnp.array([[0.0, 0.0], [2.0, 2.0]]), jnp.ones((2, 2)))
    np.testing.assert_array_equal(shares, [[0, 0], [0.5, 0.5]])
    np.testing.assert_array_equal(weights, shares)
    with pytest.raises(ValueError, match="loss_type"):
        accumulation_weights("ppo", jnp.ones((1, 1)), jnp.ones((1, 1)))


def _acc_batch():
    """8 rows (K * M chunks of 2), T = 3, ragged masks, off-policy ratios in and out of the clip range,
    a reference; one fill row (row 3, chunk (0, 1)) outside row_mask."""
    rng = np.random.default_rng(0)
    old = -rng.uniform(0.5, 3.0, (8, 3)).astype(np.float32)
    logps = (old + rng.uniform(-0.5, 0.5, (8, 3))).astype(np.float32)
    ref = (old + rng.uniform(-0.3, 0.3, (8, 3))).astype(np.float32)
    adv = np.array([1.0, -0.5, 0.7, 2.0, -1.2, 0.3, -0.8, 0.6], np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1],
                     [1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 0, 0]], np.float32)
    row_mask = np.array([1, 1, 1, 0, 1, 1, 1, 1], np.float32)
    return logps, old, ref, adv, mask, row_mask


# Chunks of 2 rows: (0, 0) rows 0-1 with 3 + 2 = 5 tokens, (0, 1) rows 2-3 with 1 token (row 3 is a fill
# row), (1, 0) rows 4-5 with 2 + 3 = 5, (1, 1) rows 6-7 with 3 + 1 = 4. Rollout: 15 tokens.
#   K = 2, M = 2: tokens [[5, 1], [5, 4]], rows [[2, 1], [2, 2]]
#     row means [[2/3, 1/3], [1/2, 1/2]]; bnpo [[5/6, 1/6], [5/9, 4/9]];
#     token sums tokens * 2 / 15 = [[2/3, 2/15], [2/3, 8/15]]
#   K = 1, M = 2 over rows 0-3 alone: tokens [[5, 1]], rows [[2, 1]]
#     row means [[2/3, 1/3]]; bnpo and token sums (tokens * 1 / 6) [[5/6, 1/6]]
ACC_CASES = {  # (K, M, rows used): (tokens, rows, {family: weights})
    (2, 2, 8): ([[5, 1], [5, 4]], [[2, 1], [2, 2]],
                {"row_mean": [[2 / 3, 1 / 3], [1 / 2, 1 / 2]], "bnpo": [[5 / 6, 1 / 6], [5 / 9, 4 / 9]],
                 "tokens": [[2 / 3, 2 / 15], [2 / 3, 8 / 15]]}),
    (1, 2, 4): ([[5, 1]], [[2, 1]], {"row_mean": [[2 / 3, 1 / 3]], "bnpo": [[5 / 6, 1 / 6]],
                                     "tokens": [[5 / 6, 1 / 6]]}),
}


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_accumulated_chunks_equal_the_whole_update(loss_type):
    # sum_m w[k, m] * loss(chunk k, m) (and its gradient) must be update k's loss over all its rows: for
    # the row-mean types and bnpo grpo_loss on update k's concatenated rows; for the token-sum types
    # (dapo's rollout normaliser) update k's token sum / (rollout tokens / K)
    # = grpo_loss(update k) * tokens_k * K / rollout tokens. With K = 1 that is grpo_loss on every row.
    logps, old, ref, adv, mask, row_mask = _acc_batch()
    family = ("bnpo" if loss_type == "bnpo" else "tokens" if loss_type in TOKEN_SUM_LOSS_TYPES
              else "row_mean")
    cache = {}

    def loss_grad(start, stop):  # grpo_loss and its gradient on rows start..stop-1 (sliced in numpy)
        if (start, stop) not in cache:
            r = slice(start, stop)

            def f(lp):
                return grpo_loss(lp, jnp.asarray(old[r]), jnp.asarray(ref[r]), jnp.asarray(adv[r]),  # noqa: B023
                                 jnp.asarray(mask[r]), row_mask=jnp.asarray(row_mask[r]), beta=0.04,  # noqa: B023
                                 loss_type=loss_type, max_completion_length=3)[0]

            value, grad = jax.value_and_grad(f)(jnp.asarray(logps[r]))
            cache[start, stop] = float(value), np.asarray(grad)
        return cache[start, stop]

    for (k_updates, m_chunks, n_used), (tokens, rows, hand) in ACC_CASES.items():
        weights, _ = accumulation_weights(loss_type, jnp.asarray(tokens, jnp.float32),
                                          jnp.asarray(rows, jnp.float32))
        weights = np.asarray(weights)
        np.testing.assert_allclose(weights, hand[family], rtol=1e-6)
        total = np.sum(tokens)
        per_update = n_used // k_updates
        for k in range(k_updates):
            chunks = [loss_grad(k * per_update + 2 * m, k * per_update + 2 * m + 2) for m in range(m_chunks)]
            acc_value = sum(weights[k, m] * value for m, (value, _) in enumerate(chunks))
            acc_grad = np.concatenate([weights[k, m] * grad for m, (_, grad) in enumerate(chunks)])
            scale = np.sum(tokens[k]) * k_updates / total if family == "tokens" else 1.0
            whole_value, whole_grad = loss_grad(k * per_update, (k + 1) * per_update)
            assert acc_value == pytest.approx(scale * whole_value, abs=1e-6), (k_updates, k)
            np.testing.assert_allclose(acc_grad, scale * whole_grad, atol=1e-6)
            if k_updates == 1:
                assert scale == 1.0  # K = 1: the rollout's own aggregate, every loss type


# --- the on-policy gradient -----------------------------------------------------------------------

# The hand example's mask (row lengths 3 and 2, 5 tokens), A = [1.5, -0.5], logps == old_logps
# (rho = 1, w = 1): every surrogate's d s / d logp is A: clipped rho A -> rho A = A; cispo
# sg(min(1, 5)) A -> A; sapo 4 sig(0) (1 - sig(0)) * 1 * A = A; vespo phi(1) A = A. The loss's gradient
# is -A_i times the aggregation's token weight (AGG): grpo, sapo [1/6, 1/4] by row; bnpo, dapo, cispo,
# vespo 1/5; luspo 1/2; dr_grpo 1/6. GSPO's sequence ratio gives the same: each of row i's len_i tokens
# carries s = rho_i A with d rho_i / d logp_t = m_t / len_i, so the len_i terms sum back to A m_t.
OP_ADV = np.array([1.5, -0.5], np.float32)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
@pytest.mark.parametrize("importance_level", ["token", "sequence"])
def test_on_policy_gradient_is_the_policy_gradient(loss_type, importance_level):
    logps = jnp.array([[-1.0, -2.0, -0.5], [-0.3, -0.2, -4.0]])
    mask, adv = jnp.asarray(MASK), jnp.asarray(OP_ADV)

    def f(lp):  # old = ref = lp in value: rho = 1, k3 = 0 with slope 0
        same = jax.lax.stop_gradient(lp)
        return grpo_loss(lp, same, same, adv, mask, beta=0.04, loss_type=loss_type,
                         importance_level=importance_level)[0]

    expected = -OP_ADV[:, None] * AGG[AGG_OF[loss_type]]
    np.testing.assert_allclose(jax.grad(f)(logps), expected, atol=1e-6)
