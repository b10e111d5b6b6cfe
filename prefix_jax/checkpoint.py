"""Orbax checkpoints of what trains, stamped with what it was trained for and checksummed.

A checkpoint holds the trainable partition of the parameters (the prefix in
prefix mode, everything in full fine-tuning), the optimizer state (which exists
for trainable leaves only), the step and the RNG key; frozen base weights are
never written, they are reloaded from their source. Beside it, JSON metadata:

  fingerprint    the base model (config + SHA-256 of every frozen weight), the
                 prefix spec, the training mode and the trainable leaves' shapes;
  digests        SHA-256 of every saved array, taken from memory at save time;
  (the loop adds the run's data position and its data/optimisation settings).

Once Orbax has committed a checkpoint, `files.sha256` in its directory seals it: the
SHA-256 of every file in it. Restoring checks the seal, then the fingerprint (a
mismatch is refused with an error that names it: never a partial restore), then
recomputes every restored array's digest. A file whose bytes changed, a missing or
extra file, an array that differs from what was saved, or anything Orbax cannot read
makes the checkpoint *damaged*. Resuming then falls back to the newest older
checkpoint that verifies, saying so, and moves the damaged one to
`<workdir>/damaged/<step>` (its bytes kept, its step free to be saved again); the
best checkpoint has no older copy, so a damaged one is an error. Orbax writes each
checkpoint to a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint as the latest good one.

Layout under the workdir: `checkpoints/<step>/` (latest N) and `best/<step>/`
(lowest dev loss; parameters only).
"""

import hashlib
import json
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging
from flax import traverse_util

from prefix_jax import errors


class CheckpointMismatchError(errors.UserError):
    """The checkpoint was made for another base model, prefix or training mode."""


class CheckpointDamagedError(errors.UserError):
    """A checkpoint's bytes no longer match what was saved, or cannot be read."""


class MissingCheckpointError(errors.UserError, FileNotFoundError):
    """The workdir holds no checkpoint of the kind a command needs."""


def flat_paths(tree: Any) -> dict:
    """{"a/b/c": leaf}: the path names used in digests, metadata and weight files."""
    return {"/".join(map(str, path)): leaf for path, leaf in traverse_util.flatten_dict(tree).items()}


def _host_array(leaf) -> np.ndarray:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # Sharded across hosts.
        leaf = multihost_utils.process_allgather(leaf, tiled=True)
    return np.ascontiguousarray(np.asarray(leaf))


def weights_digest(params: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path, leaf in sorted(flat_paths(params).items()):
        array = _host_array(leaf)
        digest.update(f"{path}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def array_digests(tree: Any) -> dict:
    """{keystr path: SHA-256 of dtype, shape and bytes} for every array of any pytree
    (optimizer states included), so a mismatch names the damaged array."""
    digests = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        array = _host_array(leaf)
        digests[jax.tree_util.keystr(path)] = hashlib.sha256(
            f"{array.dtype}|{array.shape}|".encode() + array.tobytes()).hexdigest()
    return digests


def fingerprint(*, model_config, spec, mode: str, top_k: int, frozen: Any, trainable: Any) -> dict:
    """What a checkpoint must match to be restored into this run (JSON-able)."""
    return {
        "base_model": {"config": repr(model_config), "frozen_weights_sha256": weights_digest(frozen)},
        "prefix_spec": repr(spec),
        "mode": mode if mode != "top_k" else f"top_k={top_k}",
        "trainable_shapes": {path: list(np.shape(leaf)) for path, leaf in sorted(flat_paths(trainable).items())},
    }


def _differences(saved: Any, expected: Any, path: str) -> list[str]:
    """What differs between two fingerprints, leaf by leaf; of two long reprs such as
    "GPT2Config(..., max_len=128, ...)", only the fields that differ."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        return [difference for key in sorted(saved.keys() | expected.keys())
                for difference in _differences(saved.get(key), expected.get(key), f"{path}.{key}".lstrip("."))]
    if saved == expected:
        return []
    if isinstance(saved, str) and isinstance(expected, str) and len(saved) + len(expected) > 120:
        saved_parts, expected_parts = saved.split(", "), expected.split(", ")
        saved = ", ".join(part for part in saved_parts if part not in expected_parts)
        expected = ", ".join(part for part in expected_parts if part not in saved_parts)
    return [f"{path}: checkpoint has {saved!r}, this run has {expected!r}"]


def _check(saved: dict, expected: dict, where: str) -> None:
    problems = _differences(saved, expected, "")
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint in {where} was made for a different setup ({'; '.join(problems)}); "
            f"restore it with the same base model, prefix and mode, or use a new workdir."
        )


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _verify(restored: Any, digests: Optional[dict], where: str) -> None:
    if digests is None:  # Written before checkpoints carried digests.
        logging.warning("%s has no digests (an older checkpoint); its contents are not verified.", where)
        return
    _compare_digests(digests, array_digests(restored), where, "arrays")


def _compare_digests(saved: dict, actual: dict, where: str, what: str) -> None:
    """Raises CheckpointDamagedError naming the `what` (arrays, files) whose digests differ."""
    bad = sorted(key for key in saved.keys() | actual.keys() if saved.get(key) != actual.get(key))
    if bad:
        raise CheckpointDamagedError(
            f"{where}: {len(bad)} of {len(saved)} {what} differ from what was saved, or are missing or new "
            f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )


SEAL = "files.sha256"


def _file_digests(directory: str) -> dict:
    """{path relative to `directory`: SHA-256} of every file under it but the seal."""
    digests = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != SEAL:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                digests[relative] = digest.hexdigest()
    return digests


def _check_seal(directory: str, where: str) -> None:
    """Compares a committed checkpoint's files with its seal (unsealed ones: arrays are still verified)."""
    seal = os.path.join(directory, SEAL)
    if not os.path.exists(seal):
        logging.info("%s has no %s (killed between commit and seal, or older); its arrays are verified.", where, SEAL)
        return
    with open(seal) as f:
        try:
            expected = json.load(f)
        except json.JSONDecodeError as error:
            raise CheckpointDamagedError(f"{where}: its {SEAL} is not valid JSON ({error})") from error
    _compare_digests(expected, _file_digests(directory), where, "files")


class Checkpointer:
    """Latest-N checkpoints for resuming, plus the best one by dev loss."""

    def __init__(self, workdir: str, *, keep: int, async_save: bool):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.damaged = os.path.abspath(os.path.join(workdir, "damaged"))
        self._unsealed: list = []  # (manager, step) saved by this process, not yet sealed.
        # Distinct barrier names: both managers may save the same step on many hosts.
        barriers = lambda name: ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
            multiprocessing_options=barriers("latest"),
        )
        self.latest = ocp.CheckpointManager(self.directory, options=options)
        best_options = ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics["dev_loss"], best_mode="min",
            enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
            multiprocessing_options=barriers("best"),
        )
        self.best = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "best")), options=best_options)

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Saves `state` (trainable params, optimizer, step, rng) with `meta` (JSON) and its digests."""
        meta = {**meta, "digests": array_digests(state)}
        self._seal_committed(self.latest)
        self._unsealed.append((self.latest, step))
        self.latest.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def save_best(self, step: int, params: Any, meta: dict, dev_loss: float) -> None:
        meta = {**meta, "digests": array_digests(params)}
        self._seal_committed(self.best)
        self._unsealed.append((self.best, step))
        self.best.save(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
            metrics={"dev_loss": dev_loss},
        )

    def best_dev_loss(self) -> Optional[float]:
        step = self.best.best_step()
        if step is None:
            return None
        return self._restore_meta(self.best, step, f"{self.best.directory}/{step}")["dev_loss"]

    def _restore_meta(self, manager, step, where: str) -> dict:
        try:
            return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as error:  # Orbax and TensorStore raise many types; all mean unreadable.
            raise CheckpointDamagedError(f"{where}: its metadata cannot be read ({_first_line(error)})") from error

    def _restore(self, manager, step, item: str, target: Any, expected: dict):
        """(restored item, meta); CheckpointMismatchError for another setup, CheckpointDamagedError
        when the bytes do not verify."""
        where = f"{manager.directory}/{step}"
        _check_seal(os.path.join(manager.directory, str(step)), where)
        meta = self._restore_meta(manager, step, where)
        _check(meta["fingerprint"], expected, where)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}))
        except Exception as error:
            raise CheckpointDamagedError(f"{where}: Orbax cannot read it ({_first_line(error)})") from error
        _verify(restored[item], meta.get("digests"), where)
        return restored[item], meta

    def restore_latest(self, target: dict, expected: dict):
        """(state, meta) of the newest checkpoint that verifies, or None when there is none.

        Damaged newer checkpoints are moved to `damaged/` with a warning naming what is
        wrong; when every checkpoint is damaged, the error says so and a rerun starts afresh.
        """
        damaged = []
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                restored = self._restore(self.latest, step, "state", target, expected)
            except CheckpointDamagedError as error:
                damaged.append(f"{error}; moved to {self._set_aside(step, error)}")
                continue
            if damaged:
                logging.warning("Resuming from step %d, the newest checkpoint that verifies.", step)
            return restored
        if damaged:
            raise CheckpointDamagedError(
                f"No checkpoint verifies: {' | '.join(damaged)}. Rerun to train from step 0, "
                f"or copy an intact checkpoint back into {self.directory}."
            )
        return None

    def _set_aside(self, step: int, error: CheckpointDamagedError) -> str:
        """Moves a damaged checkpoint out of the manager's sight, keeping its bytes."""
        destination = os.path.join(self.damaged, str(step))
        while os.path.exists(destination):  # The same step damaged before.
            destination += "+"
        logging.warning("Checkpoint damaged: %s; moving it to %s.", error, destination)
        if jax.process_index() == 0:
            os.makedirs(self.damaged, exist_ok=True)
            os.rename(os.path.join(self.directory, str(step)), destination)
        multihost_utils.sync_global_devices(f"set aside checkpoint {step}")
        self.latest.reload()
        return destination

    def newest_verified(self, target: dict, expected: dict) -> Optional[int]:
        """The step of the newest latest-N checkpoint that verifies (None: none does); moves nothing."""
        self.latest.wait_until_finished()
        for step in sorted(self.latest.all_steps(), reverse=True):
            try:
                self._restore(self.latest, step, "state", target, expected)
                return step
            except CheckpointDamagedError as error:
                logging.warning("Checkpoint damaged: %s.", error)
        return None

    def restore_best(self, target: Any, expected: dict):
        """(params, meta) of the best checkpoint; an error when there is none or it is damaged."""
        step = self.best.best_step()
        if step is None:
            raise MissingCheckpointError(
                f"No best checkpoint under {self.best.directory}; train first (it is written at each dev evaluation)."
            )
        try:
            return self._restore(self.best, step, "params", target, expected)
        except CheckpointDamagedError as error:
            raise CheckpointDamagedError(
                f"The best checkpoint is damaged: {error}; move {self.best.directory}/{step} away and rerun train "
                f"(the next dev evaluation writes a new best), or restore the directory from a copy."
            ) from error

    def seal_committed(self) -> None:
        """Seals the checkpoints whose asynchronous save has finished (the loop calls it every
        step, so a kill soon after a commit rarely finds a checkpoint unsealed)."""
        for manager in (self.latest, self.best):
            if not manager.is_saving_in_progress():
                self._seal_committed(manager)

    def _seal_committed(self, manager) -> None:
        """Waits for `manager`'s pending save (Orbax would before the next one anyway), then
        writes the seal of every checkpoint of it this process saved and has not sealed."""
        manager.wait_until_finished()
        for pending in [entry for entry in self._unsealed if entry[0] is manager]:
            self._unsealed.remove(pending)
            directory = os.path.join(manager.directory, str(pending[1]))
            if jax.process_index() == 0 and os.path.isdir(directory):  # Not yet rotated out by keep.
                digests = _file_digests(directory)
                with open(os.path.join(directory, SEAL + ".tmp"), "w") as f:
                    json.dump(digests, f, indent=0, sort_keys=True)
                os.replace(os.path.join(directory, SEAL + ".tmp"), os.path.join(directory, SEAL))

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is complete on disk, and seals it."""
        self._seal_committed(self.latest)
        self._seal_committed(self.best)

    def close(self) -> None:
        self.latest.close()
        self.best.close()
