"""Multi-process training: a 2-process `jax.distributed` run on localhost CPU (gloo collectives,
4 CPU devices per process, one 4x2 mesh over all 8) writes the same metrics as a 1-process run on
8 devices; SIGTERM reaching process 0 alone mid-run stops BOTH processes after the same step with a
checkpoint both wrote into one shared workdir (preemption.py's agreement), and the next launch
resumes from it exactly.

Each child process goes through the command-line entry point (`train.main` with
--coordinator_address / --num_processes / --process_id, which starts `jax.distributed`); the batches
are a pure function of the step, built identically on every process, and the rewards are scored on
process 0 alone and broadcast (the children's verifiers raise anywhere else), so the runs must agree
to float noise.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from grpo_jax import metrics as metrics_lib
from grpo_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.py")
# tests/test_train.py's TINY, shortened to 3 GRPO steps; checkpoints only at the start and the end, so
# the one the resume below restores is the preempted step's, and eval_every=1 so a straight 3-step run
# logs what the preempted run + resume do. 30 SFT steps give non-zero rewards (real advantages); the SFT
# validation check at step 15 (early-stop path) runs on both processes too.
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
    "model.head_dim=16", "model.intermediate_size=64", "sft.steps=30", "sft.batch_size=16",
    "sft.learning_rate=1e-2", "sft.warmup_steps=0", "train.steps=3", "train.prompts_per_step=4",
    "grpo.group_size=4", "task.eval_size=16", "train.eval_batch_size=16", "train.eval_every=1",
    "train.checkpoint_every=3", "optim.learning_rate=1e-3", "train.samples_every=1",
    "rewards.weights.format=1.0", "sft.eval_every=15", "sft.validation_size=16", "mesh.data=4", "mesh.fsdp=2",
]
TIMING = ("sample_seconds", "reward_seconds", "update_seconds", "step_seconds")
TIMEOUT_S = 300

_CHILD = textwrap.dedent("""
    import sys
    import jax
    from grpo_jax import train
    process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    # Only process 0 may score: on any other process every verifier raises (scores 0). If a process
    # other than 0 scored its own copy of the batch, its advantages would differ and the sharded
    # update would mix the two, so the metrics below would not match the one-process run.
    from grpo_jax import rewards
    def guarded(fn):
        def verifier(*args, **kwargs):
            if jax.process_index() != 0:
                raise RuntimeError("verifier called on process %d" % jax.process_index())
            return fn(*args, **kwargs)
        return verifier
    rewards.correctness, rewards.format_reward = guarded(rewards.correctness), guarded(rewards.format_reward)

    # A preemption notice reaching process 0 alone, during the second of 3 steps: SIGTERM to itself.
    import os, signal
    from grpo_jax import rollout
    collect = rollout.collect
    def collect_then_sigterm(s, params, step, key):
        out = collect(s, params, step, key)
        if step == 1 and jax.process_index() == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    rollout.collect = collect_then_sigterm

    # The command-line entry point, as `python -m grpo_jax.train` runs it: it starts jax.distributed
    # from the flags. Both processes stop after step 2 with a checkpoint, then resume to step 3.
    argv = ["--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id",
            str(process_id), "--workdir", workdir] + sys.argv[4:]
    assert train.main(argv) == 0
    assert (jax.process_count(), jax.local_device_count(), jax.device_count()) == (2, 4, 8)
    from grpo_jax import checkpoint
    with checkpoint.Checkpointer(workdir + "/checkpoints") as ckpt:
        assert ckpt.all_steps() == [0, 2], ckpt.all_steps()
    print("PREEMPTED AT 2", process_id, flush=True)
    assert train.main(argv) == 0
    print("CHILD DONE", process_id, flush=True)
    jax.distributed.shutdown()
""")


def _argv(workdir):
    return ["--config", QUICKSTART, "--workdir", str(workdir)] + [f"--config.{o}" for o in TINY]


def _rows(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_lib.read_metrics(workdir, kind="all")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, workdir):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    # Replace (not extend) the pytest process's XLA_FLAGS: 4 devices per process, and collectives
    # that fail in seconds rather than hang.
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join([
        "--xla_force_host_platform_device_count=4",
        "--xla_cpu_collective_call_warn_stuck_timeout_seconds=5",
        "--xla_cpu_collective_call_terminate_timeout_seconds=8"]))
    port = _free_port()
    args = [str(workdir), "--config", QUICKSTART] + [f"--config.{o}" for o in TINY]
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    procs = []
    for i in range(2):
        with open(logs[i], "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(script), str(i), str(port), *args],
                                          env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # One process failing leaves its peer blocked in a collective: stop both at the first failure.
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    report = "\n".join(f"--- process {i} (rc {p.returncode}) ---\n" + logs[i].read_text()[-4000:]
                       for i, p in enumerate(procs))
    assert time.monotonic() <= deadline, f"2-process run exceeded {TIMEOUT_S} s\n{report}"
    assert [p.returncode for p in procs] == [0, 0], report
    for i in range(2):
        assert f"PREEMPTED AT 2 {i}" in logs[i].read_text() and f"CHILD DONE {i}" in logs[i].read_text(), report
        assert "preempted: stopped after step 2" in logs[i].read_text(), report


@pytest.mark.slow
def test_two_process_run_matches_one_process(tmp_path):
    multi = tmp_path / "multi"
    _run_two_processes(tmp_path, multi)

    single = tmp_path / "single"
    train.run(_argv(single))  # straight through: evals every step, so the rows are those of 2 + resume

    got, want = _rows(multi), _rows(single)
    assert [(r["step"], sorted(r)) for r in got] == [(r["step"], sorted(r)) for r in want]
    assert any(r.get("advantage_abs_mean", 0) > 0 for r in want), "the update should see real advantages"
    for g, w in zip(got, want):
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, abs=1e-4), (w["step"], key)
            else:
                assert g[key] == value, (w["step"], key)
    # Process 0 alone wrote the metrics; both wrote their shards of one checkpoint per step.
    assert sorted(p.name for p in (multi / "checkpoints").iterdir() if p.name.isdigit()) == ["0", "2", "3"]
