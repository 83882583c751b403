"""Orbax save / restore / resume of the train state and a small JSON `meta` dict.

One checkpoint per step under `directory/<step>/` with three items:
  state  the train-state pytree (params, optax state, step, PRNG keys), Orbax StandardSave:
         sharded arrays are written shard by shard and can be restored onto any other sharding;
  meta   the caller's JSON-able dict (data position, config hash, ...), Orbax JsonSave;
  prng_impls  {tree path: PRNG impl name} for every new-style typed key in `state` (see below).

Atomicity comes from Orbax: a save is written into `<step>.orbax-checkpoint-tmp*` and renamed to
`<step>` only once every item is complete, so a process killed mid-save leaves the previous
checkpoints untouched and `latest_step()` never sees the half-written one (its tmp directory is
removed the next time a Checkpointer opens the directory).

Typed keys (`jax.random.key`) are saved as their raw `key_data` (uint32) and re-wrapped on restore
with the impl recorded at save time, so the on-disk format does not depend on whether a given Orbax
version serialises key dtypes. Legacy `jax.random.PRNGKey` keys are plain uint32 arrays already.

Always restore with an abstract target (`abstract_like(state)` of a freshly initialised state):
without one Orbax returns optax NamedTuples as plain lists and arrays on default devices.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


def _is_typed_key(x) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def abstract_like(state):
    """Pytree of `jax.ShapeDtypeStruct` (with `.sharding`) mirroring `state`, a restore target.

    jax.Array leaves (typed keys included) become ShapeDtypeStructs carrying their sharding, so
    `Checkpointer.restore` puts every array straight onto that sharding. NumPy arrays and Python
    scalars stay as they are: Orbax uses a concrete value as its own target and returns that type.
    """
    def leaf(x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        return x

    return jax.tree.map(leaf, state)


def _key_impls(tree) -> dict[str, str]:
    """{keystr(path): impl name} for every typed-key leaf of `tree` (concrete or abstract)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if _is_typed_key(x):
            if isinstance(x, jax.Array):
                impl = jax.random.key_impl(x)
            else:
                # ShapeDtypeStruct: key_impl wants an array, so ask it under tracing.
                found = []
                jax.eval_shape(lambda k: found.append(jax.random.key_impl(k)), x)
                impl = found[0]
            out[jax.tree_util.keystr(path)] = str(impl)
    return out


def _keys_to_data(state):
    """Typed keys -> uint32 key_data (same sharding, trailing impl dims replicated)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, state)


def _abstract_keys_to_data(abstract_state):
    def leaf(x):
        if not _is_typed_key(x):
            return x
        data = jax.eval_shape(jax.random.key_data, x)  # shape + impl dims, uint32
        # A NamedSharding's spec shorter than the rank leaves the trailing dims replicated, and a
        # single-device sharding fits any rank: the key's own sharding fits its data too.
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=getattr(x, "sharding", None))

    return jax.tree.map(leaf, abstract_state)


def _optional_unset(tree) -> bool:
    """A NamedTuple with an optional field (default None) left at None (TrainState.entropy without
    grpo.adaptive_entropy)."""
    defaults = getattr(type(tree), "_field_defaults", {})
    return any(defaults.get(f, 0) is None and getattr(tree, f) is None for f in tree._fields)


def _is_namedtuple(tree) -> bool:
    return isinstance(tree, tuple) and hasattr(tree, "_fields")


def _stored_layout(tree):
    """The tree as saved: a NamedTuple whose optional fields are None becomes a dict of its other
    fields. Orbax matches a restore target to the saved tree by key path, and a None leaf is a path of
    its own: without this a checkpoint saved before an optional field existed would not restore into
    the NamedTuple that has it (nor the reverse). As dicts, the layout of a state without the field is
    the layout it had before the field existed."""
    if _is_namedtuple(tree):
        if _optional_unset(tree):
            return {f: _stored_layout(v) for f, v in zip(tree._fields, tree) if v is not None}
        return type(tree)(*(_stored_layout(v) for v in tree))
    if isinstance(tree, dict):
        return {k: _stored_layout(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_stored_layout(v) for v in tree]
    return tree


def _target_layout(template, tree):
    """The inverse of `_stored_layout` for a restored tree: back into `template`'s NamedTuples."""
    if _is_namedtuple(template):
        if _optional_unset(template):
            return type(template)(*(None if t is None else _target_layout(t, tree[f])
                                    for f, t in zip(template._fields, template)))
        return type(template)(*(_target_layout(t, x) for t, x in zip(template, tree)))
    if isinstance(template, dict):
        return {k: _target_layout(v, tree[k]) for k, v in template.items()}
    if isinstance(template, list):
        return [_target_layout(t, x) for t, x in zip(template, tree)]
    return tree


class Checkpointer:
    """Step-numbered, atomic checkpoints of (state, meta) under `directory`.

    `max_to_keep` newest checkpoints are kept (None keeps all); `save(step, ...)` is a no-op unless
    `step` is a multiple of `save_interval_steps` (or `force=True`). With `async_save=True` the
    device-to-host copy happens inside `save` (so the caller may donate/overwrite `state` right
    after) and the disk write in the background; `wait()` blocks until it is committed.
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, save_interval_steps: int = 1,
                 async_save: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # The interval is applied in `save` instead: Orbax would also save whatever first step
            # it sees, and the trainer wants the plain rule "multiples of the interval".
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            # Removes `<step>.orbax-checkpoint-tmp*` left by a process killed mid-save.
            cleanup_tmp_directories=True,
            create=True,
        )
        self.save_interval_steps = int(save_interval_steps)
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        # Orbax removes the leftover tmp dirs in a background thread and awaits it only on the next
        # save: wait here, so a directory left by a killed run is clean once the Checkpointer exists
        # (a test that listed the directory right after a restore saw the tmp dir 1 run in ~3).
        await_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()

    def save(self, step: int, state, meta: dict[str, Any] | None = None, *, force: bool = False) -> bool:
        """Saves `state` and `meta` as checkpoint `step`; returns whether a save was started.

        Saving a step that already has a checkpoint is a no-op returning False: the existing one is
        never overwritten (the trainer's final save often repeats its last periodic one).
        """
        step = int(step)
        meta = {} if meta is None else meta
        try:
            json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise TypeError(f"checkpoint step {step} in {self.directory}: meta is not JSON-able: {e}") from e
        if step in self._manager.all_steps():
            return False
        if not force and step % self.save_interval_steps:
            return False
        state = _stored_layout(state)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_keys_to_data(state)),
            meta=ocp.args.JsonSave(meta),
            prng_impls=ocp.args.JsonSave(_key_impls(state)),
        )
        return bool(self._manager.save(step, args=args, force=force))

    def latest_step(self) -> int | None:
        """Newest committed step, or None when there is none (half-written saves are ignored)."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore(self, abstract_state, *, step: int | None = None):
        """Returns `(state, meta)` of checkpoint `step` (default: the latest).

        `abstract_state` is a pytree of ShapeDtypeStruct with `.sharding` (see `abstract_like`):
        arrays are read directly onto those shardings, whatever the sharding at save time.
        Missing or unreadable checkpoints raise an error naming the path.
        """
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        step = int(step)
        path = self.directory / str(step)
        if not path.is_dir():
            raise FileNotFoundError(
                f"checkpoint step {step} not found: {path} does not exist "
                f"(steps present: {self.all_steps()})")

        template, abstract_state = abstract_state, _stored_layout(abstract_state)
        want_keys = _key_impls(abstract_state)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(_abstract_keys_to_data(abstract_state)),
            meta=ocp.args.JsonRestore(),
            prng_impls=ocp.args.JsonRestore(),
        )
        try:
            restored = self._manager.restore(step, args=args)
        except Exception as e:  # Orbax/tensorstore raise many types; all mean "this dir is bad".
            raise ValueError(f"cannot restore checkpoint {path}: {type(e).__name__}: {e}") from e

        saved_keys = restored["prng_impls"] or {}
        if saved_keys != want_keys:
            raise ValueError(
                f"checkpoint {path}: PRNG key leaves differ between the checkpoint {saved_keys} and "
                f"the restore target {want_keys} (typed jax.random.key vs legacy PRNGKey?)")
        state = restored["state"]
        # Orbax returns the tree in the target's structure; re-wrap the typed keys.
        flat, treedef = jax.tree_util.tree_flatten_with_path(state)
        leaves = []
        for p, x in flat:
            impl = saved_keys.get(jax.tree_util.keystr(p))
            leaves.append(jax.random.wrap_key_data(x, impl=impl) if impl is not None else x)
        state = _target_layout(template, jax.tree_util.tree_unflatten(treedef, leaves))
        # Block here: a caller that dispatches sharded steps on un-materialised restored arrays
        # risks the CPU collective deadlock (ENVIRONMENT.md).
        jax.block_until_ready([x for x in jax.tree.leaves(state) if isinstance(x, jax.Array)])
        return state, dict(restored["meta"] or {})

    def restore_partial(self, abstract_subtree, *, step: int | None = None):
        """Only the leaves of `abstract_subtree` from checkpoint `step` (default: the latest): a nested
        dict of the saved tree's keys ending in ShapeDtypeStructs with `.sharding`, e.g.
        {"train": {"params": abstract_params}} reads the policy's weights and nothing else (no
        optimizer state, no reference: evaluation needs 4 bytes per parameter, not 16+). No PRNG-key
        leaves (they need `restore`)."""
        self.wait()
        step = self.latest_step() if step is None else int(step)
        if step is None:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        path = self.directory / str(step)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint step {step} not found: {path} does not exist "
                                    f"(steps present: {self.all_steps()})")
        restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract_subtree)
        try:
            restored = ocp.PyTreeCheckpointer().restore(
                path / "state", args=ocp.args.PyTreeRestore(item=abstract_subtree, restore_args=restore_args,
                                                            partial_restore=True))
        except Exception as e:  # Orbax/tensorstore raise many types; all mean "this dir is bad".
            raise ValueError(f"cannot restore from checkpoint {path}: {type(e).__name__}: {e}") from e
        jax.block_until_ready(jax.tree.leaves(restored))  # see `restore`: the CPU collective deadlock
        return restored

    def wait(self) -> None:
        """Blocks until any asynchronous save has been committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's threads."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
