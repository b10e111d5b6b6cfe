"""The model families, one record each: everything outside models/ asks this registry.

A family is one model file plus one entry here. The record says how to build the model
from its config, initialise and lay out its parameters, run the forward the loss uses,
decode with a cache (prefill, then one step at a time), and convert Hugging Face
checkpoints. Prefix code needs only the config's `prefix_geometry` (layers, key/value
heads, head_dim, width; one geometry per side for an encoder-decoder).
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from prefix_jax.models import bart, decoder, gpt2, layers, llama


@dataclasses.dataclass(frozen=True)
class Family:
    """What the rest of the project needs of a model family."""

    name: str
    config_class: type
    module: type  # A flax module taking `config`.
    init_params: Callable  # (model, rng) -> params
    logical_axes: Callable  # (model) -> PartitionSpec pytree of logical axis names
    forward: Callable  # (model, base_params, batch, prefix_inputs, rng, deterministic) -> logits
    # Cached decoding. prefill(model, base_params, served, tokens, mask, max_new_tokens, start_tokens,
    # last_only=False) -> (logits [rows, q, vocab] (last_only: [rows, 1, vocab]), rows: per-row state
    # (the cache...), context: the rest);
    # step(model, base_params, served, context, rows, token [rows], t) -> (logits [rows, vocab], rows).
    prefill: Callable
    step: Callable
    hf_model_type: str  # config.json's model_type of its Hugging Face checkpoints
    encoder_decoder: bool = False
    # (config, k) -> names of the last k layers' parameter subtrees (FT-top-k); None: not offered.
    top_layers: Callable | None = lambda config, k: [layers.layer_name(i)
                                                    for i in range(config.num_layers - k, config.num_layers)]

    @property
    def fields(self) -> tuple:
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def make(self, config) -> nn.Module:
        return self.module(config)


_DECODER_ONLY = dict(
    init_params=decoder.init_params, logical_axes=decoder.logical_axes, forward=decoder.forward,
    prefill=decoder.prefill, step=decoder.step,
)
FAMILIES = {
    "gpt2": Family("gpt2", gpt2.GPT2Config, gpt2.GPT2, hf_model_type="gpt2", **_DECODER_ONLY),
    "llama": Family("llama", llama.LlamaConfig, llama.Llama, hf_model_type="llama", **_DECODER_ONLY),
    "bart": Family(
        "bart", bart.BartConfig, bart.Bart, init_params=bart.init_params, logical_axes=bart.logical_axes,
        forward=bart.forward, prefill=bart.prefill, step=bart.step, hf_model_type="bart", encoder_decoder=True,
        top_layers=None,
    ),
}


def get(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"Unknown model.family {name!r}; expected one of {sorted(FAMILIES)}.")
    return FAMILIES[name]


def of(config: Any) -> Family:
    """The family of a model config (or of a model, through its config)."""
    config = getattr(config, "config", config)
    for family in FAMILIES.values():
        if type(config) is family.config_class:
            return family
    raise ValueError(f"{type(config).__name__} is no registered family's config; expected one of "
                     f"{[f.config_class.__name__ for f in FAMILIES.values()]}.")


def by_hf_model_type(model_type: str) -> Family:
    for family in FAMILIES.values():
        if family.hf_model_type == model_type:
            return family
    raise ValueError(f"model_type {model_type!r} has no family; supported: {sorted(f.hf_model_type for f in FAMILIES.values())}.")


def init_params(model, rng):
    return of(model).init_params(model, rng)


def logical_axes(model):
    return of(model).logical_axes(model)
