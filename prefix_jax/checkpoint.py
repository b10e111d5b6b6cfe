"""Orbax checkpoints of what trains, stamped with what it was trained for.

A checkpoint holds the trainable partition of the parameters (the prefix in
prefix mode, everything in full fine-tuning), the optimizer state (which exists
for trainable leaves only), the step and the RNG key; frozen base weights are
never written, they are reloaded from their source. Beside it, JSON metadata:

  fingerprint    the base model (config + SHA-256 of every frozen weight), the
                 prefix spec, the training mode and the trainable leaves' shapes;
  data_position  epoch and batch of the input pipeline (the step determines it).

Restoring checks the fingerprint first and refuses any mismatch with an error
that names it: never a partial restore. Orbax writes each checkpoint to a
temporary directory and renames it when complete, so a run killed mid-save
leaves the previous checkpoint as the latest good one.

Layout under the workdir: `checkpoints/<step>/` (latest N) and `best/<step>/`
(lowest dev loss; parameters only).
"""

import hashlib
import os
from typing import Any, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from flax import traverse_util

from prefix_jax import errors


class CheckpointMismatchError(errors.UserError):
    """The checkpoint was made for another base model, prefix or training mode."""


def flat_paths(tree: Any) -> dict:
    """{"a/b/c": leaf}: the path names used in digests, metadata and weight files."""
    return {"/".join(map(str, path)): leaf for path, leaf in traverse_util.flatten_dict(tree).items()}


def weights_digest(params: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in sorted order."""
    digest = hashlib.sha256()
    for path, leaf in sorted(flat_paths(params).items()):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:  # Sharded across hosts.
            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.asarray(leaf)
        digest.update(f"{path}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint(*, model_config, spec, mode: str, top_k: int, frozen: Any, trainable: Any) -> dict:
    """What a checkpoint must match to be restored into this run (JSON-able)."""
    return {
        "base_model": {"config": repr(model_config), "frozen_weights_sha256": weights_digest(frozen)},
        "prefix_spec": repr(spec),
        "mode": mode if mode != "top_k" else f"top_k={top_k}",
        "trainable_shapes": {path: list(np.shape(leaf)) for path, leaf in sorted(flat_paths(trainable).items())},
    }


def _check(saved: dict, expected: dict, where: str) -> None:
    problems = [
        f"  {key}: checkpoint has {saved.get(key)!r}, this run has {expected[key]!r}"
        for key in expected
        if saved.get(key) != expected[key]
    ]
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint in {where} was made for a different setup:\n"
            + "\n".join(problems)
            + "\nRestore it with the same base model, prefix and mode, or use a new workdir."
        )


class Checkpointer:
    """Latest-N checkpoints for resuming, plus the best one by dev loss."""

    def __init__(self, workdir: str, *, keep: int, async_save: bool):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
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
        """Saves `state` (trainable params, optimizer, step, rng) with `meta` (JSON)."""
        self.latest.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )

    def save_best(self, step: int, params: Any, meta: dict, dev_loss: float) -> None:
        self.best.save(
            step,
            args=ocp.args.Composite(params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta)),
            metrics={"dev_loss": dev_loss},
        )

    def best_dev_loss(self) -> Optional[float]:
        step = self.best.best_step()
        if step is None:
            return None
        return self._restore_meta(self.best, step)["dev_loss"]

    def _restore_meta(self, manager, step) -> dict:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def _restore(self, manager, step, item: str, target: Any, expected: dict):
        meta = self._restore_meta(manager, step)
        _check(meta["fingerprint"], expected, f"{manager.directory}/{step}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        restored = manager.restore(step, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(abstract)}))
        return restored[item], meta

    def restore_latest(self, target: dict, expected: dict):
        """(state, meta) of the latest checkpoint, or None when there is none."""
        step = self.latest.latest_step()
        if step is None:
            return None
        return self._restore(self.latest, step, "state", target, expected)

    def restore_best(self, target: Any, expected: dict):
        """(params, meta) of the best checkpoint; an error when there is none."""
        step = self.best.best_step()
        if step is None:
            raise FileNotFoundError(
                f"No best checkpoint under {self.best.directory}; train first (it is written at each dev evaluation)."
            )
        return self._restore(self.best, step, "params", target, expected)

    def wait(self) -> None:
        """Blocks until every pending asynchronous save is complete on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
