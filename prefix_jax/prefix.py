"""Prefix specs, their trainable parameters, and what the model receives from them.

Four kinds (see DESIGN.md, section 1):

  hidden  Per-layer hidden-state prefixes P^l [n, d]: H^l = [P^l ; h^l], only the
          input rows go on, layer l+1 gets a fresh P^{l+1}. L * n * d numbers.
  kv      Per-layer key/value prefixes (Li & Liang 2021): 2 * L * n * d numbers,
          optionally produced during training by the reparameterisation MLP
          Embedding(n, d) -> Linear(d, mid) -> tanh -> Linear(mid, L * 2 * d),
          which `fold` turns into plain K/V for saving and serving.
  prompt  Prompt tuning (Lester et al. 2021): n soft tokens prepended once, after
          the embedding layer; their outputs are passed on. n * d numbers. With
          length n this is also Li & Liang's EMB-n baseline.
  infix   Li & Liang's [x; INFIX; y] (section 7.2): per-layer K/V exactly as `kv`
          (reparameterisation included), seen only by the rows after the source.
          The source's closing <|endoftext|> is the first such row, so every target
          token, the first included, is predicted from rows that see the infix; those
          rows' positions are shifted by n, as if the infix occupied n positions.

Everything here works on a prefix geometry (`models.layers.Geometry`: layers, key/value
heads, head_dim, width), never on a family's config: `config.prefix_geometry` gives it.
An encoder-decoder's geometry is a mapping of sides ("encoder", "decoder", "cross"), each
prefixed by its own `kv` tree as Li & Liang's seq2seq code does (one spec, its own MLP per
side). Trainable parameters are stored stacked over layers (`[L, n, ...]`, cheap to shard
and save); `model_inputs` slices them into the per-layer pytree the model takes. Under
grouped-query attention K/V are `num_kv_heads` wide, as PEFT sizes them. All pure.
"""

import dataclasses
from typing import Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prefix_jax.models.decoder import DecoderOnly
from prefix_jax.models.layers import Geometry, layer_name

KINDS = ("hidden", "kv", "prompt", "infix")
KV_KINDS = ("kv", "infix")  # Kinds whose trainable parameters are per-layer K/V.
INITS = ("random", "words")
Params = dict
Geometries = Union[Geometry, Mapping[str, Geometry]]  # One stack, or an encoder-decoder's sides.


@dataclasses.dataclass(frozen=True)
class PrefixSpec:
    """What kind of prefix, how long, and how it is parameterised; hashable."""

    kind: str
    length: int
    reparam_dim: int = 0  # kv / infix only: width of the reparameterisation MLP; 0 learns K/V directly.
    literal: bool = False  # hidden only: run layers on [P; h] and slice (the reference path).

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown prefix kind {self.kind!r}; expected one of {KINDS}.")
        if self.length < 0:
            raise ValueError(f"Prefix length must be >= 0, got {self.length}.")
        if self.reparam_dim < 0:
            raise ValueError(f"reparam_dim must be >= 0, got {self.reparam_dim}.")
        if self.reparam_dim and self.kind not in KV_KINDS:
            raise ValueError(
                f"reparam_dim={self.reparam_dim} only applies to kinds {KV_KINDS} (got {self.kind!r})."
            )
        if self.literal and self.kind != "hidden":
            raise ValueError(f"literal=True only applies to kind 'hidden' (got {self.kind!r}).")


def _sides(spec: PrefixSpec, geometry: Geometries) -> Optional[Mapping[str, Geometry]]:
    """The sides of an encoder-decoder geometry (checking the kind), or None for one stack."""
    if isinstance(geometry, Geometry):
        return None
    if not isinstance(geometry, Mapping):
        raise TypeError(f"Expected a prefix geometry (a model config's .prefix_geometry), got {type(geometry).__name__}.")
    if spec.kind != "kv":
        raise ValueError(
            f"An encoder-decoder prefix is Li & Liang's key/value prefix: set prefix.kind='kv' (got {spec.kind!r})."
        )
    return geometry


def _kv_width(g: Geometry) -> int:
    return g.num_kv_heads * g.head_dim


def init_random(spec: PrefixSpec, geometry: Geometries, rng: jax.Array) -> Params:
    """Random prefix parameters (each side its own, from independent keys).

    Hidden and prompt prefixes are drawn at the scale of the model's embeddings
    (hidden ones pass through the layer's norm, so their scale barely matters); K/V at
    GPT-2's initialiser scale. The reparameterisation follows PyTorch's defaults
    (N(0, 1) embedding) with LeCun-normal kernels.
    """
    if (sides := _sides(spec, geometry)) is not None:
        keys = jax.random.split(rng, len(sides))
        return {side: init_random(spec, g, key) for (side, g), key in zip(sides.items(), keys)}
    g = geometry
    n, d, layers = spec.length, g.d_model, g.num_layers
    normal = lambda key, shape, std: std * jax.random.normal(key, shape, jnp.float32)
    keys = jax.random.split(rng, 3)
    if spec.kind == "hidden":
        return {"hidden": normal(keys[0], (layers, n, d), 0.02)}
    if spec.kind == "prompt":
        return {"prompt": normal(keys[0], (n, d), 0.02)}
    if not spec.reparam_dim:
        shape = (layers, n, g.num_kv_heads, g.head_dim)
        return {"key": normal(keys[0], shape, 0.02), "value": normal(keys[1], shape, 0.02)}
    mid, out = spec.reparam_dim, layers * 2 * _kv_width(g)
    lecun = jax.nn.initializers.lecun_normal()
    return {
        "embedding": normal(keys[0], (n, d), 1.0),
        "hidden_kernel": lecun(keys[1], (d, mid)),
        "hidden_bias": jnp.zeros((mid,)),
        "out_kernel": lecun(keys[2], (mid, out)),
        "out_bias": jnp.zeros((out,)),
    }


def _key_values(model: DecoderOnly, base_params: Params, hidden: Sequence) -> dict:
    """Stacked K/V [L, n, kv_heads, head_dim] of per-layer hidden-state prefix rows."""
    kv = model.apply({"params": base_params}, list(hidden), method=DecoderOnly.prefix_key_values)
    return {name: jnp.stack([layer[name] for layer in kv]) for name in ("key", "value")}


def init_from_tokens(
    spec: PrefixSpec, model: DecoderOnly, base_params: Params, tokens: Sequence[int],
    rng: Optional[jax.Array] = None, fit_steps: int = 500, fit_lr: float = 1e-4,
) -> Params:
    """Prefix initialised from the activations of real words (Li & Liang, section 7.2).

    The frozen model reads `tokens` (e.g. the tokenised "table-to-text:") as an
    ordinary input; P^l is that input at layer l (hidden), or its keys and values
    (kv), or the embedding-layer activations (prompt). The tokens are cycled or
    truncated to the prefix length. Decoder-only models.

    A reparameterised kv prefix cannot be set to those keys and values (the MLP has no
    inverse): its MLP starts at random from `rng` and is fitted to them, as the official
    code does (`low_data_init=3`: Adam, mean squared error, lr 1e-4, 500 steps).
    """
    if not isinstance(model, DecoderOnly):
        raise ValueError("init='words' is defined for decoder-only models; use init='random'.")
    if len(tokens) == 0:
        raise ValueError("init='words' needs at least one token.")
    if spec.reparam_dim:
        if rng is None:
            raise ValueError("init='words' with reparam_dim > 0 needs an rng for the MLP it fits.")
        geometry = model.config.prefix_geometry
        target = init_from_tokens(dataclasses.replace(spec, reparam_dim=0), model, base_params, tokens)
        return fit_reparameterisation(init_random(spec, geometry, rng), target, geometry, fit_steps, fit_lr)
    words = jnp.asarray(np.resize(np.asarray(tokens, np.int32), spec.length))[None]  # [1, n]
    _, state = model.apply({"params": base_params}, words, mutable=["intermediates"])
    layer_inputs = [  # L x [n, d]
        state["intermediates"][layer_name(l)]["layer_input"][0][0] for l in range(model.config.num_layers)
    ]
    if spec.kind == "prompt":
        return {"prompt": layer_inputs[0]}
    if spec.kind == "hidden":
        return {"hidden": jnp.stack(layer_inputs)}
    return _key_values(model, base_params, layer_inputs)


def fit_reparameterisation(params: Params, target: dict, geometry: Geometry, steps: int, lr: float) -> Params:
    """The MLP's parameters moved (Adam, `steps` full-batch steps) to output `target`'s K/V."""
    optimizer = optax.adam(lr)

    def squared_error(p):
        kv = _reparameterise(p, geometry)
        return (jnp.mean((kv["key"] - target["key"]) ** 2) + jnp.mean((kv["value"] - target["value"]) ** 2)) / 2

    def step(carry, _):
        p, state = carry
        grads = jax.grad(squared_error)(p)
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, optimizer.init(p)), None, length=steps))(params)
    return params


def _reparameterise(params: Params, g: Geometry) -> dict:
    """Li & Liang's MLP: [n, d] embedding -> stacked K/V [L, n, kv_heads, head_dim] each."""
    hidden = jnp.tanh(params["embedding"] @ params["hidden_kernel"] + params["hidden_bias"])
    out = hidden @ params["out_kernel"] + params["out_bias"]  # [n, L * 2 * kv_width]
    # Last axis is [L0 K | L0 V | L1 K | ...], PEFT's layout.
    n = out.shape[0]
    out = out.reshape(n, g.num_layers, 2, g.num_kv_heads, g.head_dim)
    out = out.transpose(2, 1, 0, 3, 4)  # [2, L, n, kv_heads, head_dim]
    return {"key": out[0], "value": out[1]}


def fold(spec: PrefixSpec, params: Params, geometry: Geometries):
    """Evaluates the reparameterisation once (each side's): returns a plain kv spec and its K/V.

    Use the result for saving and serving; the MLP is only a training device.
    """
    if not spec.reparam_dim:
        return spec, params
    plain = dataclasses.replace(spec, reparam_dim=0)
    if (sides := _sides(spec, geometry)) is not None:
        return plain, {side: _reparameterise(params[side], g) for side, g in sides.items()}
    return plain, _reparameterise(params, geometry)


def hidden_to_kv(spec: PrefixSpec, params: Params, model: DecoderOnly, base_params: Params):
    """Compiles a hidden-state prefix to the equivalent kv prefix (exactly; see tests)."""
    if spec.kind != "hidden":
        raise ValueError(f"hidden_to_kv needs a 'hidden' prefix, got {spec.kind!r}.")
    return PrefixSpec(kind="kv", length=spec.length), _key_values(model, base_params, params["hidden"])


def after_source(loss_mask: jax.Array) -> jax.Array:
    """[batch, m] bool: the rows an infix precedes, from the one predicting the first target token on.

    loss_mask: [batch, m], 1 on target tokens (pipeline.encode). Rows of a sequence
    without targets (batch padding) are all False.
    """
    predicts_target = jnp.pad(loss_mask[:, 1:] > 0, ((0, 0), (0, 1)))
    return jnp.cumsum(predicts_target, axis=1) > 0


def _per_layer(kv: dict) -> tuple:
    return tuple({"key": k, "value": v} for k, v in zip(kv["key"], kv["value"]))


def model_inputs(
    spec: Optional[PrefixSpec], params: Params, geometry: Geometries, loss_mask: Optional[jax.Array] = None,
    positions: Optional[jax.Array] = None,
) -> dict:
    """Keyword arguments for the model: `prefix=` (one entry per layer; per side for an
    encoder-decoder) or `prompt=`.

    An infix also needs the batch's `loss_mask` ([batch, m]) to know where each source
    ends; it returns `prefix_queries` and `positions`: the rows' own `positions`
    (default 0..m-1; left-padded decoding passes its own) shifted by n after the source.
    A sequence with an infix must fit in length + n <= max_len: positions past the
    model's range are clamped to its last one, which only batch padding should reach.
    """
    if spec is None:
        return {}
    if (sides := _sides(spec, geometry)) is not None:
        return {"prefix": {side: model_inputs(spec, params[side], g)["prefix"] for side, g in sides.items()}}
    if spec.kind == "prompt":
        return {"prompt": params["prompt"]}
    if spec.kind == "hidden":
        return {"prefix": tuple({"hidden": p} for p in params["hidden"]), "literal_prefix": spec.literal}
    inputs = {"prefix": _per_layer(_reparameterise(params, geometry) if spec.reparam_dim else params)}
    if spec.kind == "kv":
        return inputs
    if loss_mask is None:
        raise ValueError("An infix needs the batch's loss_mask to know where each source ends.")
    after = after_source(loss_mask)
    positions = jnp.arange(after.shape[1]) if positions is None else positions
    positions = jnp.minimum(positions + spec.length * after, geometry.max_len - 1)
    return {**inputs, "prefix_queries": after, "positions": positions}


def served_size(spec: PrefixSpec, geometry: Geometries) -> int:
    """Numbers a task's prefix needs at serving time: L*n*d (hidden), 2*L*n*kv_width (kv, infix;
    summed over sides) or n*d (prompt)."""
    if (sides := _sides(spec, geometry)) is not None:
        return sum(served_size(spec, g) for g in sides.values())
    g, n = geometry, spec.length
    kv = 2 * g.num_layers * n * _kv_width(g)
    return {"hidden": g.num_layers * n * g.d_model, "kv": kv, "infix": kv, "prompt": n * g.d_model}[spec.kind]


def num_params(tree) -> int:
    """Numbers in a pytree of arrays (or of shapes, e.g. from jax.eval_shape)."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def count_params(spec: PrefixSpec, geometry: Geometries, base_params: Params) -> dict:
    """Trainable and served prefix sizes, and their share of the base model."""
    base = num_params(base_params)
    trained = num_params(jax.eval_shape(lambda key: init_random(spec, geometry, key), jax.random.key(0)))
    served = served_size(spec, geometry)
    return {
        "base": base,
        "trained": trained,
        "served": served,
        "trained_share_of_base": trained / base,
        "served_share_of_base": served / base,
    }
