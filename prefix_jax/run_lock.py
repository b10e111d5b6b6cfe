"""One training run per workdir.

Two runs in one workdir interleave metrics.jsonl and overwrite each other's
checkpoints. `hold(workdir)` takes an exclusive `fcntl.flock` on `<workdir>/run.lock`
and writes the holder's host and pid into it. The kernel drops a flock when its process
dies, however it dies, so a lock left by a killed run is free to take: the file still
names the dead holder (a clean exit empties it), and the new run says it took over.
Only process 0 of a multi-host run locks; the others share its workdir by design.
"""

import contextlib
import fcntl
import os
import socket
import time

import jax
from absl import logging

from prefix_jax import errors

FILE = "run.lock"


class WorkdirLockedError(errors.UserError):
    """Another live run holds the workdir."""


@contextlib.contextmanager
def hold(workdir: str):
    """Holds `<workdir>/run.lock` for the body; raises WorkdirLockedError if a live run has it."""
    if jax.process_index() != 0:
        yield
        return
    path = os.path.join(workdir, FILE)
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise WorkdirLockedError(
                f"Another run ({f.read().strip() or 'holder unknown'}) is training in {workdir}; "
                f"wait for it to finish, stop it, or use another --workdir."
            ) from None
        f.seek(0)
        if previous := f.read().strip():
            logging.warning("Took over %s from a run that ended without releasing it (%s).", path, previous)
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()  # A clean exit leaves no holder behind.
            f.flush()
            fcntl.flock(f, fcntl.LOCK_UN)
