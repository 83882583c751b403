"""Device memory held by the program at its peaks, counted as the live jax arrays on CPU: training
after SFT holds one copy of the weights (not the Setup's too), a resume restores onto abstract
targets (not beside a fresh state built only to be overwritten), and evaluate reads the policy's
weights alone from a checkpoint (not the optimizer state and the reference).

Bytes per parameter with f32 weights and compute (model.dtype=float32, so the reference is f32):
steady GRPO state = params 4 + Adam mu, nu 8 + reference 4 = 16. Before these fixes: 20 during
GRPO after SFT, 32 at a resume, 32 in evaluate (it restored the whole train state and reference).
"""
import gc

import jax

from grpo_jax import build, rollout, train
from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import config as cfg_lib

from test_train import QUICKSTART, TINY

# Wider than test_train's model so the weights dwarf every small array (keys, batches, tables).
SIZE = ["model.hidden_size=128", "model.intermediate_size=512", "model.head_dim=32", "model.num_heads=4",
        "model.num_kv_heads=2"]
ARGS = [o for o in TINY if not o.startswith(("sft.eval_every", "model."))] + SIZE + [
    "model.num_layers=2", "sft.steps=2", "sft.stop_accuracy=0", "train.steps=2", "train.eval_every=0",
    "train.checkpoint_every=1", "train.samples_every=0", "mesh.data=1", "mesh.fsdp=1", "grpo.beta=0.04"]


def live_bytes() -> int:
    """Bytes of the distinct device buffers alive. Counted per buffer, not per jax.Array: an array's
    shards (`addressable_shards[i].data`, which Orbax's save reads) are Arrays of their own over the
    same buffers."""
    gc.collect()  # arrays only a finished run's reference cycles still point to are not held
    buffers = {}
    for x in jax.live_arrays():
        for shard in x.addressable_shards:
            buffers[(shard.device.id, shard.data.unsafe_buffer_pointer())] = shard.data.nbytes
    return sum(buffers.values())


def test_weights_are_held_once_after_sft_at_resume_and_in_evaluate(tmp_path, monkeypatch):
    argv = ["--config", QUICKSTART, "--workdir", str(tmp_path)] + [f"--config.{o}" for o in ARGS]
    base = live_bytes()
    seen = {}

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            seen.setdefault(name, []).append(live_bytes() - base)
            return out
        return wrapped

    collect = rollout.collect

    def collect_spy(s, params, *args, **kwargs):  # counted at the step's start: the state at rest
        seen.setdefault("params", sum(x.size for x in jax.tree.leaves(params)))
        seen.setdefault("collect", []).append(live_bytes() - base)
        return collect(s, params, *args, **kwargs)

    monkeypatch.setattr(rollout, "collect", collect_spy)
    monkeypatch.setattr(ckpt_lib.Checkpointer, "restore", spy("restore", ckpt_lib.Checkpointer.restore))
    monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_partial",
                        spy("restore_partial", ckpt_lib.Checkpointer.restore_partial))
    train.run(argv, stop_after=1)  # SFT, then one GRPO step
    n = seen["params"]
    per_param = max(seen["collect"]) / n
    assert 15.9 < per_param < 17.0, per_param  # params + Adam + reference, nothing else
    seen.clear()
    train.run(argv)  # resumes at step 1
    assert max(seen["restore"]) / n < 17.0, seen  # the restored state and reference only
    seen.clear()
    config, workdir = cfg_lib.parse_command_line(argv)
    s = build.setup(config, workdir, for_eval=True)
    restored = max(seen.get("restore", []) + seen.get("restore_partial", []))
    assert s.step == 2 and restored / n < 4.5, seen  # the policy's weights alone
    del s
