"""Li & Liang's encoder-decoder prefix: K/V prefixes on three sides of a BART model.

Their seq2seq code prefixes encoder self-attention, decoder self-attention and
cross-attention, each side with its own reparameterisation MLP. Here each side is a
`kv` prefix of `prefix.py` over that side's stack of attention layers (the encoder's
for "encoder", the decoder's for "decoder" and "cross"), so the MLP, its folding and its
counting are prefix.py's, applied three times; one PrefixSpec (length, MLP width) holds
for all three sides, as in their code. Params: {"encoder": ..., "decoder": ..., "cross": ...},
each a prefix.py kv tree. Only the kv kind is defined for encoder-decoders.
"""

import dataclasses

import jax

from prefix_jax import prefix as prefix_lib
from prefix_jax.models import bart, gpt2


def _check(spec: prefix_lib.PrefixSpec) -> None:
    if spec.kind != "kv":
        raise ValueError(
            f"An encoder-decoder prefix is Li & Liang's key/value prefix: set prefix.kind='kv' (got {spec.kind!r})."
        )


def side_view(config: bart.BartConfig, side: str) -> gpt2.GPT2Config:
    """One side's attention stack as prefix.py sees a model: layers, heads, head_dim, width
    (the vocabulary and MLP sizes are never read there)."""
    layers = config.encoder_layers if side == "encoder" else config.decoder_layers
    return gpt2.GPT2Config(vocab_size=config.vocab_size, num_layers=layers, num_heads=config.num_heads,
                           d_model=config.d_model, d_ff=config.d_ff, max_len=config.max_len)


def init_random(spec: prefix_lib.PrefixSpec, config: bart.BartConfig, rng: jax.Array) -> dict:
    """Random parameters for every side (prefix.init_random's scales), independent keys."""
    _check(spec)
    keys = jax.random.split(rng, len(bart.SIDES))
    return {side: prefix_lib.init_random(spec, side_view(config, side), key) for side, key in zip(bart.SIDES, keys)}


def model_inputs(spec, params: dict, config: bart.BartConfig) -> dict:
    """Keyword arguments for `Bart.__call__` / `decode_step`: {"prefix": {side: per-layer K/V}}."""
    if spec is None:
        return {}
    _check(spec)
    return {"prefix": {
        side: prefix_lib.model_inputs(spec, params[side], side_view(config, side))["prefix"] for side in bart.SIDES
    }}


def fold(spec, params: dict, config: bart.BartConfig):
    """Each side's MLP evaluated once: (plain kv spec, {side: {"key", "value": [L, n, heads, head_dim]}})."""
    _check(spec)
    folded = {side: prefix_lib.fold(spec, params[side], side_view(config, side))[1] for side in bart.SIDES}
    return dataclasses.replace(spec, reparam_dim=0), folded


def serve(spec, params: dict, config: bart.BartConfig) -> dict:
    """The `prefix=` a decoder takes, folded once (the MLPs never run while decoding)."""
    if spec is None:
        return {}
    plain, folded = fold(spec, params, config)
    return model_inputs(plain, folded, config)["prefix"]


def served_size(spec, config: bart.BartConfig) -> int:
    """2 * n * d per layer and side: (encoder layers + 2 * decoder layers) * 2 * n * d."""
    _check(spec)
    return sum(prefix_lib.served_size(spec, side_view(config, side)) for side in bart.SIDES)


def count_params(spec, config: bart.BartConfig, base_params) -> dict:
    """Trainable (all three MLPs) and served prefix sizes, and their share of the base model."""
    base = prefix_lib.num_params(base_params)
    trained = prefix_lib.num_params(jax.eval_shape(lambda key: init_random(spec, config, key), jax.random.key(0)))
    served = served_size(spec, config)
    return {"base": base, "trained": trained, "served": served,
            "trained_share_of_base": trained / base, "served_share_of_base": served / base}
