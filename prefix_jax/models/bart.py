"""A BART-style encoder-decoder (learned positions, post-LN) with prefixes on every attention.

Li & Liang (2021) prefix both sides of an encoder-decoder, so `prefix=` is a dict of
up to three per-layer sequences, each entry `{"key": K, "value": V}` with K, V
`[n, heads, head_dim]` (or with a leading batch axis) or None:

  * `"encoder"`: prepended to the keys/values of encoder self-attention;
  * `"decoder"`: prepended to decoder self-attention (every decoder query sees it);
  * `"cross"`: prepended to the encoder outputs' keys/values in cross-attention.

A missing key means no prefix there. Positions start at 0 on both sides unless
`decoder_positions` says otherwise.

Decoding runs the encoder once (`Bart.encode`), projects its outputs to every decoder
layer's cross-attention K/V once (`Bart.init_cache`), then feeds the decoder one token
per row per call (`Bart.decode_step`) over a static-shape self-attention KV cache.
"""

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefix_jax.models import layers

Array = jax.Array
SIDES = ("encoder", "decoder", "cross")
_POSITION_OFFSET = 2  # BART's learned positions start at row 2 of the table.


@dataclasses.dataclass(frozen=True)
class BartConfig:
    """Hyper-parameters of a BART-style model; frozen and hashable."""

    vocab_size: int
    encoder_layers: int
    decoder_layers: int
    num_heads: int
    d_model: int
    d_ff: int
    max_len: int
    scale_embedding: bool = False
    layer_norm_epsilon: float = 1e-5
    dtype: Any = jnp.float32

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads}).")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def prefix_geometry(self) -> dict:
        """One geometry per prefixed side: the encoder's layers, and the decoder's twice
        (self-attention and cross-attention)."""
        side = lambda num_layers: layers.Geometry(num_layers, self.num_heads, self.head_dim, self.d_model, self.max_len)
        return {"encoder": side(self.encoder_layers), "decoder": side(self.decoder_layers),
                "cross": side(self.decoder_layers)}


_init = layers.param_init


def _dense(features, axes, name=None):
    return nn.Dense(features, name=name, kernel_init=_init(axes), bias_init=_init(axes[1:], nn.initializers.zeros))


def _norm(c: BartConfig, name=None):
    return nn.LayerNorm(
        epsilon=c.layer_norm_epsilon, dtype=c.dtype, name=name,
        scale_init=_init(("norm",), nn.initializers.ones), bias_init=_init(("norm",), nn.initializers.zeros),
    )


def _attention(c: BartConfig, name=None):
    return layers.Attention(c.num_heads, c.num_heads, c.head_dim, c.d_model, dtype=c.dtype, name=name)


def _prefix(entry):
    """A side's per-layer entry as grouped (K, V), or None."""
    return None if entry is None else tuple(layers.as_groups(entry[name], 3) for name in ("key", "value"))


def _with_columns(mask, entries, rows):
    """`mask` [rows, 1, q, k] with the side's prefix columns in front, when it has a prefix."""
    n = max((entry["key"].shape[-3] for entry in entries if entry is not None), default=0)
    if not n:
        return mask
    return jnp.concatenate([layers.prefix_columns(None, n, rows, mask.shape[2]), mask], axis=-1)


def _mlp_layers(c: BartConfig, names=("fc1", "fc2")):
    return _dense(c.d_ff, ("embed", "mlp"), names[0]), _dense(c.d_model, ("mlp", "embed"), names[1])


def _mlp(fc1, fc2, x):
    return fc2(nn.gelu(fc1(x), approximate=False))


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttn(x)); x = LN(x + Mlp(x))."""

    config: BartConfig

    @nn.compact
    def __call__(self, x, mask, entry):
        c = self.config
        mask = mask if entry is not None else mask[..., mask.shape[-1] - x.shape[1]:]
        x = _norm(c, "self_attn_norm")(x + _attention(c, "self_attn")(x, mask, prefix=_prefix(entry)))
        return _norm(c, "final_norm")(x + _mlp(*_mlp_layers(c), x))


class DecoderLayer(nn.Module):
    """Post-LN: causal self-attention, cross-attention over the encoder, MLP.

    Masks come with prefix columns when the side has a prefix; a layer without one drops them.
    """

    config: BartConfig

    def setup(self):
        c = self.config
        self.self_attn, self.cross_attn = _attention(c), _attention(c)
        self.self_attn_norm, self.cross_attn_norm, self.final_norm = _norm(c), _norm(c), _norm(c)
        self.fc1, self.fc2 = _mlp_layers(c, (None, None))

    def _rest(self, y, memory, cross_mask, cross_entry):
        """Cross-attention (over the memory or its K/V) and the MLP."""
        width = memory[0].shape[1] if isinstance(memory, tuple) else memory.shape[1]
        cross_mask = cross_mask if cross_entry is not None else cross_mask[..., cross_mask.shape[-1] - width:]
        y = self.cross_attn_norm(y + self.cross_attn(y, cross_mask, prefix=_prefix(cross_entry), memory=memory))
        return self.final_norm(y + _mlp(self.fc1, self.fc2, y))

    def __call__(self, y, self_mask, memory, cross_mask, self_entry, cross_entry):
        self_mask = self_mask if self_entry is not None else self_mask[..., self_mask.shape[-1] - y.shape[1]:]
        y = self.self_attn_norm(y + self.self_attn(y, self_mask, prefix=_prefix(self_entry)))
        return self._rest(y, memory, cross_mask, cross_entry)

    def cross_key_value(self, memory):
        return self.cross_attn.key_value(memory)

    def cached(self, y, self_mask, cache, index, cross_mask, self_entry, cross_entry):
        """Decoding: writes y's self-attention K/V at cache slots index.. and attends over prefix +
        cache; cross-attention reads the cache's precomputed encoder K/V. Returns (y, cache)."""
        cache_len = cache["key"].shape[1]
        self_mask = self_mask if self_entry is not None else self_mask[..., self_mask.shape[-1] - cache_len:]
        attended, cache = self.self_attn(y, self_mask, prefix=_prefix(self_entry), cache=cache, index=index)
        y = self.self_attn_norm(y + attended)
        return self._rest(y, (cache["cross_key"], cache["cross_value"]), cross_mask, cross_entry), cache


def _entries(prefix: Optional[Mapping[str, Sequence]], side: str, num_layers: int) -> Sequence:
    entries = (prefix or {}).get(side) or (None,) * num_layers
    if len(entries) != num_layers:
        raise ValueError(
            f"prefix[{side!r}] has {len(entries)} entries but that side has {num_layers} layers; "
            f"give one entry (or None) per layer."
        )
    return entries


def _check_sides(prefix) -> None:
    unknown = set(prefix or {}) - set(SIDES)
    if unknown:
        raise ValueError(f"Unknown prefix sides {sorted(unknown)}; expected some of {SIDES}.")


class Bart(nn.Module):
    config: BartConfig

    def setup(self):
        c = self.config
        self.token_embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=_init(("vocab", "embed")))
        positions = lambda: nn.Embed(c.max_len + _POSITION_OFFSET, c.d_model, embedding_init=_init((None, "embed")))
        self.encoder_position_embed, self.decoder_position_embed = positions(), positions()
        self.encoder_embed_norm, self.decoder_embed_norm = _norm(c), _norm(c)
        self.encoder_layers = [EncoderLayer(c) for _ in range(c.encoder_layers)]  # "encoder_layers_<i>"
        self.decoder_layers = [DecoderLayer(c) for _ in range(c.decoder_layers)]
        self.final_logits_bias = self.param("final_logits_bias", _init(("vocab",), nn.initializers.zeros), (c.vocab_size,))

    def _embed(self, ids, positions, table, norm):
        scale = math.sqrt(self.config.d_model) if self.config.scale_embedding else 1.0
        x = self.token_embed(ids) * scale + table(positions + _POSITION_OFFSET)
        return norm(x.astype(self.config.dtype))

    def encode(self, tokens: Array, attention_mask: Optional[Array] = None, prefix=None) -> Array:
        """Encoder outputs [batch, m_enc, embed]; only prefix["encoder"] is used."""
        _check_sides(prefix)
        batch, m_enc = tokens.shape
        valid = jnp.ones((batch, m_enc), bool) if attention_mask is None else attention_mask.astype(bool)
        x = self._embed(tokens, jnp.broadcast_to(jnp.arange(m_enc), (batch, m_enc)),
                        self.encoder_position_embed, self.encoder_embed_norm)
        entries = _entries(prefix, "encoder", self.config.encoder_layers)
        mask = _with_columns(layers.full_mask(valid, m_enc), entries, batch)
        for layer, entry in zip(self.encoder_layers, entries):
            x = layer(x, mask, entry)
        return x

    def _logits(self, y):
        return self.token_embed.attend(y) + self.final_logits_bias

    def _decoder_entries(self, prefix):
        c = self.config
        return _entries(prefix, "decoder", c.decoder_layers), _entries(prefix, "cross", c.decoder_layers)

    def __call__(
        self,
        tokens: Array,
        decoder_tokens: Array,
        *,
        prefix: Optional[Mapping[str, Sequence]] = None,
        attention_mask: Optional[Array] = None,
        decoder_attention_mask: Optional[Array] = None,
        decoder_positions: Optional[Array] = None,
    ) -> Array:
        """Logits [batch, m_dec, vocab]. tokens: [batch, m_enc]; decoder_tokens: [batch, m_dec]."""
        _check_sides(prefix)
        batch, m_enc = tokens.shape
        m_dec = decoder_tokens.shape[1]
        valid = jnp.ones((batch, m_enc), bool) if attention_mask is None else attention_mask.astype(bool)
        dec_valid = (
            jnp.ones((batch, m_dec), bool) if decoder_attention_mask is None else decoder_attention_mask.astype(bool)
        )
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(m_dec), (batch, m_dec))
        x = self.encode(tokens, valid, prefix)
        y = self._embed(decoder_tokens, decoder_positions, self.decoder_position_embed, self.decoder_embed_norm)
        self_entries, cross_entries = self._decoder_entries(prefix)
        self_mask = _with_columns(layers.causal_mask(dec_valid, m_dec), self_entries, batch)
        cross_mask = _with_columns(layers.full_mask(valid, m_dec), cross_entries, batch)
        for layer, self_entry, cross_entry in zip(self.decoder_layers, self_entries, cross_entries):
            y = layer(y, self_mask, x, cross_mask, self_entry, cross_entry)
        return self._logits(y)

    def init_cache(self, memory: Array, length: int) -> tuple:
        """Decode cache for encoder outputs memory [rows, m_enc, embed]: per decoder layer an empty
        self-attention cache {"key", "value"} [rows, length, heads, head_dim] and the cross-attention
        K/V of the memory {"cross_key", "cross_value"} [rows, m_enc, heads, head_dim], computed once."""
        c = self.config
        empty = layers.empty_cache(c.prefix_geometry["decoder"], memory.shape[0], length, c.dtype)
        return tuple(
            dict(zip(("cross_key", "cross_value"), layer.cross_key_value(memory))) | layer_cache
            for layer, layer_cache in zip(self.decoder_layers, empty)
        )

    def decode_step(self, decoder_tokens, cache, index, memory_valid, *, prefix=None):
        """Runs decoder_tokens [rows, q] at cache slots (= positions) index..; jit-safe.

        memory_valid: [rows, m_enc] bool. prefix: as for `__call__` (its "encoder" side is
        ignored: the memory is already encoded). Returns (logits [rows, q, vocab], cache).
        """
        _check_sides(prefix)
        rows, q = decoder_tokens.shape
        positions = jnp.broadcast_to(index + jnp.arange(q), (rows, q))
        y = self._embed(decoder_tokens, positions, self.decoder_position_embed, self.decoder_embed_norm)
        cache_len = cache[0]["key"].shape[1]
        written = jnp.arange(cache_len)[None, :] <= (index + jnp.arange(q))[:, None]  # [q, cache_len]
        self_entries, cross_entries = self._decoder_entries(prefix)
        self_mask = _with_columns(jnp.broadcast_to(written[None, None], (rows, 1, q, cache_len)), self_entries, rows)
        cross_mask = _with_columns(layers.full_mask(memory_valid.astype(bool), q), cross_entries, rows)
        new_cache = []
        for layer, layer_cache, self_entry, cross_entry in zip(self.decoder_layers, cache, self_entries, cross_entries):
            y, layer_cache = layer.cached(y, self_mask, layer_cache, index, cross_mask, self_entry, cross_entry)
            new_cache.append(layer_cache)
        return self._logits(y), tuple(new_cache)


def init_params(model: Bart, rng: Array, seq_len: int = 8) -> dict:
    """Random base parameters (unboxed; see `logical_axes` for their axis names)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return nn.meta.unbox(model.init(rng, tokens, tokens)["params"])


def logical_axes(model: Bart) -> dict:
    """Logical axis names of every base parameter, as a PartitionSpec pytree."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    return nn.get_partition_spec(jax.eval_shape(model.init, jax.random.key(0), tokens, tokens))["params"]


def forward(model, base_params, batch, prefix_inputs, rng, deterministic):
    """The loss's logits at decoder positions [batch, m_dec, vocab] (BART here has no dropout)."""
    return model.apply(
        {"params": base_params}, batch["tokens"], batch["decoder_tokens"], attention_mask=batch["attention_mask"],
        decoder_attention_mask=batch["decoder_attention_mask"], **prefix_inputs,
    )


def prefill(model, base_params, served, tokens, attention_mask, max_new_tokens, start_tokens, last_only=False):
    """Encodes the sources once, projects every decoder layer's cross-attention K/V once, and
    runs the decoder's start tokens; returns (logits, (cache, memory_valid), start length).

    served: {} or {"prefix": {side: per-layer K/V}, "mask": [1, n]}, one task for every row.
    """
    if not len(start_tokens):
        raise ValueError("An encoder-decoder needs decoder start tokens (pipeline.decoder_prompt).")
    variables, prefix = {"params": base_params}, served.get("prefix")
    memory = model.apply(variables, tokens, attention_mask, prefix, method=Bart.encode)
    cache = model.apply(variables, memory, len(start_tokens) + max_new_tokens, method=Bart.init_cache)
    start = jnp.broadcast_to(jnp.asarray(start_tokens, jnp.int32), (tokens.shape[0], len(start_tokens)))
    logits, cache = model.apply(variables, start, cache, 0, attention_mask, prefix=prefix, method=Bart.decode_step)
    return logits[:, -1:] if last_only else logits, (cache, attention_mask), len(start_tokens)


def step(model, base_params, served, start_length, rows, token, t):
    cache, memory_valid = rows
    logits, cache = model.apply({"params": base_params}, token[:, None], cache, start_length + t, memory_valid,
                                prefix=served.get("prefix"), method=Bart.decode_step)
    return logits[:, 0], (cache, memory_valid)
