"""Llama (RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases), a decoder-only family.

The prefix, prompt, mask and cache logic is `decoder.DecoderOnly`'s; this file is the
architecture. Key/value prefixes are `[n, kv_heads, head_dim]` (grouped-query sized) and
used unrotated: prefix rows sit at position 0, where RoPE is the identity, which is also
how Hugging Face treats a prefix passed as `past_key_values` (PEFT prefix tuning: its
cached keys are used as given). A hidden-state prefix's literal form runs its rows at
position 0 too, so literal, efficient and K/V forms agree (tests/test_llama_family.py).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefix_jax.models import adapters, decoder, layers

rope = layers.rope


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
    adapter_dim: int = dataclasses.field(default=0, repr=False)  # As in GPT2Config.
    dtype: Any = jnp.float32  # Activations; parameters are always float32.
    remat: str = dataclasses.field(default="none", repr=False)  # As in GPT2Config.

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})."
            )
        if self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}.")
        if self.adapter_dim < 0:
            raise ValueError(f"adapter_dim must be >= 0 (0 = no adapters), got {self.adapter_dim}.")
        decoder.check_remat(self.remat)

    @property
    def prefix_geometry(self) -> layers.Geometry:
        return layers.Geometry(self.num_layers, self.num_kv_heads, self.head_dim, self.d_model, self.max_len)


class RMSNorm(nn.Module):
    epsilon: float
    dtype: Any

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", layers.param_init(("norm",), nn.initializers.ones), (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return (scale * x32).astype(self.dtype)


def _dense(features, axes, name, dtype):
    return nn.Dense(features, use_bias=False, dtype=dtype, kernel_init=layers.param_init(axes), name=name)


class Mlp(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    config: LlamaConfig

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.config
        gate = _dense(c.d_ff, ("embed", "mlp"), "gate", c.dtype)(x)
        up = _dense(c.d_ff, ("embed", "mlp"), "up", c.dtype)(x)
        return _dense(c.d_model, ("mlp", "embed"), "down", c.dtype)(nn.silu(gate) * up)


class Block(decoder.PreNormBlock):
    """Pre-norm layer: x + Attn(RMSNorm(x)), then x + Mlp(RMSNorm(x))."""

    config: LlamaConfig

    def setup(self):
        c = self.config
        self.attn_norm = RMSNorm(c.rms_norm_epsilon, c.dtype)
        self.mlp_norm = RMSNorm(c.rms_norm_epsilon, c.dtype)
        self.attn = layers.Attention(c.num_heads, c.num_kv_heads, c.head_dim, c.d_model, use_bias=False,
                                     rope_theta=c.rope_theta, dtype=c.dtype)
        self.mlp = Mlp(c)
        adapters.make(self)

    def attn_input(self, x):
        return self.attn_norm(x)

    def mlp_input(self, x):
        return self.mlp_norm(x)


class Llama(decoder.DecoderOnly):
    config: LlamaConfig

    def setup(self):
        c = self.config
        self.token_embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=layers.param_init(("vocab", "embed")))
        self.layers = decoder.make_layers(Block, c)
        self.final_norm = RMSNorm(c.rms_norm_epsilon, c.dtype)
        if not c.tie_embeddings:
            self.lm_head = _dense(c.vocab_size, ("embed", "vocab"), "lm_head", c.dtype)

    def embed(self, tokens, positions, deterministic=True):
        """h^0 = token embeddings (positions enter through RoPE in every layer)."""
        return self.token_embed(tokens).astype(self.config.dtype)

    def logits(self, x):
        x = self.final_norm(x)
        if self.config.tie_embeddings:
            return self.token_embed.attend(x)
        return self.lm_head(x)
