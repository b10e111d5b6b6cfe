"""A BART-style encoder-decoder (learned positions, post-LN) with prefixes on every attention.

Li & Liang (2021) prefix both sides of an encoder-decoder, so `prefix=` is a dict of
up to three per-layer sequences, each entry `{"key": K, "value": V}` with K, V
`[n, heads, head_dim]` (or with a leading batch axis) or None:

  * `"encoder"`: prepended to the keys/values of encoder self-attention;
  * `"decoder"`: prepended to decoder self-attention (every decoder query sees it);
  * `"cross"`: prepended to the encoder outputs' keys/values in cross-attention.

A missing key means no prefix there. Positions start at 0 on both sides unless
`decoder_positions` says otherwise.
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


def _dense(features, axes, name, axis=-1):
    return nn.DenseGeneral(
        features, axis=axis, name=name,
        kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:] if axis == -1 else axes[-1:]),
    )


def _norm(c: BartConfig, name: str):
    return nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=c.dtype, name=name)


class Attention(nn.Module):
    config: BartConfig

    @nn.compact
    def __call__(self, x, memory, mask, prefix_kv=None):
        # x: [batch, q_len, embed] queries; memory: [batch, kv_len, embed] keys/values;
        # mask: [batch, 1, q_len, n + kv_len] with prefix_kv, else [..., kv_len].
        c = self.config
        heads = (c.num_heads, c.head_dim)
        query = _dense(heads, ("embed", "heads", "kv"), "query")(x)
        key = _dense(heads, ("embed", "heads", "kv"), "key")(memory)
        value = _dense(heads, ("embed", "heads", "kv"), "value")(memory)
        if prefix_kv is not None:
            key = jnp.concatenate([prefix_kv[0].astype(key.dtype), key], axis=1)
            value = jnp.concatenate([prefix_kv[1].astype(value.dtype), value], axis=1)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / math.sqrt(c.head_dim)
        scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(c.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)
        return _dense(c.d_model, ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)


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


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + SelfAttn(x)); x = LN(x + Mlp(x))."""

    config: BartConfig

    @nn.compact
    def __call__(self, x, valid, entry):
        c = self.config
        prefix_kv, mask = _prefix_and_mask(entry, x.shape[0], valid, x.shape[1], causal=False)
        x = _norm(c, "self_attn_norm")(x + Attention(c, name="self_attn")(x, x, mask, prefix_kv))
        h = _dense(c.d_model, ("mlp", "embed"), "fc2")(nn.gelu(_dense(c.d_ff, ("embed", "mlp"), "fc1")(x), approximate=False))
        return _norm(c, "final_norm")(x + h)


class DecoderLayer(nn.Module):
    """Post-LN: causal self-attention, cross-attention over the encoder, MLP."""

    config: BartConfig

    @nn.compact
    def __call__(self, y, valid, memory, memory_valid, self_entry, cross_entry):
        c = self.config
        batch, m = y.shape[:2]
        prefix_kv, mask = _prefix_and_mask(self_entry, batch, valid, m, causal=True)
        y = _norm(c, "self_attn_norm")(y + Attention(c, name="self_attn")(y, y, mask, prefix_kv))
        prefix_kv, mask = _prefix_and_mask(cross_entry, batch, memory_valid, m, causal=False)
        y = _norm(c, "cross_attn_norm")(y + Attention(c, name="cross_attn")(y, memory, mask, prefix_kv))
        h = _dense(c.d_model, ("mlp", "embed"), "fc2")(nn.gelu(_dense(c.d_ff, ("embed", "mlp"), "fc1")(y), approximate=False))
        return _norm(c, "final_norm")(y + h)


def _entries(prefix: Optional[Mapping[str, Sequence]], side: str, num_layers: int) -> Sequence:
    entries = (prefix or {}).get(side) or (None,) * num_layers
    if len(entries) != num_layers:
        raise ValueError(
            f"prefix[{side!r}] has {len(entries)} entries but that side has {num_layers} layers; "
            f"give one entry (or None) per layer."
        )
    return entries


class Bart(nn.Module):
    config: BartConfig

    @nn.compact
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
        unknown = set(prefix or {}) - set(SIDES)
        if unknown:
            raise ValueError(f"Unknown prefix sides {sorted(unknown)}; expected some of {SIDES}.")
        embed = nn.Embed(
            c.vocab_size, c.d_model, name="token_embed",
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
        )
        scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0

        def embed_side(side, ids, positions):
            table = nn.Embed(c.max_len + _POSITION_OFFSET, c.d_model, name=f"{side}_position_embed")
            x = embed(ids) * scale + table(positions + _POSITION_OFFSET)
            return _norm(c, f"{side}_embed_norm")(x.astype(c.dtype))

        batch, m_enc = tokens.shape
        m_dec = decoder_tokens.shape[1]
        valid = jnp.ones((batch, m_enc), bool) if attention_mask is None else attention_mask.astype(bool)
        dec_valid = (
            jnp.ones((batch, m_dec), bool) if decoder_attention_mask is None else decoder_attention_mask.astype(bool)
        )
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(m_dec), (batch, m_dec))

        x = embed_side("encoder", tokens, jnp.broadcast_to(jnp.arange(m_enc), (batch, m_enc)))
        for i, entry in enumerate(_entries(prefix, "encoder", c.encoder_layers)):
            x = EncoderLayer(c, name=f"encoder_{gpt2.layer_name(i)}")(x, valid, entry)

        y = embed_side("decoder", decoder_tokens, decoder_positions)
        layers = zip(_entries(prefix, "decoder", c.decoder_layers), _entries(prefix, "cross", c.decoder_layers))
        for i, (self_entry, cross_entry) in enumerate(layers):
            y = DecoderLayer(c, name=f"decoder_{gpt2.layer_name(i)}")(y, dec_valid, x, valid, self_entry, cross_entry)
        bias = self.param("final_logits_bias", nn.initializers.zeros, (c.vocab_size,))
        return embed.attend(y) + bias
