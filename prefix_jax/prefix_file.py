"""Prefixes PEFT cannot hold (EMB-n prompts, infixes) in the project's own small format.

A directory with `prefix_config.json` (the format name, the prefix's kind and length, and
the geometry of the model it was trained on) and `prefix.safetensors`: the folded
parameters, "prompt" [n, d_model] or "key" / "value" [L, n, kv_heads, head_dim] (a
reparameterisation MLP is evaluated once and dropped, as for PEFT exports). `export`
writes it for prompt and infix prefixes (kv and hidden ones go to PEFT's format, which
other tools read); `import` reads either. Needs numpy and safetensors only.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from prefix_jax import errors
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import records

FORMAT = "prefix_jax.prefix"
CONFIG, WEIGHTS = "prefix_config.json", "prefix.safetensors"


class PrefixFormatError(errors.UserError):
    """The directory is not a prefix_jax prefix for this model."""


def is_prefix_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CONFIG))


def _geometry(model_config) -> dict:
    g = model_config.prefix_geometry
    return {"num_layers": g.num_layers, "d_model": g.d_model, "num_kv_heads": g.num_kv_heads, "head_dim": g.head_dim}


def save(out_dir: str, spec: prefix_lib.PrefixSpec, params: dict, model_config, base_model_name_or_path: str = "") -> str:
    """Writes `spec`/`params`, folded, into `out_dir`."""
    from safetensors.numpy import save_file

    plain, folded = prefix_lib.fold(spec, params, model_config.prefix_geometry)
    config = {"format": FORMAT, "kind": plain.kind, "length": plain.length, **_geometry(model_config),
              "base_model_name_or_path": base_model_name_or_path or None}
    os.makedirs(out_dir, exist_ok=True)
    save_file({name: np.asarray(value, np.float32) for name, value in folded.items()}, os.path.join(out_dir, WEIGHTS))
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def load(prefix_dir: str, model_config) -> tuple[prefix_lib.PrefixSpec, dict]:
    """(plain PrefixSpec, params) of the prefix in `prefix_dir`, checked against the model."""
    from safetensors.numpy import load_file

    config = records.read_saved_config(
        prefix_dir, CONFIG, WEIGHTS, error=PrefixFormatError, fix="give a directory written by the export command",
        marker=("format", FORMAT), expected=_geometry(model_config),
    )
    config_file, weights_file = (os.path.join(prefix_dir, name) for name in (CONFIG, WEIGHTS))
    try:
        spec = prefix_lib.PrefixSpec(kind=config.get("kind"), length=int(config.get("length")))
    except (TypeError, ValueError) as e:
        raise PrefixFormatError(f"{config_file}: bad kind or length ({e}); export the prefix again.") from None
    shapes = jax.eval_shape(lambda key: prefix_lib.init_random(spec, model_config.prefix_geometry, key),
                            jax.random.key(0))
    tensors = load_file(weights_file)
    found, expected = {k: v.shape for k, v in tensors.items()}, {k: v.shape for k, v in shapes.items()}
    if found != expected:
        raise PrefixFormatError(f"{weights_file} holds {found}; a {spec.kind} prefix of length {spec.length} needs {expected}.")
    return spec, {name: jnp.asarray(value) for name, value in tensors.items()}
