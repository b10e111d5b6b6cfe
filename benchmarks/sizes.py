"""Optimizer-state and checkpoint size of each prefix kind against full fine-tuning.

Optimizer bytes are summed over the optax state tree that training really holds
(`train.create`; frozen leaves have no state). Checkpoint bytes are the files a
training checkpoint writes (`prefix_jax.checkpoint`, what `loop` saves: trainable
params, optimizer state, step, RNG), summed on disk after a synchronous save,
taken after one train step: Orbax compresses, and the zero moments of a fresh
optimizer would compress to almost nothing.
"""

import os
import tempfile

import jax

from benchmarks import common, train_step
from prefix_jax import checkpoint, loop, prefix, train, trainable


def tree_bytes(tree) -> int:
    return sum(leaf.nbytes for leaf in jax.tree.leaves(tree) if hasattr(leaf, "nbytes"))


def directory_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)


def checkpoint_bytes(state, exp) -> int:
    with tempfile.TemporaryDirectory() as workdir:
        saver = checkpoint.Checkpointer(workdir, keep=1, async_save=False)
        saver.save(0, loop._saveable(state, exp, jax.random.key(0)), meta={})
        saver.wait()
        saver.close()
        return directory_bytes(saver.directory)


def benchmark(size: str, variants: tuple = tuple(train_step.VARIANTS)) -> dict:
    """Every variant in `variants` (full fine-tuning always, as the reference)."""
    model, shape = common.MODELS[size], train_step.SHAPES[size]
    batch = train_step.random_batch(shape["batch_size"], shape["sequence_length"], model["vocab_size"])
    rows = {}
    for name in dict.fromkeys((train_step.FULL, *variants)):
        overrides = train_step.VARIANTS[name]
        exp, state = train.create(train_step.variant_config(model, shape["batch_size"], overrides))
        state, _ = train.make_step_fns(exp)[0](state, batch, jax.random.key(0))
        trained = trainable.partition(state.params, exp.labels)[0]
        rows[name] = {
            "trainable_params": prefix.num_params(trained),
            "trainable_bytes": tree_bytes(trained),
            "optimizer_state_bytes": tree_bytes(state.opt_state),
            "checkpoint_bytes": checkpoint_bytes(state, exp),
        }
    full = rows[train_step.FULL]
    for row in rows.values():
        row["optimizer_state_vs_full"] = row["optimizer_state_bytes"] / full["optimizer_state_bytes"]
        row["checkpoint_vs_full"] = row["checkpoint_bytes"] / full["checkpoint_bytes"]
    return {"benchmark": "sizes", "size": size, "model": common.as_run(model),
            "prefix_length": train_step.PREFIX_LENGTH, "results": rows}


def to_markdown(results: dict) -> str:
    header = ["variant", "trainable params", "optimizer state (MiB)", "vs full", "checkpoint (MiB)", "vs full"]
    rows = [
        [name, f"{r['trainable_params']:,}", f"{r['optimizer_state_bytes'] / 2**20:.3f}",
         f"{r['optimizer_state_vs_full']:.4f}", f"{r['checkpoint_bytes'] / 2**20:.3f}", f"{r['checkpoint_vs_full']:.4f}"]
        for name, r in results["results"].items()
    ]
    intro = (
        f"Optimizer state (AdamW moments, from the optax state tree) and one training checkpoint on disk "
        f"(Orbax: trainable params, optimizer state, step, RNG; after one step), model {results['model']}, prefix length "
        f"{results['prefix_length']}.\n\n"
    )
    return intro + common.markdown_table(header, rows)
