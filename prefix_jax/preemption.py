"""SIGTERM and SIGINT as a request to stop after the current step.

Preemption on TPU pods, SLURM and Kubernetes arrives as SIGTERM, with a grace period
before SIGKILL. While `StopSignals` is active, those signals only set a flag; the
training loop reads it once per step (`requested`), saves that step's checkpoint
synchronously and ends with `Preempted`. Every host of a multi-host run must stop at
the same step to save together, so the flag is agreed with a max over processes.
A second signal while the first is being handled falls back to the default action.
"""

import signal
import threading
from typing import Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped on a signal after saving its last step; rerunning resumes it."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """Context manager: SIGTERM/SIGINT set a flag instead of ending the process."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # Asked twice: stop now, as without this handler.
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)
        self.signum = signum
        logging.warning("Received %s: stopping after the current step, which is saved first.",
                        signal.Signals(signum).name)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only.
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def requested(self) -> Optional[int]:
        """The signal to stop on, agreed by every process (None: go on)."""
        signum = self.signum or 0
        if jax.process_count() > 1:
            signum = int(np.max(multihost_utils.process_allgather(np.int32(signum))))
        return signum or None
