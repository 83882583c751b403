"""Each paper preset pinned by its loss on the hand example of test_losses.py.

Hand example (epsilon-independent parts): row 0 A = +1, ratios [1.5, 0.9], mask [1, 1];
row 1 A = -1, ratios [0.5, 2.0], mask [1, 0]; ref - logps = [ln 2, 0] on row 0 (k3 = 1 - ln 2).
"""

import math
import pathlib

import jax.numpy as jnp
import pytest

from grpo_jax.advantages import group_advantages
from grpo_jax.config import load_config
from grpo_jax.losses import grpo_loss

from test_losses import ADV, LOGPS, MASK, OLD

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
K = 1 - math.log(2.0)
REF = LOGPS + jnp.array([[math.log(2.0), 0.0], [0.0, 0.0]])


def preset_loss(name):
    c = load_config(EXPERIMENTS / f"{name}.py")
    g = c.grpo
    loss, _ = grpo_loss(jnp.asarray(LOGPS), jnp.asarray(OLD), REF if g.beta > 0 else None,
                        jnp.asarray(ADV), jnp.asarray(MASK), epsilon=g.epsilon,
                        epsilon_high=g.epsilon_high, beta=g.beta, loss_type=g.loss_type,
                        importance_level=g.importance_level,
                        max_completion_length=c.sampling.max_new_tokens)
    return c, float(loss)


@pytest.mark.parametrize("name, expected", [
    # eps 0.2, beta 0.04, mean of row means: row 0 (1.2 - 0.04 K + 0.9) / 2, row 1 -0.8.
    ("deepseekmath", -(((1.2 - 0.04 * K) + 0.9) / 2 - 0.8) / 2),
    # eps 10: nothing clipped; beta 0.001.
    ("r1", -(((1.5 - 0.001 * K) + 0.9) / 2 - 0.5) / 2),
    # eps 0.2 / 0.28, beta 0, token mean: 1.5 -> 1.28.
    ("dapo", -(1.28 + 0.9 - 0.8) / 3),
    # beta 0, masked sum / (N * max_new_tokens = 2 * 3000).
    ("dr_grpo", -(1.2 + 0.9 - 0.8) / (2 * 3000)),
    # sequence ratio sqrt(1.35) -> 1.0004; row 1 ratio 0.5 -> 0.9997 with A < 0.
    ("gspo", -(1.0004 - 0.9997) / 2),
    # the defaults: eps 0.2, beta 0.04, grpo
    ("base", -(((1.2 - 0.04 * K) + 0.9) / 2 - 0.8) / 2),
])
def test_preset_loss(name, expected):
    _, loss = preset_loss(name)
    # abs 1e-7: GSPO's 1.0004 - 0.9997 cancels to 7e-4 in f32 (ulp(1) = 1.2e-7).
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name, group_size, scale, expected", [
    ("deepseekmath", 64, "group", None),
    ("r1", 16, "group", None),
    ("dapo", 16, "group", None),
    ("dr_grpo", 8, "none", [0.5, -0.5]),
    ("gspo", 8, "group", None),
])
def test_preset_group_and_scale(name, group_size, scale, expected):
    c = load_config(EXPERIMENTS / f"{name}.py")
    assert (c.grpo.group_size, c.grpo.scale_rewards) == (group_size, scale)
    adv = group_advantages(jnp.array([1.0, 0.0]), 2, scale=c.grpo.scale_rewards, eps=c.grpo.advantage_eps)
    if expected is not None:
        assert adv.tolist() == expected
