"""A Llama-style decoder (RoPE, RMSNorm, SwiGLU, grouped-query attention) with per-layer prefixes.

Functional like `gpt2.GPT2`: base weights through `apply`'s variables, the prefix
through `prefix=`, one entry per layer:

  * `{"key": K, "value": V}` with K, V `[n, kv_heads, head_dim]` (or with a leading
    batch axis): a key/value prefix. Prefix keys are used as given, never rotated:
    Hugging Face caches keys already rotated, so a prefix passed as
    `past_key_values` (PEFT prefix tuning) is attended to unrotated too.
  * `None`: that layer has no prefix.

Hidden-state prefixes are not offered: under RoPE a prefix row's key depends on the
position one assigns it, a choice PEFT does not make (it stores keys). Input rows
get positions 0..m-1 unless `positions` says otherwise (pass `n + arange(m)` for
Hugging Face's `past_key_values` convention, as PEFT uses).
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefix_jax.models import gpt2

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-style model; frozen and hashable."""

    vocab_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    d_model: int
    d_ff: int
    max_len: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_epsilon: float = 1e-6
    tie_embeddings: bool = False
    dtype: Any = jnp.float32  # Activations; parameters are always float32.

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})."
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}.")


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding in Hugging Face's layout (halves, not interleaved pairs).

    x: [batch, len, heads, head_dim]; positions: [batch, len].
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, len, half]
    cos, sin = (jnp.concatenate([f(angles)] * 2, axis=-1)[:, :, None, :] for f in (jnp.cos, jnp.sin))
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


class RMSNorm(nn.Module):
    epsilon: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (scale * x32).astype(self.dtype)


def _dense(features, axes, name, axis=-1):
    init = nn.with_logical_partitioning(nn.initializers.normal(0.02), axes)
    return nn.DenseGeneral(features, axis=axis, use_bias=False, kernel_init=init, name=name)


class Attention(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, prefix_kv=None):
        # x: [batch, q_len, embed]; mask: [batch, 1, q_len, kv_len].
        c = self.config
        query = rope(_dense((c.num_heads, c.head_dim), ("embed", "heads", "kv"), "query")(x), positions, c.rope_theta)
        key = rope(_dense((c.num_kv_heads, c.head_dim), ("embed", "heads", "kv"), "key")(x), positions, c.rope_theta)
        value = _dense((c.num_kv_heads, c.head_dim), ("embed", "heads", "kv"), "value")(x)
        if prefix_kv is not None:  # Each [batch, n, kv_heads, head_dim], before the input keys.
            key = jnp.concatenate([prefix_kv[0].astype(key.dtype), key], axis=1)
            value = jnp.concatenate([prefix_kv[1].astype(value.dtype), value], axis=1)
        batch, q_len = x.shape[:2]
        groups = c.num_heads // c.num_kv_heads  # Query heads sharing one key/value head.
        query = query.reshape(batch, q_len, c.num_kv_heads, groups, c.head_dim)
        scores = jnp.einsum("bqhgd,bkhd->bhgqk", query, key) / jnp.sqrt(c.head_dim)
        scores = jnp.where(mask[:, :, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(scores, axis=-1).astype(c.dtype)
        out = jnp.einsum("bhgqk,bkhd->bqhgd", weights, value).reshape(batch, q_len, c.num_heads, c.head_dim)
        return _dense(c.d_model, ("heads", "kv", "embed"), "out", axis=(-2, -1))(out)


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        gate = _dense(c.d_ff, ("embed", "mlp"), "gate")(x)
        up = _dense(c.d_ff, ("embed", "mlp"), "up")(x)
        return _dense(c.d_model, ("mlp", "embed"), "down")(nn.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm layer: x + Attn(RMSNorm(x)), then x + Mlp(RMSNorm(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, positions, mask, prefix_kv=None):
        c = self.config
        x = x + Attention(c, name="attn")(RMSNorm(c.rms_norm_epsilon, c.dtype, name="attn_norm")(x), positions, mask, prefix_kv)
        return x + Mlp(c, name="mlp")(RMSNorm(c.rms_norm_epsilon, c.dtype, name="mlp_norm")(x))


class Llama(nn.Module):
    config: LlamaConfig

    @nn.compact
    def __call__(
        self,
        tokens: Array,
        *,
        prefix: Optional[Sequence[Optional[Mapping[str, Array]]]] = None,
        attention_mask: Optional[Array] = None,
        prefix_mask: Optional[Array] = None,
        positions: Optional[Array] = None,
    ) -> Array:
        """Logits [batch, m, vocab]. tokens, attention_mask (0 = padding): [batch, m]."""
        c = self.config
        batch, m = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, m), bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(m), (batch, m))
        valid = attention_mask.astype(bool)
        embed = nn.Embed(
            c.vocab_size, c.d_model,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("vocab", "embed")),
            name="token_embed",
        )
        x = embed(tokens).astype(c.dtype)  # [batch, m, embed]
        if prefix is None:
            prefix = (None,) * c.num_layers
        if len(prefix) != c.num_layers:
            raise ValueError(
                f"The prefix has {len(prefix)} entries but the model has {c.num_layers} layers; "
                f"give one entry (or None) per layer."
            )
        for i, entry in enumerate(prefix):
            layer = Block(c, name=gpt2.layer_name(i))
            if entry is None:
                x = layer(x, positions, gpt2.attention_mask(valid, m))
                continue
            if "key" not in entry:
                raise ValueError(f"Llama layers take key/value prefixes only; layer {i} got {sorted(entry)}.")
            key = gpt2._with_batch(entry["key"], batch, 3)  # [batch, n, kv_heads, head_dim]
            value = gpt2._with_batch(entry["value"], batch, 3)
            n = key.shape[1]
            prefix_valid = (
                jnp.ones((batch, n), bool) if prefix_mask is None
                else gpt2._with_batch(prefix_mask.astype(bool), batch, 1)
            )
            mask = gpt2.attention_mask(jnp.concatenate([prefix_valid, valid], axis=1), m)
            x = layer(x, positions, mask, (key, value))
        x = RMSNorm(c.rms_norm_epsilon, c.dtype, name="final_norm")(x)
        if c.tie_embeddings:
            return embed.attend(x)
        return _dense(c.vocab_size, ("embed", "vocab"), "lm_head")(x)
