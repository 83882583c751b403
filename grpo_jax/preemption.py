"""Preemption: SIGTERM ends a run at a step boundary with a checkpoint, never in the middle of one.

A preemptible TPU / GCE VM, Kubernetes and SLURM (before a time limit) send SIGTERM and, after a
grace period, SIGKILL. The trainer and the sweep program run their loop inside

    with preemption.Guard() as guard:
        for step in ...:
            ... one step ...
            if guard.stop(step):     # every process answers the same at the same step
                save a checkpoint of this step; exit 0

The handler only records the signal, so the current step finishes (its update, its metrics) and the
loop saves and returns. `stop` is an agreement: in a multi-process run every process contributes
whether it has seen SIGTERM, through one all-gather per step (`multihost_utils.process_allgather`), so
all processes save the same step even when the signal reaches them steps apart (JAX's own
`reached_preemption_sync_point` listens through a C++ SIGTERM handler that this Python one replaces;
the all-gather is the same agreement, in the open). A second SIGTERM while stopping changes nothing:
the save in progress goes on (Orbax writes a step to a temporary directory and renames it when
complete, so the previous checkpoint is intact whatever happens), and the process still exits 0.
"""
from __future__ import annotations

import signal
import sys
import threading

import jax
import numpy as np


class Guard:
    """Records SIGTERM while active (the previous handler comes back on exit); `stop(step)` says
    whether this step is the one to save and stop at."""

    def __init__(self, *, log=None, forward=None):
        self.received = 0  # SIGTERMs seen
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._forward = forward  # () -> None, called on each SIGTERM (e.g. pass it on to a child process)
        self._previous = None

    def __enter__(self) -> Guard:
        if threading.current_thread() is threading.main_thread():  # signals go to the main thread only
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        self.received += 1
        if self._forward is not None:
            self._forward()
        if self.received == 1:
            self._log("SIGTERM: finishing the current step, then saving a checkpoint and exiting")
        else:
            self._log("SIGTERM again: already stopping; the checkpoint in progress is kept")

    def stop(self, step: int) -> bool:
        """True on every process when any process has seen SIGTERM (a collective in a multi-process
        run: call it at every step, on every process)."""
        if jax.process_count() == 1:
            return self.received > 0
        from jax.experimental import multihost_utils
        seen = multihost_utils.process_allgather(np.array([self.received > 0], np.int32))
        return bool(np.any(seen))


def message(step: int, where) -> str:
    return (f"preempted: stopped after step {step} with a checkpoint in {where}; run the same command "
            f"to resume")
