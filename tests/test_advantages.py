"""Group-relative advantages on hand-computed numbers, and properties; the other baselines (RLOO,
REINFORCE++-baseline), GDPO's normalise-then-sum, and `rollout.update_inputs` choosing them from the config."""

import math
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import example, given, settings
from hypothesis import strategies as st

from grpo_jax import config as cfg_lib
from grpo_jax import rollout
from grpo_jax.advantages import compute, gdpo, group_advantages

# Two groups of G = 4: group 0 has one success, group 1 is all successes.
REWARDS = jnp.array([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])


class TestHandComputed(chex.TestCase):
    """Hand-computed cases, each run both through jax.jit and eagerly (chex.variants)."""

    def advantages(self, rewards, group_size, mask=None, **kw):
        # group_size, scale, ddof, eps are closed over: static under jit, as in the trainer.
        fn = self.variant(lambda r, m: group_advantages(r, group_size, mask=m, **kw))
        return np.asarray(fn(rewards, mask))

    @chex.variants(with_jit=True, without_jit=True)
    def test_group_scale_hand_computed(self):
        # Group 0: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5.
        adv = self.advantages(REWARDS, 4, eps=1e-4)
        chex.assert_trees_all_close(adv[:4], np.array([0.75, -0.25, -0.25, -0.25]) / 0.5001, rtol=1e-6)
        # All-equal group: exactly zero, not NaN.
        chex.assert_trees_all_equal(adv[4:], np.zeros(4, np.float32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_group_scale_ddof0(self):
        # Biased std of group 0: sqrt((0.75^2 + 3 * 0.25^2) / 4) = sqrt(3) / 4.
        adv = self.advantages(REWARDS, 4, ddof=0, eps=0.0)
        chex.assert_trees_all_close(adv[0], 0.75 / (math.sqrt(3) / 4), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_batch_scale_hand_computed(self):
        # Std over all 8 rewards (five 1s, three 0s), ddof 1: sqrt(1.875 / 7).
        adv = self.advantages(REWARDS, 4, scale="batch", eps=1e-4)
        std = math.sqrt(1.875 / 7)
        chex.assert_trees_all_close(adv[:4], np.array([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4), rtol=1e-6)
        chex.assert_trees_all_equal(adv[4:], np.zeros(4, np.float32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_none_scale_is_centering_only(self):
        adv = self.advantages(REWARDS, 4, scale="none")
        chex.assert_trees_all_close(adv, np.array([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0]), atol=1e-7, rtol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(value=[0.7, 2.9229512214660645, -9.87654321], scale=["group", "batch", "none"])
    def test_all_equal_rewards_everywhere_give_zero_not_nan(self, value, scale):
        # 2.9229512 is the case hypothesis found: its f32 group mean is off by one ulp, which /eps would
        # turn into an advantage of -2.4e-3 for every member of the group.
        adv = self.advantages(jnp.full((6,), value), 3, scale=scale)
        assert np.all(adv == 0.0), (scale, adv)

    @chex.variants(with_jit=True, without_jit=True)
    def test_tied_group_is_zero_next_to_a_group_with_signal(self):
        rewards = jnp.array([2.9229512214660645] * 3 + [0.0, 1.0, 1.0], jnp.float32)
        adv = self.advantages(rewards, 3, scale="group")
        assert np.all(adv[:3] == 0.0)
        chex.assert_trees_all_close(adv[3:], np.array([-2, 1, 1]) / 3 / (np.std([0, 1, 1], ddof=1) + 1e-4),
                                    rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_tied_non_binary_group_is_exactly_zero(self):
        # The case that gave -2.4e-3 in the sweep's old copy of this function: three equal non-0/1 rewards.
        rewards = jnp.array([2.9229512214660645] * 3 + [9.0] + [0.5, 1.5, 4.0, 9.0], jnp.float32)
        mask = jnp.array([1, 1, 1, 0, 1, 1, 1, 0])
        adv = self.advantages(rewards, 4, mask=mask)
        assert np.all(adv[:4] == 0.0) and adv[7] == 0.0
        # Hand-computed: [0.5, 1.5, 4.0], mean 2, unbiased std sqrt((2.25 + 0.25 + 4) / 2) = sqrt(3.25).
        chex.assert_trees_all_close(adv[4:7], np.array([-1.5, -0.5, 2.0]) / (math.sqrt(3.25) + 1e-4), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_group_with_one_marked_row_has_no_signal(self):
        adv = self.advantages(jnp.array([3.0, 1.0, 0.0, 1.0]), 2, mask=jnp.array([1, 0, 1, 1]))
        assert adv[0] == 0.0 and adv[1] == 0.0
        chex.assert_trees_all_close(adv[2:], np.array([-0.5, 0.5]) / (math.sqrt(0.5) + 1e-4), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_mask_shape_is_checked_while_tracing(self):
        # A ValueError naming both shapes, raised at trace time under jit too.
        with pytest.raises(ValueError, match=r"\(3,\) but expected \(4\).*mask must have the rewards' shape"):
            self.advantages(jnp.zeros(4), 2, mask=jnp.ones(3))
        with pytest.raises(ValueError, match=r"mask must have the rewards' shape"):
            self.advantages(jnp.zeros(4), 2, mask=jnp.ones((4, 1)))


@pytest.mark.parametrize("rewards, g, match", [
    (jnp.zeros(8), 1, "group_size must be >= 2"),
    (jnp.zeros(7), 2, "N=7 is not a multiple of group_size=2"),
    (jnp.zeros((2, 4)), 2, "1-D"),
])
def test_bad_shapes_raise_with_numbers(rewards, g, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, g)


def test_unknown_scale_raises():
    with pytest.raises(ValueError, match="scale"):
        group_advantages(REWARDS, 4, scale="std")


reward_lists = st.integers(2, 6).flatmap(
    lambda g: st.tuples(st.just(g), st.lists(st.floats(-10, 10, width=32), min_size=g, max_size=6 * g)
                        .map(lambda r: r[: len(r) // g * g])))


@settings(max_examples=80, deadline=None)
@given(reward_lists, st.sampled_from(["group", "batch", "none"]))
@example((3, [2.9229512214660645] * 3), "group")
def test_properties(gr, scale):
    g, rewards = gr
    rewards = np.array(rewards, np.float32)
    adv = np.asarray(group_advantages(jnp.asarray(rewards), g, scale=scale)).reshape(-1, g)
    assert np.all(np.isfinite(adv))
    # Centred per group (the baseline is the group mean) ...
    np.testing.assert_allclose(adv.mean(axis=1), 0.0, atol=1e-3 * (1 + np.abs(adv).max()))
    # ... and order-preserving within the group: a better completion never gets less advantage.
    grouped = rewards.reshape(-1, g)
    for r, a in zip(grouped, adv):
        order = np.argsort(r, kind="stable")
        assert np.all(np.diff(a[order]) >= -1e-5 * (1 + np.abs(a).max()))


# --- the row mask (G sweeps, dynamic sampling): statistics over the marked rows only -------------


@given(st.lists(st.floats(-5, 5, width=32), min_size=12, max_size=12), st.integers(2, 4),
       st.sampled_from(["group", "batch", "none"]))
@settings(max_examples=60, deadline=None)
@example([2.9229512214660645] * 12, 3, "group")
def test_mask_equals_the_unmasked_function_on_the_marked_rows(values, used, scale):
    # Groups of 4 rows of which the first `used` count == group_advantages on those rows alone.
    rewards = jnp.asarray(values, jnp.float32)
    mask = jnp.arange(12) % 4 < used
    got = np.asarray(group_advantages(rewards, 4, scale=scale, mask=mask))
    want = np.asarray(group_advantages(rewards.reshape(3, 4)[:, :used].reshape(-1), used, scale=scale))
    np.testing.assert_allclose(got.reshape(3, 4)[:, :used].reshape(-1), want, rtol=1e-5, atol=1e-5)
    assert np.all(got.reshape(3, 4)[:, used:] == 0.0)


# --- other baselines: RLOO (leave-one-out), REINFORCE++-baseline (token-whitened) ---------------


class TestOtherEstimators(chex.TestCase):
    """`compute` by estimator on hand-computed numbers, each through jax.jit and eagerly."""

    def run_compute(self, rewards, group_size, mask=None, lengths=None, **kw):
        fn = self.variant(lambda r, m, n: compute(r, group_size, mask=m, lengths=n, **kw))
        return np.asarray(fn(jnp.asarray(rewards, jnp.float32), mask, lengths))

    @chex.variants(with_jit=True, without_jit=True)
    def test_rloo_g2(self):
        # [1, 0]: 1 - 0 = 1, 0 - 1 = -1; [3, 3] tied: 0. Group std of [1, 0] (ddof 1): sqrt(0.5).
        rewards = [1.0, 0.0, 3.0, 3.0]
        none = self.run_compute(rewards, 2, estimator="rloo", scale="none")
        chex.assert_trees_all_close(none, np.array([1.0, -1.0, 0.0, 0.0]), atol=1e-7)
        group = self.run_compute(rewards, 2, estimator="rloo", scale="group")
        chex.assert_trees_all_close(group[:2], np.array([1.0, -1.0]) / (math.sqrt(0.5) + 1e-4), rtol=1e-6)
        assert np.all(group[2:] == 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rloo_g3(self):
        # [0, 1, 2]: 0 - mean(1, 2) = -1.5, 1 - mean(0, 2) = 0, 2 - mean(0, 1) = 1.5; group std 1.
        none = self.run_compute([0.0, 1.0, 2.0], 3, estimator="rloo", scale="none")
        chex.assert_trees_all_close(none, np.array([-1.5, 0.0, 1.5]), atol=1e-6)
        group = self.run_compute([0.0, 1.0, 2.0], 3, estimator="rloo", scale="group")
        chex.assert_trees_all_close(group, np.array([-1.5, 0.0, 1.5]) / (1.0 + 1e-4), atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rloo_g4(self):
        # Group 0 [1, 0, 0, 0]: 1 - 0 = 1, 0 - 1/3 = -1/3; group std 0.5 (test_group_scale_hand_computed).
        none = self.run_compute(REWARDS, 4, estimator="rloo", scale="none")
        chex.assert_trees_all_close(none, np.array([1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0]), atol=1e-6)
        group = self.run_compute(REWARDS, 4, estimator="rloo", scale="group")
        chex.assert_trees_all_close(group[:4], np.array([1, -1 / 3, -1 / 3, -1 / 3]) / 0.5001, rtol=1e-6)
        assert np.all(group[4:] == 0.0)
        # Batch std over all 8 rewards, ddof 1: sqrt(1.875 / 7) (test_batch_scale_hand_computed).
        batch = self.run_compute(REWARDS, 4, estimator="rloo", scale="batch")
        chex.assert_trees_all_close(batch[:4], np.array([1, -1 / 3, -1 / 3, -1 / 3]) / (math.sqrt(1.875 / 7) + 1e-4),
                                    rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_rloo_mask_counts_the_marked_rows_only(self):
        # Group 1: [0.5, 1.5, 4.0] marked (9.0 not): 0.5 - 2.75 = -2.25, 1.5 - 2.25 = -0.75, 4 - 1 = 3;
        # group std sqrt(3.25) (test_mask_tied_non_binary_group_is_exactly_zero). Group 0: tied, 0.
        rewards = [2.9229512214660645] * 3 + [9.0] + [0.5, 1.5, 4.0, 9.0]
        mask = jnp.array([1, 1, 1, 0, 1, 1, 1, 0])
        none = self.run_compute(rewards, 4, mask=mask, estimator="rloo", scale="none")
        chex.assert_trees_all_close(none, np.array([0, 0, 0, 0, -2.25, -0.75, 3.0, 0]), atol=1e-6)
        group = self.run_compute(rewards, 4, mask=mask, estimator="rloo", scale="group")
        chex.assert_trees_all_close(group[4:7], np.array([-2.25, -0.75, 3.0]) / (math.sqrt(3.25) + 1e-4), rtol=1e-6)
        assert np.all(group[:4] == 0.0) and group[7] == 0.0

    @chex.variants(with_jit=True, without_jit=True)
    def test_reinforce_pp_whitens_over_tokens(self):
        # Groups [1, 0] and [1, 1] (tied), lengths 2, 4, 3, 1 tokens: centred c = [0.5, -0.5, 0, 0].
        # M = 10 tokens; mu = (2 * 0.5 - 4 * 0.5) / 10 = -0.1; c - mu = [0.6, -0.4, 0.1, 0.1];
        # var = (2 * 0.36 + 4 * 0.16 + 3 * 0.01 + 1 * 0.01) / (10 - 1) = 1.4 / 9 (verl: Bessel over tokens).
        adv = self.run_compute([1.0, 0.0, 1.0, 1.0], 2, lengths=jnp.array([2.0, 4.0, 3.0, 1.0]),
                               estimator="reinforce_pp")
        want = np.array([0.6, -0.4, 0.1, 0.1]) / math.sqrt(1.4 / 9 + 1e-8)
        chex.assert_trees_all_close(adv, want, rtol=1e-5)
        # The tied group is shifted by the whitening, not 0 (verl). Equal lengths: a different answer.
        equal = self.run_compute([1.0, 0.0, 1.0, 1.0], 2, lengths=jnp.full(4, 3.0), estimator="reinforce_pp")
        # (M = 12, mu = 0, var = 3 * (0.25 + 0.25) / 11: the tied group stays 0.)
        chex.assert_trees_all_close(equal, np.array([0.5, -0.5, 0, 0]) / math.sqrt(1.5 / 11 + 1e-8), rtol=1e-5)
        # scale, ddof and eps do not enter (verl's convention throughout).
        other = self.run_compute([1.0, 0.0, 1.0, 1.0], 2, lengths=jnp.array([2.0, 4.0, 3.0, 1.0]),
                                 estimator="reinforce_pp", scale="none", ddof=0, eps=0.5)
        chex.assert_trees_all_equal(other, adv)

    @chex.variants(with_jit=True, without_jit=True)
    def test_reinforce_pp_mask_and_empty_rows(self):
        # Row 3 outside the mask, row 4 without loss tokens: both 0 and in no statistic. Group 0 [3, 1]:
        # c = [1, -1]; group 1 keeps one marked row (no signal): c = 0; group 2 [2, 2] tied: c = 0.
        rewards = [3.0, 1.0, 7.0, 5.0, 2.0, 2.0]
        mask = jnp.array([1, 1, 1, 0, 1, 1])
        lengths = jnp.array([1.0, 3.0, 2.0, 5.0, 0.0, 2.0])
        adv = self.run_compute(rewards, 2, mask=mask, lengths=lengths, estimator="reinforce_pp")
        # Counted tokens 1, 3, 2, -, 0, 2: M = 8, mu = (1 - 3) / 8 = -0.25, c - mu = [1.25, -0.75, 0.25,
        # -, -, 0.25], var = (1.5625 + 3 * 0.5625 + 2 * 0.0625 + 2 * 0.0625) / 7.
        var = (1.5625 + 3 * 0.5625 + 4 * 0.0625) / 7
        want = np.array([1.25, -0.75, 0.25, 0.0, 0.0, 0.25]) / math.sqrt(var + 1e-8)
        chex.assert_trees_all_close(adv, want, rtol=1e-5)
        assert adv[3] == 0.0 and adv[4] == 0.0


def test_unknown_estimator_raises():
    with pytest.raises(ValueError, match="estimator must be one of"):
        compute(REWARDS, 4, estimator="ppo")


def _verl_reinforce_pp(rewards, group_size, lengths):
    """A direct numpy transcription of verl's compute_reinforce_plus_plus_baseline_outcome_advantage
    (token-level [N, T] tensors, masked_whiten with masked_var(unbiased=True), rsqrt(var + 1e-8)),
    in float64; returns each row's value."""
    rewards, lengths = np.asarray(rewards, np.float64), np.asarray(lengths, int)
    t = max(int(lengths.max()), 1)
    response_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float64)  # [N, T]
    grouped = rewards.reshape(-1, group_size)
    scores = (grouped - grouped.mean(axis=1, keepdims=True)).reshape(-1)
    scores = np.tile(scores[:, None], (1, t)) * response_mask
    mean = (scores * response_mask).sum() / response_mask.sum()
    var = (((scores - mean) ** 2) * response_mask).sum() / response_mask.sum()
    var = var * response_mask.sum() / (response_mask.sum() - 1)
    whitened = (scores - mean) / np.sqrt(var + 1e-8) * response_mask
    return whitened[:, 0]  # the row's value (at its first token; 0 for a row without tokens)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4).flatmap(lambda g: st.tuples(
    st.just(g), st.lists(st.tuples(st.integers(0, 8), st.integers(1, 6)), min_size=2 * g, max_size=2 * g))))
def test_reinforce_pp_matches_verl_transcription(case):
    g, rows = case
    rewards = np.array([r / 4 for r, _ in rows], np.float32)  # quarters: group means exact, ties exact
    lengths = np.array([n for _, n in rows], np.float32)
    got = np.asarray(compute(jnp.asarray(rewards), g, estimator="reinforce_pp", lengths=jnp.asarray(lengths)))
    want = _verl_reinforce_pp(rewards, g, lengths)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@settings(max_examples=80, deadline=None)
@given(reward_lists, st.sampled_from(["group", "batch"]))
@example((3, [2.9229512214660645] * 3), "group")
def test_rloo_is_g_over_g_minus_1_times_the_grpo_centring(gr, scale):
    g, rewards = gr
    rewards = jnp.asarray(np.array(rewards, np.float32))
    rloo = np.asarray(compute(rewards, g, estimator="rloo", scale="none"))
    centred = np.asarray(group_advantages(rewards, g, scale="none"))
    np.testing.assert_allclose(rloo, g / (g - 1) * centred, rtol=1e-6, atol=1e-6)
    # The leave-one-out baseline literally: r_i - mean of the other G - 1 rewards of its group.
    grouped = np.asarray(rewards, np.float64).reshape(-1, g)
    loo = grouped - (grouped.sum(axis=1, keepdims=True) - grouped) / (g - 1)
    np.testing.assert_allclose(rloo, loo.reshape(-1), atol=1e-4 * (1 + np.abs(grouped).max()))
    # Scaled: the same factor on grpo's scaled advantage.
    scaled = np.asarray(compute(rewards, g, estimator="rloo", scale=scale))
    np.testing.assert_allclose(scaled, g / (g - 1) * np.asarray(group_advantages(rewards, g, scale=scale)),
                               rtol=1e-6, atol=1e-6)


class TestJit(chex.TestCase):
    @parameterized.parameters("grpo", "rloo", "reinforce_pp")
    def test_compute_traces_inside_jit_with_traced_mask_and_lengths(self, estimator):
        rewards = jnp.array([0.5, 1.5, 4.0, 9.0, 1.0, 0.0, 0.0, 0.0])
        mask = jnp.array([1, 1, 1, 0, 1, 1, 1, 1])
        lengths = jnp.array([3.0, 1.0, 2.0, 4.0, 5.0, 2.0, 2.0, 1.0])
        fn = jax.jit(lambda r, m, n: compute(r, 4, estimator=estimator, mask=m, lengths=n))
        eager = compute(rewards, 4, estimator=estimator, mask=mask, lengths=lengths)
        chex.assert_trees_all_close(fn(rewards, mask, lengths), eager, rtol=1e-6)

    def test_gdpo_traces_inside_jit(self):
        comps = jnp.array([[1.0, 0.2], [0.0, 0.6], [1.0, 0.5], [1.0, 0.1]])
        fn = jax.jit(lambda c, w, m: gdpo(c, w, 2, mask=m))
        w, m = jnp.array([1.0, 0.5]), jnp.ones(4)
        chex.assert_trees_all_close(fn(comps, w, m), gdpo(comps, w, 2, mask=m), rtol=1e-6)


# --- GDPO: each reward normalised in its group, weighted sum, normalised over the batch ----------

# Two rewards, two groups of G = 2; reward 0 is tied in group 1.
GDPO_COMPONENTS = np.array([[1.0, 0.2], [0.0, 0.6], [1.0, 0.5], [1.0, 0.1]], np.float32)
GDPO_WEIGHTS = np.array([1.0, 0.5], np.float32)


def test_gdpo_hand_computed():
    # Reward 0, group 0 [1, 0]: mean 0.5, std sqrt(0.5): +-a, a = 0.5 / (sqrt(0.5) + 1e-4); group 1 tied: 0.
    # Reward 1, group 0 [0.2, 0.6] and group 1 [0.5, 0.1]: +-0.2 around the mean, std sqrt(0.08):
    #   b = 0.2 / (sqrt(0.08) + 1e-4): [-b, b, b, -b].
    # s = 1 * r0 + 0.5 * r1 = [a - b/2, -a + b/2, b/2, -b/2]: mean 0, std sqrt((2 (a - b/2)^2 + 2 (b/2)^2) / 3).
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    b = 0.2 / (math.sqrt(0.08) + 1e-4)
    s = np.array([a - b / 2, -a + b / 2, b / 2, -b / 2])
    std = math.sqrt((2 * (a - b / 2) ** 2 + 2 * (b / 2) ** 2) / 3)
    got = np.asarray(gdpo(jnp.asarray(GDPO_COMPONENTS), jnp.asarray(GDPO_WEIGHTS), 2))
    np.testing.assert_allclose(got, s / (std + 1e-4), rtol=1e-5)
    # Sum-then-normalise (grpo) of the same rewards is a different answer: the weighted sum
    # [1.1, 0.3, 1.25, 1.05] normalised per group gives +-0.7070 in both groups.
    summed = GDPO_COMPONENTS @ GDPO_WEIGHTS
    assert not np.allclose(np.asarray(group_advantages(jnp.asarray(summed), 2)), got, atol=1e-2)


def test_gdpo_mask_excludes_rows_from_every_statistic():
    # Row 3 unmarked: group 1 keeps one row (no signal: 0 in every reward), batch stats over rows 0-2.
    comps = jnp.asarray(GDPO_COMPONENTS)
    got = np.asarray(gdpo(comps, jnp.asarray(GDPO_WEIGHTS), 2, mask=jnp.array([1, 1, 1, 0])))
    a = 0.5 / (math.sqrt(0.5) + 1e-4)
    b = 0.2 / (math.sqrt(0.08) + 1e-4)
    s = np.array([a - b / 2, -a + b / 2, 0.0])  # mean 0
    std = math.sqrt(2 * (a - b / 2) ** 2 / 2)
    np.testing.assert_allclose(got[:3], s / (std + 1e-4), rtol=1e-5, atol=1e-6)
    assert got[3] == 0.0


def test_gdpo_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"weights must have shape \[R\] = \(2,\)"):
        gdpo(jnp.zeros((4, 2)), jnp.ones(3), 2)
    with pytest.raises(ValueError, match="2-D"):
        gdpo(jnp.zeros(4), jnp.ones(1), 2)


def _trl_normalize_then_sum(components, weights, group_size, mask=None):
    """A direct numpy transcription of TRL 1.16's GRPOTrainer normalize_then_sum branch (float64):
    unscorable rows are NaN; nanmean, and nanstd = sqrt(nanmean((x - mean)^2) * n / (n - 1)) (NaN for
    n <= 1); (x - mean) / (std + 1e-4) per reward and group; nansum of the weighted; then batch
    (x - nanmean) / (nanstd + 1e-4); nan_to_num(0)."""
    rpf = np.array(components, np.float64)
    unscorable = np.zeros(len(rpf), bool) if mask is None else ~np.asarray(mask, bool)
    rpf[unscorable] = np.nan

    def nanstd(x, axis=None):
        mean = np.nanmean(x, axis=axis, keepdims=True)
        var = np.nanmean((x - mean) ** 2, axis=axis, keepdims=True)
        count = np.sum(~np.isnan(x), axis=axis, keepdims=True)
        return np.sqrt(var * np.where(count > 1, count / np.maximum(count - 1, 1), np.nan))

    grouped = rpf.reshape(-1, group_size, rpf.shape[1])
    with warnings.catch_warnings():  # all-NaN slices (rows outside the mask) warn
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_k = np.nanmean(grouped, axis=1, keepdims=True)
        reward_k = ((grouped - mean_k) / (nanstd(grouped, axis=1) + 1e-4)).reshape(-1, rpf.shape[1])
        rewards = np.nansum(reward_k * np.asarray(weights)[None, :], axis=1)
        rewards[unscorable] = np.nan
        adv = (rewards - np.nanmean(rewards)) / (nanstd(rewards) + 1e-4)
    return np.nan_to_num(adv.reshape(-1), nan=0.0)


def test_gdpo_matches_trl_transcription_on_the_hand_case():
    np.testing.assert_allclose(np.asarray(gdpo(jnp.asarray(GDPO_COMPONENTS), jnp.asarray(GDPO_WEIGHTS), 2)),
                               _trl_normalize_then_sum(GDPO_COMPONENTS, GDPO_WEIGHTS, 2), rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4).flatmap(lambda g: st.tuples(
    st.just(g),
    st.lists(st.tuples(st.integers(-8, 8), st.integers(0, 4), st.booleans()), min_size=3 * g, max_size=3 * g),
    st.lists(st.sampled_from([0.25, 0.5, 1.0, 2.0]), min_size=2, max_size=2),
    st.booleans())))
def test_gdpo_matches_trl_transcription(case):
    # Values on a grid of quarters: a tied group's f32 mean is exact, so TRL's ~0 is exactly our 0.
    g, rows, weights, use_mask = case
    comps = np.array([[a / 4, b / 4] for a, b, _ in rows], np.float32)
    mask = np.array([m for _, _, m in rows]) if use_mask else None
    if mask is not None and not mask.any():
        mask[0] = True
    got = np.asarray(gdpo(jnp.asarray(comps), jnp.asarray(weights, jnp.float32), g,
                          mask=None if mask is None else jnp.asarray(mask)))
    want = _trl_normalize_then_sum(comps, weights, g, mask)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(reward_lists)
def test_gdpo_of_one_reward_is_the_batch_whitened_group_normalised_reward(gr):
    g, rewards = gr
    rewards = jnp.asarray(np.array(rewards, np.float32))
    normalised = np.asarray(group_advantages(rewards, g, scale="group", ddof=1), np.float64)
    want = (normalised - normalised.mean()) / (normalised.std(ddof=1) + 1e-4)
    got = np.asarray(gdpo(rewards[:, None], jnp.ones(1), g))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# --- rollout.update_inputs picks the estimator / GDPO from the config ----------------------------

EOS = 3


def _generation(rewards, components, lengths):
    n = len(rewards)
    tokens = np.full((n, 6), 5, np.int32)
    mask = (np.arange(6)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)
    for i, n_tok in enumerate(lengths):
        tokens[i, n_tok - 1] = EOS  # every row ended
    return rollout.Generation([], None, None, tokens, mask, np.asarray(rewards, np.float32),
                              {k: np.asarray(v, np.float32) for k, v in components.items()}, {}, [])


def _config(*overrides):
    return cfg_lib.apply_overrides(cfg_lib.Config(), ["grpo.group_size=2", *overrides])


def test_update_inputs_uses_the_configured_estimator():
    gen = _generation([1.0, 0.0, 1.0, 1.0], {"reward_correctness": [1.0, 0.0, 1.0, 1.0]}, [2, 4, 3, 1])
    valid = np.ones(4, np.float32)
    grpo, _, _ = rollout.update_inputs(_config(), gen, valid, (EOS,))
    np.testing.assert_allclose(grpo, [0.5 / (math.sqrt(0.5) + 1e-4), -0.5 / (math.sqrt(0.5) + 1e-4), 0, 0], rtol=1e-6)
    rloo, _, _ = rollout.update_inputs(_config("grpo.advantage_estimator=rloo"), gen, valid, (EOS,))
    np.testing.assert_allclose(rloo, 2 * grpo, rtol=1e-6)
    # reinforce_pp: the loss mask's row sums are the lengths (test_reinforce_pp_whitens_over_tokens).
    rpp, _, _ = rollout.update_inputs(_config("grpo.advantage_estimator=reinforce_pp"), gen, valid, (EOS,))
    np.testing.assert_allclose(rpp, np.array([0.6, -0.4, 0.1, 0.1]) / math.sqrt(1.4 / 9 + 1e-8), rtol=1e-5)
    # With truncated rows left out of the loss, they are out of the whitening too (0 tokens).
    gen_t = gen._replace(tokens=np.where(gen.tokens == EOS, 5, gen.tokens))  # nothing ended
    c = _config("grpo.advantage_estimator=reinforce_pp", "grpo.mask_truncated_completions=true")
    rpp_t, loss_mask, _ = rollout.update_inputs(c, gen_t, valid, (EOS,))
    assert loss_mask.sum() == 0 and np.all(rpp_t == 0)


def test_update_inputs_gdpo_over_the_components_with_the_config_weights():
    comps = {"reward_correctness": GDPO_COMPONENTS[:, 0], "reward_format": GDPO_COMPONENTS[:, 1]}
    total = GDPO_COMPONENTS @ GDPO_WEIGHTS
    gen = _generation(total, comps, [2, 2, 2, 2])
    valid = np.ones(4, np.float32)
    weights = ["rewards.weights.correctness=1.0", "rewards.weights.format=0.5", "rewards.weights.overlong=0.0"]
    default, _, _ = rollout.update_inputs(_config(*weights), gen, valid, (EOS,))
    # The default aggregation: the weighted total's group advantages, as before.
    np.testing.assert_allclose(default, np.asarray(group_advantages(jnp.asarray(total), 2)), rtol=1e-6)
    c = _config(*weights, "grpo.multi_objective_aggregation=normalize_then_sum")
    got, _, _ = rollout.update_inputs(c, gen, valid, (EOS,))
    np.testing.assert_allclose(got, _trl_normalize_then_sum(GDPO_COMPONENTS, GDPO_WEIGHTS, 2), rtol=1e-5)
    # The weights come from the config: swapped, a different answer.
    c = _config("rewards.weights.correctness=0.5", "rewards.weights.format=1.0",
                "grpo.multi_objective_aggregation=normalize_then_sum")
    swapped, _, _ = rollout.update_inputs(c, gen, valid, (EOS,))
    np.testing.assert_allclose(swapped, _trl_normalize_then_sum(GDPO_COMPONENTS, [0.5, 1.0], 2), rtol=1e-5)
    assert not np.allclose(swapped, got, atol=1e-2)
