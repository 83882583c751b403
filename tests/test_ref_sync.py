"""TR-DPO reference refresh (grpo.ref_sync_every / grpo.ref_sync_alpha): `build.sync_reference`'s numbers,
dtypes, shardings and donation, and the trainer replacing its reference after the due steps' update,
before their checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from grpo_jax import build
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import model as model_lib
from grpo_jax import sharding
from grpo_jax import train
from grpo_jax import weights as weights_lib

from test_train import QUICKSTART, TINY


def test_sync_reference_numbers_dtypes_shardings_and_donation():
    mesh = sharding.make_mesh(data=4, fsdp=2)
    rows = NamedSharding(mesh, P("fsdp", None))
    policy = {"w": jnp.array([[1.0, 2.0], [3.0, 4.0]]), "b": jnp.array([0.5, -0.5]), "n": jnp.array([7, 8])}
    ref = {"w": jnp.array([[0.0, 0.0], [1.0, 1.0]], jnp.bfloat16), "b": jnp.array([1.5, 0.5]),
           "n": jnp.array([1, 2])}
    policy = {k: jax.device_put(v, rows if v.ndim == 2 else NamedSharding(mesh, P())) for k, v in policy.items()}
    ref = {k: jax.device_put(v, rows if v.ndim == 2 else NamedSharding(mesh, P())) for k, v in ref.items()}
    shardings = {k: v.sharding for k, v in ref.items()}
    out = build.sync_reference(ref, policy, 0.25)
    # 0.25 * policy + 0.75 * ref, in f32, then the reference's dtype.
    np.testing.assert_array_equal(np.asarray(out["w"], np.float32), [[0.25, 0.5], [1.5, 1.75]])
    assert out["w"].dtype == jnp.bfloat16 and out["b"].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out["b"]), [0.25 * 0.5 + 0.75 * 1.5, 0.25 * -0.5 + 0.75 * 0.5])
    np.testing.assert_array_equal(np.asarray(out["n"]), [1, 2])  # not floating: the reference's own
    for k in out:
        assert out[k].sharding.is_equivalent_to(shardings[k], out[k].ndim), k
    assert ref["w"].is_deleted()  # donated: no second copy of the reference
    # alpha = 1: the policy itself (rounded to the reference's dtype).
    one = build.sync_reference(out, policy, 1.0)
    np.testing.assert_array_equal(np.asarray(one["w"], np.float32), np.asarray(policy["w"]))
    np.testing.assert_array_equal(np.asarray(one["b"]), np.asarray(policy["b"]))


def _read(workdir, step, model_config, mesh):
    abstract = weights_lib.abstract_params(model_config, mesh)
    with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
        got = ckpt.restore_partial({"train": {"params": abstract},
                                    "ref": build.abstract_reference(model_config, abstract)}, step=step)
    return got["train"]["params"], got["ref"]


def _leaves(tree):
    return [np.asarray(x, np.float32) for x in jax.tree.leaves(tree)]


def test_trainer_refreshes_the_reference_on_the_due_steps_before_the_checkpoint(tmp_path):
    # ref_sync_every=2, alpha=1, 2 steps, a checkpoint each step: at step 1 no refresh is due (the
    # reference is still the initial policy, as with the refresh off); at step 2 it is the policy
    # just trained (the checkpoint is written after the refresh).
    overrides = TINY + ["mesh.data=1", "mesh.fsdp=1", "train.steps=2", "train.checkpoint_every=1",
                        "train.eval_every=0", "train.samples_every=0", "grpo.ref_sync_every=2",
                        "grpo.ref_sync_alpha=1.0"]
    argv = ["--config", QUICKSTART, "--workdir", str(tmp_path)] + [f"--config.{o}" for o in overrides]
    train.run(argv)
    rows = {r["step"]: r for r in metrics_lib.read_metrics(tmp_path) if "reward_mean" in r}
    assert "ref_synced" not in rows[1] and rows[2]["ref_synced"] == 1.0

    config, _ = cfg_lib.parse_command_line(argv)
    s = build.setup(config, tmp_path, load_weights=False)
    initial, ref0 = _read(tmp_path, 0, s.model_config, s.mesh)
    after1, ref1 = _read(tmp_path, 1, s.model_config, s.mesh)
    after2, ref2 = _read(tmp_path, 2, s.model_config, s.mesh)
    dtype = jnp.dtype(s.model_config.dtype)
    cast = lambda tree: model_lib.cast_params(tree, dtype)  # noqa: E731  the reference's storage dtype
    for trained in (after1, after2):  # each step moved the policy: a refresh at step 1 would show
        assert any(not np.array_equal(a, b) for a, b in zip(_leaves(trained), _leaves(initial))), "no update"
    for r in (ref0, ref1):  # before the refresh: the initial policy (equals a run with ref_sync_every=0)
        for a, b in zip(_leaves(r), _leaves(cast(initial))):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(ref2), _leaves(cast(after2))):  # alpha = 1: the policy after step 2's update
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(ref2), _leaves(ref1)))


def test_config_refuses_a_refresh_without_a_reference():
    with pytest.raises(cfg_lib.ConfigError, match="grpo.ref_sync_every"):
        cfg_lib.validate(cfg_lib.apply_overrides(cfg_lib.Config(), ["grpo.ref_sync_every=1", "grpo.beta=0.0"]))
