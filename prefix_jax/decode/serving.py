"""Serving form of prefixes, prefix banks, and routing each row to its task's prefix.

A task's prefix is compiled once to per-layer K/V and kept apart from the per-row cache:
the model attends over its n keys before the cache's keys, exactly as if they were the
cache's first n entries, but one copy serves every row (and beam) of the task. A
prompt-tuning prefix is soft tokens, so it is simply part of the prefill. Served
prefixes carry a leading task axis (a bank of one task when plain); an encoder-decoder's
is one task, its sides' K/V for every row.
"""

from typing import Optional, Sequence

import jax.numpy as jnp
import numpy as np

from prefix_jax import prefix as prefix_lib



def pad_rows(sequences: list, width: Optional[int] = None, left: bool = True, pad_id: int = 0):
    """tokens, attention_mask [rows, width] (default: the longest). Decoder-only sources are
    left-padded (generation continues them); an encoder's are right-padded, as in training."""
    width = max(len(s) for s in sequences) if width is None else width
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for row, sequence in enumerate(sequences):
        columns = slice(width - len(sequence), width) if left else slice(0, len(sequence))
        tokens[row, columns], mask[row, columns] = sequence, 1
    return tokens, mask


def left_pad(sequences: list, pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tokens, attention_mask [batch, longest], sequences right-aligned."""
    return pad_rows(sequences, pad_id=pad_id)


def serve(spec: Optional[prefix_lib.PrefixSpec], prefix_params, model, base_params) -> dict:
    """A task's prefix in serving form, as a bank of one task; pure.

    Returns {} (no prefix), {"key", "value": [L, 1, n, kv_heads, head_dim], "mask": [1, n]}
    (a hidden prefix compiled to K/V, a reparameterised one folded; an infix adds
    "infix": [1] True), or {"prompt": [1, n, embed], "mask": [1, n]}. An encoder-decoder's
    is {"prefix": {side: per-layer K/V}, "mask": [1, n]}, folded, one task.
    """
    if spec is None:
        return {}
    geometry, mask = model.config.prefix_geometry, jnp.ones((1, spec.length), bool)
    if not isinstance(geometry, prefix_lib.Geometry):
        plain, folded = prefix_lib.fold(spec, prefix_params, geometry)
        return {**prefix_lib.model_inputs(plain, folded, geometry), "mask": mask}
    if spec.kind == "prompt":
        return {"prompt": prefix_params["prompt"][None], "mask": mask}
    if spec.kind == "hidden":
        spec, prefix_params = prefix_lib.hidden_to_kv(spec, prefix_params, model, base_params)
    spec, prefix_params = prefix_lib.fold(spec, prefix_params, geometry)
    served = {name: prefix_params[name][:, None] for name in ("key", "value")}
    if spec.kind == "infix":
        served["infix"] = jnp.ones((1,), bool)
    return {**served, "mask": mask}


def _kind(served: dict) -> str:
    return "prompt" if "prompt" in served else "kv" if "key" in served else "none"


def prefix_bank(tasks: Sequence[dict]) -> dict:
    """Stacks served prefixes (`serve`) into one bank; shorter ones are padded and masked.

    All tasks must be of one serving kind (K/V, or prompt) with matching layer/head shapes;
    infixes and K/V prefixes mix (each row is told which its task is).
    """
    if not tasks:
        raise ValueError("prefix_bank needs at least one task.")
    kinds = {_kind(task) for task in tasks}
    if len(kinds) != 1 or "none" in kinds:
        raise ValueError(
            f"A prefix bank needs tasks of one kind, K/V (hidden or kv prefixes) or prompt; got {sorted(kinds)}."
        )
    names = ("prompt",) if kinds == {"prompt"} else ("key", "value")
    axis = 1 if names == ("prompt",) else 2  # The length axis n.
    n = max(task["mask"].shape[1] for task in tasks)
    banks = {}
    for name in names:
        shapes = {tuple(np.delete(task[name].shape, axis)) for task in tasks}
        if len(shapes) != 1:
            raise ValueError(f"Prefix {name!r} shapes differ beyond their length: {sorted(shapes)}.")
        pad = lambda x: jnp.pad(x, [(0, n - x.shape[axis]) if i == axis else (0, 0) for i in range(x.ndim)])
        banks[name] = jnp.concatenate([pad(task[name]) for task in tasks], axis=axis - 1)
    if any("infix" in task for task in tasks):
        banks["infix"] = jnp.concatenate([task.get("infix", jnp.zeros((1,), bool)) for task in tasks])
    masks = [jnp.pad(task["mask"], ((0, 0), (0, n - task["mask"].shape[1]))) for task in tasks]
    return {**banks, "mask": jnp.concatenate(masks, axis=0)}


def num_tasks(served: dict) -> int:
    """Tasks in a served prefix or bank (1 for no prefix)."""
    return served["mask"].shape[0] if served else 1


def _check_fits(served: dict, geometry: prefix_lib.Geometry) -> None:
    """A bank made for another model would fail deep inside attention; say so here."""
    g = geometry
    for name, value in served.items():
        if name in ("key", "value"):
            want, got = (g.num_layers, g.num_kv_heads, g.head_dim), (value.shape[0],) + value.shape[3:]
            what = "(layers, kv_heads, head_dim)"
        elif name == "prompt":
            want, got, what = (g.d_model,), value.shape[2:], "(d_model,)"
        else:
            continue
        if got != want:
            raise ValueError(f"Served prefix {name!r} has {what} = {got} but the model has {want}; serve it for this model.")


def select(served: dict, task_ids) -> dict:
    """Each row's task's prefix (leading axis: rows instead of tasks); jit-safe, unchecked (`route` checks)."""
    return {name: value[:, task_ids] if name in ("key", "value") else value[task_ids] for name, value in served.items()}


def route(served: dict, task_ids, batch: int, geometry) -> dict:
    """The served prefix each row uses: the one task, or each row's task from the bank."""
    if isinstance(geometry, prefix_lib.Geometry):
        _check_fits(served, geometry)
    elif task_ids is not None:
        raise ValueError("An encoder-decoder serves one task per call here; drop task_ids.")
    if task_ids is None:
        if num_tasks(served) != 1:
            raise ValueError(f"The prefix bank holds {num_tasks(served)} tasks; pass task_ids naming each row's task.")
        return served
    if not served:
        raise ValueError("task_ids given but there is no prefix bank (the served prefix is empty).")
    task_ids = np.asarray(task_ids)
    if task_ids.shape != (batch,) or not np.issubdtype(task_ids.dtype, np.integer):
        raise ValueError(f"task_ids has shape {task_ids.shape} ({task_ids.dtype}); expected ({batch},) integers, one per row.")
    unknown = sorted(set(task_ids[(task_ids < 0) | (task_ids >= num_tasks(served))].tolist()))
    if unknown:
        raise ValueError(f"Unknown task ids {unknown}: the prefix bank holds tasks 0..{num_tasks(served) - 1}.")
    return select(served, jnp.asarray(task_ids))


def check_length(source_len: int, new_tokens: int, infix_len: int, max_len: int) -> None:
    if source_len + new_tokens + infix_len > max_len:
        infix = f" + an infix of {infix_len}" if infix_len else ""
        raise ValueError(f"Source length {source_len} + {new_tokens} new tokens{infix} exceeds max_len {max_len}.")


