"""PEFT prefix-tuning adapters <-> prefix_jax kv prefixes.

A PEFT `PrefixTuningConfig` adapter directory holds `adapter_config.json` and
`adapter_model.safetensors` with one tensor, `prompt_embeddings`
`[n, num_layers * 2 * token_dim]`, whose last axis is `[L0 K | L0 V | L1 K | ...]`,
each `[heads, head_dim]` flattened (token_dim = heads * head_dim). That is the
projection MLP's output when `prefix_projection` is true (the MLP is not saved),
so an adapter always imports as a plain kv prefix, and exports are written
folded (`prefix_projection: false`).

Positions: PEFT passes the prefix as `past_key_values`, so the real tokens get
positions n..n+m-1. `positions(n, batch, m)` gives that convention; apply the
model with it to get PEFT's logits. Prefixes trained here use positions 0..m-1
(the model's default), so an exported prefix meets inputs shifted by n in PEFT.

Needs numpy and safetensors only, not torch.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from prefix_jax import errors
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import records

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


class AdapterFormatError(errors.UserError):
    """The adapter directory is not a PEFT prefix-tuning adapter for this model."""


def positions(n: int, batch: int, m: int) -> jax.Array:
    """[batch, m] positions n..n+m-1: Hugging Face's convention behind a cache of n entries."""
    return jnp.broadcast_to(n + jnp.arange(m), (batch, m))


def to_prompt_embeddings(key: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Stacked K, V [L, n, heads, head_dim] -> PEFT's [n, L * 2 * heads * head_dim]."""
    n = key.shape[1]
    kv = np.stack([np.asarray(key), np.asarray(value)], axis=1)  # [L, 2, n, heads, head_dim]
    return np.ascontiguousarray(kv.transpose(2, 0, 1, 3, 4).reshape(n, -1), np.float32)


def from_prompt_embeddings(embeddings: np.ndarray, geometry) -> dict:
    """PEFT's [n, L * 2 * kv_heads * head_dim] -> {"key", "value"}, each [L, n, kv_heads, head_dim]."""
    n = embeddings.shape[0]
    shape = (n, geometry.num_layers, 2, geometry.num_kv_heads, geometry.head_dim)
    kv = np.asarray(embeddings, np.float32).reshape(shape).transpose(2, 1, 0, 3, 4)
    return {"key": jnp.asarray(kv[0]), "value": jnp.asarray(kv[1])}


def as_kv(spec: prefix_lib.PrefixSpec, params: dict, model, base_params=None):
    """Any prefix as plain K/V: reparameterisation folded, hidden states compiled to K/V."""
    if spec.kind == "prompt":
        raise AdapterFormatError(
            "A prompt-tuning prompt is not a prefix; PEFT prefix tuning cannot hold it. Export a 'kv' or "
            "'hidden' prefix."
        )
    if spec.kind == "infix":
        raise AdapterFormatError("An infix is hidden from the source rows; PEFT prefix tuning cannot express that.")
    if spec.kind == "hidden":
        if base_params is None:
            raise ValueError("Exporting a 'hidden' prefix needs the base params to compute its K/V.")
        return prefix_lib.hidden_to_kv(spec, params, model, base_params)
    return prefix_lib.fold(spec, params, model.config.prefix_geometry)


def save(
    out_dir: str, spec: prefix_lib.PrefixSpec, params: dict, model, base_params=None,
    base_model_name_or_path: str = "",
) -> str:
    """Writes `spec`/`params` as a PEFT prefix-tuning adapter (CAUSAL_LM) into `out_dir`."""
    from safetensors.numpy import save_file

    _, kv = as_kv(spec, params, model, base_params)
    g = model.config.prefix_geometry
    embeddings = to_prompt_embeddings(np.asarray(kv["key"]), np.asarray(kv["value"]))
    token_dim = g.num_kv_heads * g.head_dim
    config = {
        "peft_type": "PREFIX_TUNING",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path or None,
        "inference_mode": True,
        "num_virtual_tokens": spec.length,
        "num_layers": g.num_layers,
        "token_dim": token_dim,
        "num_attention_heads": g.num_kv_heads,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": g.d_model,
        "prefix_projection": False,  # The K/V are written folded.
    }
    os.makedirs(out_dir, exist_ok=True)
    save_file({"prompt_embeddings": embeddings}, os.path.join(out_dir, WEIGHTS))
    with open(os.path.join(out_dir, CONFIG), "w") as f:
        json.dump(config, f, indent=2)
    return out_dir


def _read(adapter_dir: str, expected: dict) -> tuple[dict, np.ndarray]:
    """(adapter_config.json, prompt_embeddings) after checking them against `expected` fields."""
    from safetensors.numpy import load_file

    config = records.read_saved_config(
        adapter_dir, CONFIG, WEIGHTS, error=AdapterFormatError,
        fix="give a directory written by PeftModel.save_pretrained, or copy it again",
        marker=("peft_type", "PREFIX_TUNING"), expected=expected,
    )
    weights_file = os.path.join(adapter_dir, WEIGHTS)
    tensors = load_file(weights_file)
    want = (config["num_virtual_tokens"], 2 * expected["num_layers"] * expected["token_dim"])
    if set(tensors) != {"prompt_embeddings"} or tensors["prompt_embeddings"].shape != want:
        found = {name: t.shape for name, t in tensors.items()}
        raise AdapterFormatError(f"{weights_file} holds {found}; expected only prompt_embeddings of shape {want}.")
    return config, tensors["prompt_embeddings"]


def load(adapter_dir: str, model_config) -> tuple[prefix_lib.PrefixSpec, dict]:
    """A decoder-only PEFT prefix adapter as (kv PrefixSpec, {"key", "value"} [L, n, heads, head_dim])."""
    g = model_config.prefix_geometry
    expected = {
        "num_layers": g.num_layers,
        "num_attention_heads": g.num_kv_heads,
        "token_dim": g.num_kv_heads * g.head_dim,
        "num_transformer_submodules": 1,
    }
    config, embeddings = _read(adapter_dir, expected)
    return prefix_lib.PrefixSpec(kind="kv", length=config["num_virtual_tokens"]), from_prompt_embeddings(embeddings, g)


def load_encoder_decoder(adapter_dir: str, model_config) -> dict:
    """A SEQ_2_SEQ_LM PEFT prefix adapter as `bart.Bart`'s `prefix=` argument.

    What PEFT does with it (peft 0.21, transformers 5, checked by the BART parity test):
    it stores `num_layers` = the encoder's layer count, duplicates the K/V list and
    groups it in fours per decoder layer (self K, self V, cross K, cross V), then drops
    the cross-attention half. So decoder layer j's self-attention prefix is PEFT layer
    (2j mod num_layers); odd layers are never used, and there is no encoder or cross
    prefix. The decoder's positions start at n (`positions(n, ...)` as
    `decoder_positions`).
    """
    layers = model_config.encoder_layers
    expected = {
        "num_layers": layers,
        "num_attention_heads": model_config.num_heads,
        "token_dim": model_config.d_model,
        "num_transformer_submodules": 2,
    }
    config, embeddings = _read(adapter_dir, expected)
    n = config["num_virtual_tokens"]
    kv = np.asarray(embeddings, np.float32).reshape(n, layers, 2, model_config.num_heads, model_config.head_dim)
    kv = kv.transpose(1, 2, 0, 3, 4)  # [L, 2, n, heads, head_dim]
    return {
        "decoder": tuple(
            {"key": jnp.asarray(kv[(2 * j) % layers, 0]), "value": jnp.asarray(kv[(2 * j) % layers, 1])}
            for j in range(model_config.decoder_layers)
        )
    }
