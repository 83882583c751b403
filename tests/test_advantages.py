"""Group-relative advantages on hand-computed numbers, and properties."""

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import example, given, settings
from hypothesis import strategies as st

from grpo_jax.advantages import group_advantages

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
