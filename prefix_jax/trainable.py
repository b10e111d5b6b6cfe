"""Which leaves train. One label tree drives both the optimizer and differentiation.

The parameter tree is `{"base": <model params>, "prefix": <prefix params>}`; a
model with adapters holds them inside its layers, `base/layers_<i>/adapter_{attn,mlp}`
(so checkpoints and decoding, which read "base", carry them without special cases).
`label_params` gives every leaf the label TRAINABLE or FROZEN from the tree's
structure (never from substrings of names). The same labels

  * split the tree for `jax.value_and_grad`, so gradients exist only for what
    trains (no base-weight gradients in prefix mode), and
  * build `optax.multi_transform({TRAINABLE: tx, FROZEN: set_to_zero()})`, so the
    optimizer state holds nothing for frozen leaves.

Modes:
  prefix   only the prefix trains (any prefix kind: prompt tuning = EMB-n, infix included).
  full     every base weight trains (full fine-tuning; no prefix).
  top_k    only the last `top_k` layers of the base train (Li & Liang's FT-top2).
  adapter  only the adapters train (model.adapter_dim > 0); LayerNorms stay frozen, so
           the pre-trained weights are bitwise those of every other parameter-efficient mode.
"""

from typing import Any, Sequence

import optax
from flax import traverse_util

from prefix_jax.errors import ConfigError
from prefix_jax.models import adapters

TRAINABLE, FROZEN = "trainable", "frozen"
MODES = ("prefix", "full", "top_k", "adapter")


def _is_adapter(path: tuple) -> bool:
    """base/<layer>/<adapter name>/...: a leaf of one of the layers' adapters."""
    return len(path) > 2 and path[0] == "base" and path[2] in adapters.NAMES


def label_params(params: dict, mode: str, *, top_layers: Sequence[str] = ()) -> dict:
    """A tree shaped like `params` whose leaves are TRAINABLE or FROZEN; mode 'top_k' trains
    the base's subtrees named in `top_layers` (the family names its last k layers)."""
    if mode not in MODES:
        raise ConfigError(f"Unknown training mode {mode!r}; expected one of {MODES}.")
    flat = traverse_util.flatten_dict(params)
    has_prefix = any(path[0] == "prefix" for path in flat)
    has_adapters = any(_is_adapter(path) for path in flat)
    if mode == "prefix" and not has_prefix:
        raise ConfigError("mode='prefix' needs a prefix; set prefix.kind and prefix.length > 0.")
    if mode != "prefix" and has_prefix:
        raise ConfigError(f"mode={mode!r} trains base weights only; remove the prefix (kind='none').")
    if mode == "adapter" and not has_adapters:
        raise ConfigError("mode='adapter' needs adapters; set model.adapter_dim > 0.")
    if mode != "adapter" and has_adapters:
        raise ConfigError(f"The model has adapters (model.adapter_dim > 0) but mode={mode!r}; use mode='adapter' or adapter_dim=0.")
    if mode == "top_k" and not top_layers:
        raise ConfigError("mode='top_k' needs the names of the layers to train.")
    top_layers = set(top_layers)

    def label(path: tuple) -> str:
        group = path[0]
        if mode == "prefix":
            trains = group == "prefix"
        elif mode == "full":
            trains = group == "base"
        elif mode == "adapter":
            trains = _is_adapter(path)
        else:
            trains = group == "base" and path[1] in top_layers
        return TRAINABLE if trains else FROZEN

    return traverse_util.unflatten_dict({path: label(path) for path in flat})


def partition(tree: dict, labels: dict) -> tuple[dict, dict]:
    """Splits `tree` into (trainable, frozen) nested dicts holding only their own leaves.

    Leaves of `tree` that are None (as in updates for frozen leaves) are dropped.
    """
    flat_labels = traverse_util.flatten_dict(labels)
    flat = traverse_util.flatten_dict(tree)
    if flat.keys() != flat_labels.keys():
        raise ValueError(
            "Parameter tree and label tree differ: "
            f"unlabelled {sorted(flat.keys() - flat_labels.keys())}, "
            f"missing {sorted(flat_labels.keys() - flat.keys())}."
        )
    parts = {TRAINABLE: {}, FROZEN: {}}
    for path, leaf in flat.items():
        if leaf is not None:
            parts[flat_labels[path]][path] = leaf
    return (
        traverse_util.unflatten_dict(parts[TRAINABLE]),
        traverse_util.unflatten_dict(parts[FROZEN]),
    )


def combine(*trees: dict) -> dict:
    """Inverse of `partition`: merges trees with disjoint leaves."""
    merged = {}
    for tree in trees:
        flat = traverse_util.flatten_dict(tree)
        if overlap := merged.keys() & flat.keys():
            raise ValueError(f"Trees to combine share leaves: {sorted(overlap)}.")
        merged.update(flat)
    return traverse_util.unflatten_dict(merged)


def as_full_tree(trainable: dict, labels: dict) -> dict:
    """`trainable` laid out like `labels`, with None at every frozen leaf.

    Lets gradients of the trainable partition go through a multi_transform built
    for the whole tree without materialising zeros for the frozen weights.
    """
    flat = traverse_util.flatten_dict(trainable)
    return traverse_util.unflatten_dict(
        {path: flat.get(path) for path in traverse_util.flatten_dict(labels)}
    )


def masked_optimizer(tx: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
    """`tx` on trainable leaves; frozen leaves get zero updates and no state."""
    return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()}, labels)
