"""Preemption through the command line: SIGTERM to `python -m grpo_jax.train` mid-run finishes the
step, saves it, exits 0 naming the step; a second SIGTERM right after changes nothing (both
checkpoints restore); the next launch resumes exactly (the metrics equal an uninterrupted run's).
The 2-process case is in tests/test_distributed.py; the guard's agreement and the sweep's below."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from grpo_jax import checkpoint as ckpt_lib
from grpo_jax import metrics as metrics_lib
from grpo_jax import preemption, train

from test_train import QUICKSTART, REPO, TIMING, TINY

# Long enough that the signal lands mid-run (each tiny step takes a fraction of a second), with the
# schedule's horizon fixed so that a shorter resume or reference keeps the same learning rates.
LONG = [o for o in TINY if not o.startswith(("train.steps=", "train.eval_every=", "train.checkpoint_every=",
                                             "train.samples_every="))] + [
    "train.steps=400", "optim.schedule_steps=400", "train.eval_every=0", "train.checkpoint_every=0",
    "train.samples_every=0"]


def _argv(workdir, *extra):
    return ["--config", QUICKSTART, "--workdir", str(workdir), *[f"--config.{o}" for o in LONG], *extra]


def _rows(workdir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in metrics_lib.read_metrics(workdir, kind="all")]


@pytest.mark.slow
def test_sigterm_saves_the_step_exits_0_and_the_resume_is_exact(tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "train.log"
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-m", "grpo_jax.train", *_argv(workdir)], env=env,
                                 stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        try:
            while not ((workdir / "metrics.jsonl").exists()
                       and any(r.get("step", 0) >= 2 for r in metrics_lib.read_metrics(workdir))):
                assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            child.send_signal(signal.SIGTERM)
            while "SIGTERM: finishing" not in log.read_text():  # the handler ran: the step is finishing
                assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.02)
            child.send_signal(signal.SIGTERM)  # a second one while it finishes the step and saves
            code = child.wait(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    text = log.read_text()
    assert code == 0, text[-3000:]
    stopped = re.search(r"preempted: stopped after step (\d+) with a checkpoint", text)
    assert stopped and "SIGTERM again" in text, text[-3000:]
    step = int(stopped.group(1))
    assert 2 <= step < 400
    with ckpt_lib.Checkpointer(workdir / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [0, step]  # checkpoint_every=0: the start and the preempted step only
    assert max(r["step"] for r in metrics_lib.read_metrics(workdir)) == step

    # The next launch resumes from it; the run equals one that was never interrupted.
    end = step + 2
    assert train.main(_argv(workdir, f"--config.train.steps={end}")) == 0
    straight = tmp_path / "straight"
    train.run(_argv(straight, f"--config.train.steps={end}"))
    got, want = _rows(workdir), _rows(straight)
    assert [r["step"] for r in got] == [r["step"] for r in want]  # SFT rows (step 0) included
    assert sorted({r["step"] for r in want}) == list(range(end + 1))
    assert any(r.get("advantage_abs_mean", 0) > 0 for r in want[1:]), "the update should see real advantages"
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key, value in w.items():
            assert g[key] == (pytest.approx(value, rel=1e-5, abs=1e-6) if isinstance(value, float) else value), \
                (w["step"], key)


def test_the_guard_records_sigterm_and_restores_the_previous_handler():
    before = signal.getsignal(signal.SIGTERM)
    logs, forwarded = [], []
    with preemption.Guard(log=logs.append, forward=lambda: forwarded.append(1)) as guard:
        assert not guard.stop(0)
        os.kill(os.getpid(), signal.SIGTERM)  # the process is not killed: the handler records it
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.stop(1) and guard.received == 2 and forwarded == [1, 1]
    assert signal.getsignal(signal.SIGTERM) is before
    assert "finishing the current step" in logs[0] and "already stopping" in logs[1]
    np.testing.assert_equal(preemption.message(7, "w/checkpoints").startswith("preempted: stopped after step 7"), True)
