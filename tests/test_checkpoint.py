"""Checkpoints: what is saved, resume (also after SIGKILL), refused restores, damage, NaN stops."""

import glob
import json
import logging
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import tiny
from prefix_jax import checkpoint, errors, loop, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = {  # The copy task on a 2-layer model: seconds per run.
    "data.name": "copy", "data.num_train": 256, "data.num_dev": 32, "model.max_len": 64,
    "train.num_steps": 12, "train.log_every": 1, "train.eval_every": 4,
    "checkpoint.every": 4, "checkpoint.async_save": False,
}


def _config(**overrides):
    config = tiny.get_config()
    for path, value in {**FAST, **overrides}.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


def _losses(workdir) -> dict:
    """step -> train loss from metrics.jsonl, which must hold each step once."""
    losses = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "train/loss" in record:
                assert record["step"] not in losses, f"step {record['step']} logged twice"
                losses[record["step"]] = record["train/loss"]
    return losses


def _stored_arrays(item_dir) -> dict:
    """keystr path -> shape of every array Orbax actually wrote (no target tree)."""
    tree = ocp.StandardCheckpointer().restore(os.path.abspath(item_dir))
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("mode, kind", [("prefix", "kv"), ("full", "none")])
def test_checkpoint_holds_only_what_trains(tmp_path, mode, kind):
    config = _config(**{"train.mode": mode, "prefix.kind": kind, "train.num_steps": 4})
    loop.train_and_evaluate(config, str(tmp_path))
    stored = _stored_arrays(tmp_path / "checkpoints" / "4" / "state")
    weights = [path for path in stored if path.startswith("['trainable']")]
    if mode == "prefix":
        assert weights == ["['trainable']['prefix']['key']", "['trainable']['prefix']['value']"]
        assert not any("['base']" in path for path in stored), "frozen weights or their moments were written"
        prefix_size = 2 * np.prod(stored["['trainable']['prefix']['key']"])
        arrays = sum(int(np.prod(shape)) for shape in stored.values())
        assert arrays == 3 * prefix_size + 2 + 2 + 1  # params, mu, nu; counts; rng; step
    else:
        assert "['trainable']['base']['layers_1']['mlp']['fc']['kernel']" in weights
        assert len(weights) == len(jax.tree.leaves(train.create(config)[1].params["base"]))


def test_resume_continues_the_same_loss_curve(tmp_path):
    config = _config()
    loop.train_and_evaluate(config, str(tmp_path / "straight"))
    short = _config(**{"train.num_steps": 6})
    loop.train_and_evaluate(short, str(tmp_path / "resumed"))  # Checkpoint at 4, then stops at 6.
    loop.train_and_evaluate(config, str(tmp_path / "resumed"))  # Resumes from 6.
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")  # Bitwise on CPU.


def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path):
    flags = [
        "--config=experiments/tiny.py",
        *[f"--config.{k}={v}" for k, v in {**FAST, "train.num_steps": 40, "checkpoint.every": 5,
                                            "checkpoint.async_save": True}.items()],
    ]
    logs = []

    def run(workdir):
        log = open(tmp_path / f"log{len(logs)}.txt", "w+")  # A file: a pipe would fill and block.
        logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", "prefix_jax.main", *flags, f"--workdir={workdir}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log,
        )

    straight = run(tmp_path / "straight")
    killed_dir = tmp_path / "killed"
    victim = run(killed_dir)
    deadline = time.time() + 300
    while time.time() < deadline:  # Kill once it is past a checkpoint, mid-way.
        if os.path.exists(killed_dir / "metrics.jsonl") and max(_losses(killed_dir), default=0) >= 17:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert max(_losses(killed_dir)) < 40, "the run finished before it could be killed"
    rerun = run(killed_dir)
    for process, log in ((rerun, logs[2]), (straight, logs[0])):
        code = process.wait(timeout=300)
        log.seek(0)
        assert code == 0, log.read()[-3000:]
    logs[2].seek(0)
    assert "Resuming from step" in logs[2].read()
    assert _losses(killed_dir) == _losses(tmp_path / "straight")


@pytest.mark.parametrize(
    "change, what",
    [
        ({"train.seed": 1}, "frozen_weights_sha256"),
        ({"prefix.length": 5}, "prefix_spec"),
        ({"model.num_heads": 2}, "config"),
        ({"prefix.kind": "prompt"}, "prefix_spec"),
    ],
)
def test_restoring_for_another_setup_is_refused(tmp_path, change, what):
    loop.train_and_evaluate(_config(**{"train.num_steps": 4}), str(tmp_path))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=what):
        loop.train_and_evaluate(_config(**{"train.num_steps": 8, **change}), str(tmp_path))
    with pytest.raises(checkpoint.CheckpointMismatchError, match=what):
        loop.evaluate(_config(**change), str(tmp_path))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    loop.train_and_evaluate(_config(**{"train.num_steps": 4}), str(tmp_path))
    good = loop.evaluate(_config(), str(tmp_path))

    def blowing_up(exp):  # Parameters turn NaN at step 5, so step 6's loss is NaN.
        train_fn, eval_fn = train.make_step_fns(exp)

        def step(state, batch, rng):
            state, metrics = train_fn(state, batch, rng)
            if int(state.step) >= 5:
                state = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
            return state, {**metrics, "loss": metrics["loss"] * (np.nan if int(state.step) >= 6 else 1.0)}

        return step, eval_fn

    monkeypatch.setattr(loop, "make_step_fns", blowing_up)
    with pytest.raises(FloatingPointError, match=r"at step 6; stopping. The newest checkpoint that verifies is step 4"):
        loop.train_and_evaluate(_config(), str(tmp_path))
    manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"))
    assert manager.latest_step() == 4
    assert loop.evaluate(_config(), str(tmp_path)) == good


def test_eval_scores_the_best_checkpoint_and_tensorboard_is_written(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        summary = loop.train_and_evaluate(_config(), str(tmp_path))
    assert "diverged" not in caplog.text
    result = loop.evaluate(_config(), str(tmp_path))
    assert result["dev_loss"] == pytest.approx(summary["best_dev_loss"], rel=1e-6)
    assert summary["best_dev_loss"] < summary["dev_loss_before"]
    events = os.listdir(tmp_path / "tensorboard")
    assert any(name.startswith("events.out.tfevents") for name in events)


def test_a_run_whose_dev_loss_rose_is_called_diverged(tmp_path, caplog):
    """Full fine-tuning at lr 1 without warmup: a finished run, and a warning that says what to change."""
    config = _config(**{"train.mode": "full", "prefix.kind": "none", "train.lr": 1.0, "train.warmup_steps": 0})
    with caplog.at_level(logging.WARNING):
        summary = loop.train_and_evaluate(config, str(tmp_path))
    assert summary["dev_loss_after"] > summary["dev_loss_before"]
    assert re.search(r"Training diverged: dev loss rose from \d+\.\d{4} to \d+\.\d{4}; try a lower train.lr",
                     caplog.text)


def _tensorboard_scalars(workdir) -> dict:
    """{(tag, step): [values]} as TensorBoard shows them: event files in order, each
    SessionLog.START at step p hiding the earlier files' events from step p on (purge_step)."""
    from tensorboardX.proto import event_pb2

    shown = {}
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))):
        data, offset = open(path, "rb").read(), 0
        while offset < len(data):  # TFRecord: length, its CRC, the record, its CRC.
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                shown = {key: values for key, values in shown.items() if key[1] < event.step}
            for value in event.summary.value:
                shown.setdefault((value.tag, event.step), []).append(value.simple_value)
    return shown


def test_each_step_is_logged_once_after_resumes(tmp_path):
    loop.train_and_evaluate(_config(**{"train.num_steps": 6}), str(tmp_path))  # Checkpoint at 4, stop at 6.
    # As if killed after step 6 was logged but before its checkpoint: resume from 4 relogs 5 and 6.
    shutil.rmtree(tmp_path / "checkpoints" / "6")
    loop.train_and_evaluate(_config(**{"train.num_steps": 6}), str(tmp_path))
    loop.train_and_evaluate(_config(**{"train.num_steps": 8}), str(tmp_path))
    assert sorted(_losses(tmp_path)) == list(range(1, 9))
    scalars = _tensorboard_scalars(tmp_path)
    assert all(len(values) == 1 for values in scalars.values()), scalars
    assert sorted(step for tag, step in scalars if tag == "train/loss") == list(range(1, 9))


def _flip_a_bit(path) -> bytes:
    data = open(path, "rb").read()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(flipped))
    return data


def test_a_flipped_bit_in_any_checkpoint_file_is_detected(tmp_path):
    config = _config(**{"train.num_steps": 4})
    loop.train_and_evaluate(config, str(tmp_path))
    run = loop.setup(config, str(tmp_path))
    target = loop._saveable(run.state, run.exp, jax.random.key(config.train.seed + 1))
    step_dir = tmp_path / "checkpoints" / "4"
    files = sorted(p for p in glob.glob(f"{step_dir}/**", recursive=True) if os.path.getsize(p) if os.path.isfile(p))
    assert len(files) > 10 and any(os.path.basename(p) == checkpoint.SEAL for p in files)
    for path in files:
        original = _flip_a_bit(path)
        named = "" if path.endswith(checkpoint.SEAL) else os.path.relpath(path, step_dir)  # A flipped seal names
        with pytest.raises(checkpoint.CheckpointDamagedError, match=rf"{step_dir}: .*{named}"):  # another file.
            run.checkpointer.restore_latest(target, run.fingerprint)
        os.rename(tmp_path / "damaged" / "4", step_dir)  # Set aside, bytes kept: put it back, repaired.
        open(path, "wb").write(original)
        run.checkpointer.latest.reload()
    assert int(run.checkpointer.restore_latest(target, run.fingerprint)[0]["step"]) == 4
    run.checkpointer.close()


def test_a_damaged_checkpoint_falls_back_to_the_newest_that_verifies(tmp_path, caplog):
    loop.train_and_evaluate(_config(), str(tmp_path / "straight"))
    damaged = tmp_path / "damaged_run"
    shutil.copytree(tmp_path / "straight", damaged)  # Checkpoints 4, 8 and 12.
    _flip_a_bit(max(glob.glob(f"{damaged}/checkpoints/12/state/**/d/*", recursive=True), key=os.path.getsize))
    with caplog.at_level(logging.WARNING):
        loop.train_and_evaluate(_config(), str(damaged))  # Rerunning the finished run redoes steps 9 to 12.
    assert re.search(r"checkpoints/12: 1 of \d+ files differ from what was saved", caplog.text)
    assert "Resuming from step 8, the newest checkpoint that verifies." in caplog.text
    assert (damaged / "damaged" / "12").is_dir()
    assert _losses(damaged) == _losses(tmp_path / "straight")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train.batch_size": 8}, "train.batch_size is 8 here but 16 in the checkpoint's run"),
        ({"train.lr": 1e-3}, "train.lr is 0.001 here but 0.005 in the checkpoint's run"),
        ({"data.num_train": 128}, "data.num_train is 128 here but 256 in the checkpoint's run"),
        ({"train.num_steps": 3}, "train.num_steps is 3 but the checkpoint at step 4 .* is already past it"),
    ],
)
def test_resuming_another_run_is_refused_and_leaves_the_workdir_as_it_was(tmp_path, change, message):
    loop.train_and_evaluate(_config(**{"train.num_steps": 4}), str(tmp_path))
    config_json = (tmp_path / "config.json").read_text()
    with pytest.raises(errors.UserError, match=message) as refused:
        loop.train_and_evaluate(_config(**{"train.num_steps": 4, **change}), str(tmp_path))
    assert "\n" not in str(refused.value)
    assert (tmp_path / "config.json").read_text() == config_json


def test_extending_a_finished_run_says_so(tmp_path, caplog):
    loop.train_and_evaluate(_config(**{"train.num_steps": 4}), str(tmp_path))
    with caplog.at_level(logging.WARNING):
        summary = loop.train_and_evaluate(_config(**{"train.num_steps": 6}), str(tmp_path))
    assert summary["steps"] == 6
    assert "train.num_steps changed from 4 to 6: extending the run" in caplog.text
