"""Checkpointer: bitwise round trips, resharding on restore, retention, SIGKILL mid-save, bad dirs."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from grpo_jax.checkpoint import Checkpointer, abstract_like

REPO = pathlib.Path(__file__).resolve().parents[1]


def _fsdp_mesh():
    return jax.make_mesh((8,), ("fsdp",), axis_types=(AxisType.Auto,))


def _state(mesh):
    """A small train state with every leaf kind the trainer holds, sharded fsdp=8 like params."""
    shard = NamedSharding(mesh, P("fsdp"))
    params = {
        "embed": jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (16, 8)), shard),
        "layer": {"w": jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (8, 4)), shard),
                  "b": jax.device_put(jnp.arange(4, dtype=jnp.float32) / 3, NamedSharding(mesh, P()))},
    }
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    # One real update so mu / nu / count are not all zeros: bitwise equality then means something.
    grads = jax.tree.map(lambda p: jnp.sin(p) * 1e-3, params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": jnp.asarray(7, jnp.int32),
        "key": jax.random.key(42),                   # new-style typed key
        "legacy_key": jax.random.PRNGKey(5),         # old-style uint32[2]
        "rbg_keys": jax.device_put(jax.random.split(jax.random.key(9, impl="rbg"), 8), shard),
    }


def _bits(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return ("key", str(jax.random.key_impl(x)), np.asarray(jax.random.key_data(x)).tobytes())
    return (str(x.dtype), x.shape, np.asarray(x).tobytes())


def _assert_bitwise_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        assert _bits(x) == _bits(y), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def state():
    return _state(_fsdp_mesh())


def test_round_trip_is_bitwise_exact(tmp_path, state):
    meta = {"data_position": 123, "config_hash": "abc", "nested": {"epoch": 2, "seen": [1, 2]}}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() is None
        assert ckpt.save(7, state, meta)
        assert ckpt.latest_step() == 7
    # A fresh Checkpointer (as after a restart) sees the step and restores it exactly.
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() == 7
        restored, restored_meta = ckpt.restore(abstract_like(state))
    assert restored_meta == meta
    _assert_bitwise_equal(restored, state)
    # optax state keeps its NamedTuple types (not lists) and every array its sharding.
    assert type(restored["opt_state"][0]) is type(state["opt_state"][0])
    for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert x.sharding.is_equivalent_to(y.sharding, x.ndim), (x.sharding, y.sharding)
    # The restored typed keys are usable keys that continue the same stream.
    assert jnp.array_equal(jax.random.uniform(restored["key"], (3,)), jax.random.uniform(state["key"], (3,)))


def test_async_save_round_trip(tmp_path, state):
    # The trainer donates its state to the next step right after saving: the save must have
    # copied the arrays off the device by the time it returns. Deleting the buffers proves it.
    copy = jax.tree.map(lambda x: x.copy(), state)
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        ckpt.save(1, copy, {"a": 1})
        for x in jax.tree.leaves(copy):
            x.delete()
        ckpt.wait()
        restored, meta = ckpt.restore(abstract_like(state), step=1)
    assert meta == {"a": 1}
    _assert_bitwise_equal(restored, state)


@pytest.mark.parametrize("target", ["mesh_4x2", "single_device"])
def test_restore_onto_a_different_sharding(tmp_path, state, target):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(3, state, {})
    if target == "mesh_4x2":
        mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2)
        # Params split over a different axis and over 2 devices instead of 8.
        new = NamedSharding(mesh, P(None, "fsdp"))
        replicated = NamedSharding(mesh, P())
        shard_of = lambda x: new if x.ndim == 2 else replicated
    else:
        dev = SingleDeviceSharding(jax.devices()[3])
        shard_of = lambda x: dev
    target_tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard_of(x)),
                               state)
    with Checkpointer(tmp_path) as ckpt:
        restored, _ = ckpt.restore(target_tree)
    _assert_bitwise_equal(restored, state)
    for x, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target_tree)):
        assert x.sharding.is_equivalent_to(t.sharding, x.ndim), (x.sharding, t.sharding)


def test_max_to_keep_and_save_interval(tmp_path):
    small = {"w": jnp.zeros(3), "step": jnp.int32(0)}
    with Checkpointer(tmp_path, max_to_keep=2, save_interval_steps=2) as ckpt:
        saved = [ckpt.save(s, {"w": jnp.full(3, float(s)), "step": jnp.int32(s)}, {"s": s}) for s in range(1, 9)]
        assert saved == [False, True] * 4
        assert ckpt.all_steps() == [6, 8]
        assert ckpt.save(9, small, {}, force=True)  # force ignores the interval
        assert ckpt.all_steps() == [8, 9]
        restored, meta = ckpt.restore(abstract_like(small), step=8)
    assert meta == {"s": 8} and np.array_equal(restored["w"], np.full(3, 8.0))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["8", "9"]


def test_saving_an_existing_step_never_overwrites_it(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(4, {"w": jnp.ones(2)}, {"v": "first"})
        assert not ckpt.save(4, {"w": jnp.zeros(2)}, {"v": "second"})
        restored, meta = ckpt.restore({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    assert meta == {"v": "first"} and np.array_equal(restored["w"], np.ones(2))


def test_meta_must_be_json(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(TypeError, match="step 2.*meta is not JSON"):
            ckpt.save(2, {"w": jnp.ones(2)}, {"bad": object()})
        assert ckpt.latest_step() is None


def test_missing_and_corrupted_checkpoints_name_the_path(tmp_path):
    target = {"w": jax.ShapeDtypeStruct((64,), jnp.float32)}
    with Checkpointer(tmp_path / "empty") as ckpt:
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "empty")):
            ckpt.restore(target)
    with Checkpointer(tmp_path / "c") as ckpt:
        ckpt.save(1, {"w": jnp.arange(64.0)}, {})
        ckpt.save(2, {"w": jnp.arange(64.0)}, {})
        with pytest.raises(FileNotFoundError, match=str(tmp_path / "c" / "5")):
            ckpt.restore(target, step=5)
        # Garble every data file of step 2: the error must say which checkpoint is bad.
        data = [p for p in (tmp_path / "c" / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
        assert data
        for p in data:
            p.write_bytes(b"\x00garbage" * 40)
        with pytest.raises(ValueError, match=str(tmp_path / "c" / "2")):
            ckpt.restore(target, step=2)
        # Step 2 loses its state item entirely: still an error naming the path.
        import shutil
        shutil.rmtree(tmp_path / "c" / "2" / "state")
        with pytest.raises(ValueError, match=str(tmp_path / "c" / "2")):
            ckpt.restore(target, step=2)
        # Step 1 is unaffected.
        restored, _ = ckpt.restore(target, step=1)
        assert np.array_equal(restored["w"], np.arange(64.0))


def test_key_kind_mismatch_is_an_error(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"key": jax.random.key(0)}, {})
        with pytest.raises(ValueError, match="PRNG key"):
            ckpt.restore({"key": jax.ShapeDtypeStruct((2,), jnp.uint32)})


# The child saves step 1, then starts saving a much bigger step 2 and SIGKILLs itself from inside
# Orbax's write path: deterministic, no timing. "array" kills right after the first array is
# handed to tensorstore (mid-write); "commit" kills just before the tmp dir is renamed (every byte
# written, only the commit missing: the most complete a half-written checkpoint can be).
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp
    from grpo_jax.checkpoint import Checkpointer
    from orbax.checkpoint._src.serialization import serialization
    from orbax.checkpoint._src.path import atomicity

    directory, where = sys.argv[1], sys.argv[2]
    ckpt = Checkpointer(directory)
    ckpt.save(1, {"w": jnp.arange(1000, dtype=jnp.float32), "big": jnp.zeros((512, 512)),
                  "key": jax.random.key(1)}, {"step": 1})
    ckpt.wait()
    print("SAVED 1", flush=True)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "array":
        original = serialization.async_serialize_from_host
        async def write_then_die(*args, **kwargs):
            await original(*args, **kwargs)
            die()
        serialization.async_serialize_from_host = write_then_die
    else:
        async def finalize_dies(self, *args, **kwargs):
            die()
        atomicity.AtomicRenameTemporaryPath.finalize = finalize_dies
    ckpt.save(2, {"w": -jnp.arange(1000, dtype=jnp.float32), "big": jnp.ones((512, 512)),
                  "key": jax.random.key(2)}, {"step": 2})
    ckpt.wait()
    print("SURVIVED", flush=True)
""")


@pytest.mark.parametrize("where", ["array", "commit"])
def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path, where):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    directory = tmp_path / "ckpt"
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(script), str(directory), where], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "SAVED 1" in proc.stdout and "SURVIVED" not in proc.stdout
    # The child really died mid-save: step 2 exists only as an uncommitted tmp dir.
    leftovers = [p.name for p in directory.iterdir() if p.name.startswith("2")]
    assert leftovers and all(".orbax-checkpoint-tmp" in n for n in leftovers), leftovers

    target = {"w": jax.ShapeDtypeStruct((1000,), jnp.float32),
              "big": jax.ShapeDtypeStruct((512, 512), jnp.float32),
              "key": jax.ShapeDtypeStruct((), jax.random.key(0).dtype)}
    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1
        assert ckpt.all_steps() == [1]
        restored, meta = ckpt.restore(target)
        assert meta == {"step": 1}
        assert np.array_equal(restored["w"], np.arange(1000, dtype=np.float32))
        assert np.array_equal(restored["big"], np.zeros((512, 512), np.float32))
        assert np.array_equal(jax.random.key_data(restored["key"]), jax.random.key_data(jax.random.key(1)))
        # The half-written dir is cleaned up and step 2 can be saved again by the resumed run.
        assert not [p for p in directory.iterdir() if ".orbax-checkpoint-tmp" in p.name]
        assert ckpt.save(2, {"w": jnp.ones(1000), "big": jnp.ones((512, 512)), "key": jax.random.key(2)}, {"step": 2})
        assert ckpt.latest_step() == 2


def test_leftover_tmp_dirs_are_gone_once_the_checkpointer_exists(tmp_path, monkeypatch):
    """A killed run's `<step>.orbax-checkpoint-tmp*` dir is removed before the Checkpointer is returned,
    not later by Orbax's background thread (made slow here so that the race always shows)."""
    import time

    from orbax.checkpoint._src.path import temporary_paths

    original = temporary_paths.cleanup_temporary_paths

    def slow_cleanup(*args, **kwargs):
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(temporary_paths, "cleanup_temporary_paths", slow_cleanup)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, {"w": jnp.arange(4.0)}, {"step": 1})
    (tmp_path / "2.orbax-checkpoint-tmp-1234").mkdir()
    with Checkpointer(tmp_path) as ckpt:
        assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
        assert ckpt.latest_step() == 1


class _StateBefore(NamedTuple):  # train_step.TrainState as it was before its optional `entropy` field
    step: jax.Array
    params: Any
    opt_state: Any


def test_a_state_saved_before_an_optional_field_restores_and_the_reverse(tmp_path):
    """TrainState gained `entropy` (grpo.adaptive_entropy's controller, None otherwise). A None field is
    a key path of its own to Orbax, so before `checkpoint._stored_layout` a run saved earlier refused
    to resume ("tree structures do not match: train.entropy"). Both directions, and the field set."""
    from grpo_jax import train_step as ts

    params = {"w": jnp.arange(6.0).reshape(2, 3)}
    opt = optax.adam(1e-3)
    old = {"train": _StateBefore(jnp.int32(7), params, opt.init(params))}
    with Checkpointer(tmp_path / "old") as ckpt:
        ckpt.save(7, old, {"step": 7})
        state, _ = ckpt.restore({"train": abstract_like(ts.TrainState(jnp.int32(0), params, opt.init(params)))})
    assert isinstance(state["train"], ts.TrainState) and state["train"].entropy is None
    assert int(state["train"].step) == 7
    np.testing.assert_array_equal(state["train"].params["w"], params["w"])

    new = {"train": ts.TrainState(jnp.int32(8), params, opt.init(params))}
    with Checkpointer(tmp_path / "new") as ckpt:
        ckpt.save(8, new, {"step": 8})
        back, _ = ckpt.restore({"train": abstract_like(old["train"])})  # an older checkout reads it too
    assert isinstance(back["train"], _StateBefore) and int(back["train"].step) == 8

    with_controller = {"train": ts.TrainState(jnp.int32(9), params, opt.init(params),
                                              ts.init_entropy_controller(0.25))}
    with Checkpointer(tmp_path / "controller") as ckpt:
        ckpt.save(9, with_controller, {"step": 9})
        state, _ = ckpt.restore(abstract_like(with_controller))
    assert float(state["train"].entropy["coef"]) == 0.25 and np.isinf(float(state["train"].entropy["last"]))
