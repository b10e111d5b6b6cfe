"""GPT-2 (learned positions, pre-LN, GELU MLP, biases), a decoder-only family.

The prefix, prompt, mask and cache logic is `decoder.DecoderOnly`'s; this file is the
architecture: embeddings (token + learned position), blocks, head. Prefix rows never get
position embeddings (see decoder.py).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from prefix_jax.models import adapters, decoder, layers

_init = layers.param_init


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Hyper-parameters of a GPT-2-style model; frozen and hashable (a static jit argument)."""

    vocab_size: int
    num_layers: int
    num_heads: int
    d_model: int
    d_ff: int
    max_len: int
    dropout_rate: float = 0.0
    tie_embeddings: bool = True
    # Houlsby adapters' bottleneck width (0 = none; adapters.py). Left out of the repr that
    # fingerprints the base model in checkpoints: adapters are trained weights, recorded there
    # by the mode and the trainable shapes.
    adapter_dim: int = dataclasses.field(default=0, repr=False)
    layer_norm_epsilon: float = 1e-5
    dtype: Any = jnp.float32  # Activations; parameters are always float32.
    # Activation checkpointing per layer (decoder.REMAT_POLICIES); a compute choice, so out of
    # the repr that fingerprints the base model: a run may resume with another.
    remat: str = dataclasses.field(default="none", repr=False)

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})."
            )
        if self.adapter_dim < 0:
            raise ValueError(f"adapter_dim must be >= 0 (0 = no adapters), got {self.adapter_dim}.")
        decoder.check_remat(self.remat)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def prefix_geometry(self) -> layers.Geometry:
        return layers.Geometry(self.num_layers, self.num_heads, self.head_dim, self.d_model, self.max_len)


class Mlp(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.config
        x = nn.Dense(c.d_ff, dtype=c.dtype, kernel_init=_init(("embed", "mlp")),
                     bias_init=_init(("mlp",), nn.initializers.zeros), name="fc")(x)
        x = nn.gelu(x, approximate=True)  # GPT-2's "gelu_new".
        x = nn.Dense(c.d_model, dtype=c.dtype, kernel_init=_init(("mlp", "embed")),
                     bias_init=_init(("embed",), nn.initializers.zeros), name="proj")(x)
        return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


def _layer_norm(c: GPT2Config):
    return nn.LayerNorm(
        epsilon=c.layer_norm_epsilon, dtype=c.dtype,
        scale_init=_init(("norm",), nn.initializers.ones), bias_init=_init(("norm",), nn.initializers.zeros),
    )


class Block(decoder.PreNormBlock):
    """Pre-LN layer: x + Attn(LN(x)), then x + Mlp(LN(x))."""

    config: GPT2Config

    def setup(self):
        c = self.config
        self.ln_1, self.ln_2 = _layer_norm(c), _layer_norm(c)
        self.attn = layers.Attention(c.num_heads, c.num_heads, c.head_dim, c.d_model,
                                     dropout_rate=c.dropout_rate, dtype=c.dtype)
        self.mlp = Mlp(c)
        adapters.make(self)

    def attn_input(self, x):
        return self.ln_1(x)

    def mlp_input(self, x):
        return self.ln_2(x)


class GPT2(decoder.DecoderOnly):
    config: GPT2Config

    def setup(self):
        c = self.config
        self.token_embed = nn.Embed(c.vocab_size, c.d_model, embedding_init=_init(("vocab", "embed")))
        self.position_embed = nn.Embed(
            c.max_len, c.d_model, embedding_init=_init((None, "embed"), nn.initializers.normal(0.01))
        )
        self.embed_dropout = nn.Dropout(c.dropout_rate)
        self.layers = decoder.make_layers(Block, c)
        self.final_norm = _layer_norm(c)
        if not c.tie_embeddings:
            self.lm_head = nn.Dense(c.vocab_size, use_bias=False, dtype=c.dtype, kernel_init=_init(("embed", "vocab")))

    def embed(self, tokens, positions, deterministic=True):
        """h^0 = token + position embeddings. tokens, positions: [batch, len]."""
        x = self.token_embed(tokens) + self.position_embed(positions)
        return self.embed_dropout(x.astype(self.config.dtype), deterministic=deterministic)

    def logits(self, x):
        """[batch, len, embed] -> [batch, len, vocab]."""
        x = self.final_norm(x)
        if self.config.tie_embeddings:
            return self.token_embed.attend(x)
        return self.lm_head(x)
