"""Preemption (a real SIGTERM to a training process) and the one-run-per-workdir lock."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest

from prefix_jax import loop, run_lock
from test_checkpoint import FAST, ROOT, _config, _losses

FLAGS = [
    "--config=experiments/tiny.py",
    *[f"--config.{k}={v}" for k, v in {**FAST, "train.num_steps": 30, "checkpoint.every": 10,
                                        "checkpoint.async_save": True}.items()],
]


def _start(workdir, log_path):
    log = open(log_path, "w+")  # A file: a pipe would fill and block.
    process = subprocess.Popen([sys.executable, "-m", "prefix_jax.main", *FLAGS, f"--workdir={workdir}"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
    return process, log


def _finish(process, log) -> str:
    code = process.wait(timeout=300)
    log.seek(0)
    text = log.read()
    assert code == 0, text[-3000:]
    return text


def _wait_for(condition, timeout=300):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_saves_the_current_step_and_a_rerun_matches_an_uninterrupted_run(tmp_path):
    straight = _start(tmp_path / "straight", tmp_path / "straight.txt")
    workdir = tmp_path / "preempted"
    victim, log = _start(workdir, tmp_path / "preempted.txt")
    # Between checkpoints (every 10): without a save on SIGTERM, steps since 10 would be lost.
    _wait_for(lambda: os.path.exists(workdir / "metrics.jsonl") and max(_losses(workdir), default=0) >= 13)
    victim.send_signal(signal.SIGTERM)
    code = victim.wait(timeout=300)
    log.seek(0)
    stderr = log.read()
    assert code == 128 + signal.SIGTERM, stderr[-3000:]
    logged = max(_losses(workdir))
    assert logged < 30, "the run finished before the signal"
    last_line = stderr.strip().splitlines()[-1]
    assert f"Stopped by SIGTERM after step {logged}, saved in {workdir}/checkpoints/{logged}; rerun" in last_line
    assert (workdir / "checkpoints" / str(logged) / "files.sha256").exists()  # Committed and sealed.
    assert "Traceback" not in stderr
    rerun_log = _finish(*_start(workdir, tmp_path / "rerun.txt"))
    assert f"Resuming from step {logged} " in rerun_log
    _finish(*straight)
    assert _losses(workdir) == _losses(tmp_path / "straight")


def test_one_run_per_workdir_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from prefix_jax import run_lock\n"
         "with run_lock.hold(sys.argv[1]):\n    print('held', flush=True); time.sleep(300)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(run_lock.WorkdirLockedError, match=rf"Another run \(pid {holder.pid} on host .*\) is "
                                                              rf"training in {tmp_path}; wait for it"):
            loop.train_and_evaluate(_config(**{"train.num_steps": 2}), str(tmp_path))
        assert not (tmp_path / "metrics.jsonl").exists()  # Refused before any work.
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level(logging.WARNING):
        summary = loop.train_and_evaluate(_config(**{"train.num_steps": 2}), str(tmp_path))
    assert summary["steps"] == 2
    assert f"from a run that ended without releasing it (pid {holder.pid} on host" in caplog.text
    assert (tmp_path / run_lock.FILE).read_text() == ""  # A clean exit names no holder.
