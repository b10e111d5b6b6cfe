"""Houlsby adapters (Houlsby et al. 2019), the paper's adapter baseline, for any family.

A layer with adapters passes each sublayer's output through one before the residual sum:
x + A_attn(Attn(N(x))), then x + A_mlp(Mlp(N(x))). Their parameters live inside the
layer (`base/layers_<i>/adapter_{attn,mlp}`), so checkpoints and decoding carry them
without special cases; trainable.py trains only them in mode 'adapter'.
"""

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefix_jax.models.layers import layer_name, param_init

NAMES = ("adapter_attn", "adapter_mlp")  # A layer's adapter submodules, when it has them.


class Adapter(nn.Module):
    """Bottleneck z -> z + up(relu(down(z))) of width `dim`.

    The up-projection starts at zero, so an untrained adapter is exactly the identity
    and the model exactly the base model. 2 * d * r + r + d numbers.
    """

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, z):
        h = nn.Dense(
            self.dim, dtype=self.dtype, kernel_init=param_init(("embed", None)),
            bias_init=param_init((None,), nn.initializers.zeros), name="down",
        )(z)
        return z + nn.Dense(
            z.shape[-1], dtype=self.dtype, kernel_init=param_init((None, "embed"), nn.initializers.zeros),
            bias_init=param_init(("embed",), nn.initializers.zeros), name="up",
        )(nn.relu(h))


def adapt(layer: nn.Module, name: str, z):
    """`layer`'s adapter `name` applied to z, or z when the layer has none."""
    return getattr(layer, name)(z) if layer.config.adapter_dim else z


def make(layer: nn.Module) -> None:
    """Gives `layer` (in its setup) its adapters when its config asks for them."""
    c = layer.config
    if c.adapter_dim:
        layer.adapter_attn, layer.adapter_mlp = Adapter(c.adapter_dim, c.dtype), Adapter(c.adapter_dim, c.dtype)


def split(params: dict) -> tuple[dict, dict]:
    """(params without adapters, {layer: {adapter name: params}}): the base model proper and its adapters."""
    base, adapters = {}, {}
    for name, sub in params.items():
        if isinstance(sub, Mapping) and any(a in sub for a in NAMES):
            adapters[name] = {a: sub[a] for a in NAMES if a in sub}
            sub = {k: v for k, v in sub.items() if k not in NAMES}
        base[name] = sub
    return base, adapters


def add(config, base_params: dict, rng: jax.Array) -> dict:
    """Pre-trained weights with fresh adapters where `config` asks for them and the weights have none.

    Base weights (and adapters already present) are kept as given; each adapter is
    initialised on its own, so no throwaway copy of the whole model is made.
    """
    if not getattr(config, "adapter_dim", 0):
        return base_params
    adapter, z = Adapter(config.adapter_dim, config.dtype), jnp.zeros((1, config.d_model), config.dtype)
    params = dict(base_params)
    for index in range(config.num_layers):
        keys = jax.random.split(jax.random.fold_in(rng, index), len(NAMES))
        fresh = {name: nn.meta.unbox(adapter.init(key, z)["params"]) for name, key in zip(NAMES, keys)}
        params[layer_name(index)] = {**fresh, **base_params[layer_name(index)]}
    return params
