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

from prefix_jax.models import gpt2

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


_init = gpt2._init  # Logical axis names on every parameter (sharding.py maps them to the mesh).


def _dense(features, axes, name=None, axis=-1):
    return nn.DenseGeneral(
        features, axis=axis, name=name, kernel_init=_init(axes),
        bias_init=_init(axes[1:] if axis == -1 else axes[-1:], nn.initializers.zeros),
    )


def _norm(c: BartConfig, name=None):
    return nn.LayerNorm(
        epsilon=c.layer_norm_epsilon, dtype=c.dtype, name=name,
        scale_init=_init(("norm",), nn.initializers.ones), bias_init=_init(("norm",), nn.initializers.zeros),
    )


class Attention(nn.Module):
    config: BartConfig

    def setup(self):
        heads = (self.config.num_heads, self.config.head_dim)
        self.query = _dense(heads, ("embed", "heads", "kv"))
        self.key = _dense(heads, ("embed", "heads", "kv"))
        self.value = _dense(heads, ("embed", "heads", "kv"))
        self.out = _dense(self.config.d_model, ("heads", "kv", "embed"), axis=(-2, -1))

    def key_value(self, memory):
        """[batch, len, embed] -> keys and values, each [batch, len, heads, head_dim]."""
        return self.key(memory), self.value(memory)

    def attend(self, x, key, value, mask, prefix_kv=None):
        # x: [batch, q_len, embed]; key, value: [batch, kv_len, heads, head_dim];
        # mask: [batch, 1, q_len, n + kv_len] with prefix_kv, else [..., kv_len].
        query = self.query(x)
        if prefix_kv is not None:
            key = jnp.concatenate([prefix_kv[0].astype(key.dtype), key], axis=1)
            value = jnp.concatenate([prefix_kv[1].astype(value.dtype), value], axis=1)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(self.config.head_dim)
        scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(self.config.dtype)
        return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, value))

    def __call__(self, x, memory, mask, prefix_kv=None):
        return self.attend(x, *self.key_value(memory), mask, prefix_kv)


def _prefix_and_mask(entry, batch, memory_valid, q_len, causal):
    """(prefix K/V or None, attention mask [batch, 1, q_len, n + kv_len])."""
    prefix_kv = None
    if entry is not None:
        prefix_kv = tuple(gpt2._with_batch(entry[name], batch, 3) for name in ("key", "value"))
        n = prefix_kv[0].shape[1]
        memory_valid = jnp.concatenate([jnp.ones((batch, n), bool), memory_valid], axis=1)
    if causal:
        return prefix_kv, gpt2.attention_mask(memory_valid, q_len)
    return prefix_kv, jnp.broadcast_to(memory_valid[:, None, None, :], (batch, 1, q_len, memory_valid.shape[1]))


def _mlp_layers(c: BartConfig, names=("fc1", "fc2")):
    return _dense(c.d_ff, ("embed", "mlp"), names[0]), _dense(c.d_model, ("mlp", "embed"), names[1])


def _mlp(fc1, fc2, x):
    return fc2(nn.gelu(fc1(x), approximate=False))


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttn(x)); x = LN(x + Mlp(x))."""

    config: BartConfig

    @nn.compact
    def __call__(self, x, valid, entry):
        c = self.config
        prefix_kv, mask = _prefix_and_mask(entry, x.shape[0], valid, x.shape[1], causal=False)
        x = _norm(c, "self_attn_norm")(x + Attention(c, name="self_attn")(x, x, mask, prefix_kv))
        return _norm(c, "final_norm")(x + _mlp(*_mlp_layers(c), x))


class DecoderLayer(nn.Module):
    """Post-LN: causal self-attention, cross-attention over the encoder, MLP."""

    config: BartConfig

    def setup(self):
        c = self.config
        self.self_attn, self.cross_attn = Attention(c), Attention(c)
        self.self_attn_norm, self.cross_attn_norm, self.final_norm = _norm(c), _norm(c), _norm(c)
        self.fc1, self.fc2 = _mlp_layers(c, (None, None))

    def _rest(self, y, cross_key, cross_value, memory_valid, cross_entry):
        """Cross-attention (over given encoder K/V) and the MLP."""
        prefix_kv, mask = _prefix_and_mask(cross_entry, y.shape[0], memory_valid, y.shape[1], causal=False)
        y = self.cross_attn_norm(y + self.cross_attn.attend(y, cross_key, cross_value, mask, prefix_kv))
        return self.final_norm(y + _mlp(self.fc1, self.fc2, y))

    def __call__(self, y, valid, memory, memory_valid, self_entry, cross_entry):
        prefix_kv, mask = _prefix_and_mask(self_entry, y.shape[0], valid, y.shape[1], causal=True)
        y = self.self_attn_norm(y + self.self_attn(y, y, mask, prefix_kv))
        return self._rest(y, *self.cross_attn.key_value(memory), memory_valid, cross_entry)

    def cross_key_value(self, memory):
        return self.cross_attn.key_value(memory)

    def cached(self, y, cache, index, memory_valid, self_entry, cross_entry):
        """Decoding: writes y's self-attention K/V at cache slots index.., attends over prefix +
        cache (slots after a query are masked). Returns (y, updated cache)."""
        rows, q = y.shape[:2]
        new = dict(zip(("key", "value"), self.self_attn.key_value(y)))
        cache = dict(cache) | {
            name: jax.lax.dynamic_update_slice_in_dim(cache[name], new[name].astype(cache[name].dtype), index, axis=1)
            for name in ("key", "value")
        }
        cache_len = cache["key"].shape[1]
        written = jnp.arange(cache_len)[None, :] <= (index + jnp.arange(q))[:, None]  # [q, cache_len]
        key_valid = jnp.broadcast_to(written[None], (rows, q, cache_len))
        if self_entry is not None:
            n = self_entry["key"].shape[-3]
            key_valid = jnp.concatenate([jnp.ones((rows, q, n), bool), key_valid], axis=-1)
        prefix_kv = None if self_entry is None else tuple(
            gpt2._with_batch(self_entry[name], rows, 3) for name in ("key", "value")
        )
        attended = self.self_attn.attend(y, cache["key"], cache["value"], key_valid[:, None], prefix_kv)
        y = self.self_attn_norm(y + attended)
        return self._rest(y, cache["cross_key"], cache["cross_value"], memory_valid, cross_entry), cache


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
        for layer, entry in zip(self.encoder_layers, _entries(prefix, "encoder", self.config.encoder_layers)):
            x = layer(x, valid, entry)
        return x

    def _logits(self, y):
        return self.token_embed.attend(y) + self.final_logits_bias

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
        c = self.config
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
        entries = zip(_entries(prefix, "decoder", c.decoder_layers), _entries(prefix, "cross", c.decoder_layers))
        for layer, (self_entry, cross_entry) in zip(self.decoder_layers, entries):
            y = layer(y, dec_valid, x, valid, self_entry, cross_entry)
        return self._logits(y)

    def init_cache(self, memory: Array, length: int) -> tuple:
        """Decode cache for encoder outputs memory [rows, m_enc, embed]: per decoder layer an empty
        self-attention cache {"key", "value"} [rows, length, heads, head_dim] and the cross-attention
        K/V of the memory {"cross_key", "cross_value"} [rows, m_enc, heads, head_dim], computed once."""
        c = self.config
        shape = (memory.shape[0], length, c.num_heads, c.head_dim)
        caches = []
        for layer in self.decoder_layers:
            cross_key, cross_value = layer.cross_key_value(memory)
            caches.append({"key": jnp.zeros(shape, c.dtype), "value": jnp.zeros(shape, c.dtype),
                           "cross_key": cross_key, "cross_value": cross_value})
        return tuple(caches)

    def decode_step(self, decoder_tokens, cache, index, memory_valid, *, prefix=None):
        """Runs decoder_tokens [rows, q] at cache slots (= positions) index..; jit-safe.

        memory_valid: [rows, m_enc] bool. prefix: as for `__call__` (its "encoder" side is
        ignored: the memory is already encoded). Returns (logits [rows, q, vocab], cache).
        """
        _check_sides(prefix)
        rows, q = decoder_tokens.shape
        positions = jnp.broadcast_to(index + jnp.arange(q), (rows, q))
        y = self._embed(decoder_tokens, positions, self.decoder_position_embed, self.decoder_embed_norm)
        entries = zip(_entries(prefix, "decoder", self.config.decoder_layers),
                      _entries(prefix, "cross", self.config.decoder_layers))
        new_cache = []
        for layer, layer_cache, (self_entry, cross_entry) in zip(self.decoder_layers, cache, entries):
            y, layer_cache = layer.cached(y, layer_cache, index, memory_valid.astype(bool), self_entry, cross_entry)
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
