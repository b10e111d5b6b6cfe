"""Project base-model directories: `base_model.json` + `base_model.safetensors`, as the repo ships them.

The names are the project's own so that they never share a name (and so a reader) with a
Hugging Face checkpoint's `config.json` + `model.safetensors`, whose schema differs.
`base_model.json` holds the model hyper-parameters (`model`), the storage dtype and
the SHA-256 of the weights as loaded (float32), so a loaded model can be checked
against what was recorded. Weights are stored in float16 to halve the file; they
are always loaded as float32 and the recorded digest and perplexity are those of
the float16-rounded weights.
"""

import json
import os

import jax
import numpy as np
from flax import traverse_util
from safetensors import numpy as safetensors_numpy

from prefix_jax import errors
from prefix_jax.checkpoint import flat_paths, weights_digest
from prefix_jax.data import records

CONFIG, WEIGHTS = "base_model.json", "base_model.safetensors"
STORAGE_DTYPE = np.float16


class WeightsError(errors.UserError):
    """A weight directory is missing, incomplete, or does not fit the configured model."""


def round_trip(params: dict) -> dict:
    """The float32 params a save + load of `params` gives back."""
    return jax.tree.map(lambda leaf: np.asarray(leaf).astype(STORAGE_DTYPE).astype(np.float32), params)


def architecture(model_config: dict) -> dict:
    """The base model's fields of a config's model section, without a run's own choices
    (adapters it adds, its activation dtype, its activation checkpointing)."""
    return {k: v for k, v in model_config.items() if k not in ("adapter_dim", "dtype", "remat")}


def save(directory: str, model_config: dict, params: dict, extra: dict | None = None) -> dict:
    """Writes the directory; returns its base_model.json content (with the loaded weights' digest)."""
    os.makedirs(directory, exist_ok=True)
    flat = {path: np.asarray(leaf).astype(STORAGE_DTYPE) for path, leaf in flat_paths(params).items()}
    safetensors_numpy.save_file(flat, os.path.join(directory, WEIGHTS))
    meta = {"model": architecture(model_config), "dtype": STORAGE_DTYPE.__name__,
            "sha256": weights_digest(round_trip(params)),
            **(extra or {})}
    with open(os.path.join(directory, CONFIG), "w") as f:
        json.dump(meta, f, indent=2)
    return meta


def load(directory: str, model_config: dict) -> dict:
    """Float32 params from `directory`, refused unless made for `model_config` and intact."""
    paths = [os.path.join(directory, name) for name in (CONFIG, WEIGHTS)]
    if missing := [p for p in paths if not os.path.isfile(p)]:
        raise WeightsError(f"Base weights incomplete: {missing} not found.")
    meta = records.read_json_object(
        paths[0], WeightsError, "copy the directory again, or write it again with `prefix_jax.main export_base`"
    )
    stored = architecture(meta["model"])
    if diff := {k: (v, model_config.get(k)) for k, v in stored.items() if model_config.get(k) != v}:
        raise WeightsError(
            f"{directory} was trained for another model: (stored, configured) differ in {diff}; "
            "set the config's model section to the stored values."
        )
    flat = safetensors_numpy.load_file(paths[1])
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v.astype(np.float32) for k, v in flat.items()})
    if (digest := weights_digest(params)) != meta["sha256"]:
        raise WeightsError(f"{paths[1]} does not match its recorded SHA-256 ({digest} != {meta['sha256']}).")
    return params
