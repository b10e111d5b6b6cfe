"""Range checks of an experiment config, run before any data is read or weights loaded.

A value outside its range fails here with one line naming the field, the value and
what is allowed, instead of deep in the run (a ZeroDivisionError after the dev pass, an
Orbax refusal after training, or worse a run that "succeeds" on nothing). Checks that
need more than the config (whether any target survives `model.max_len`, whether the
data files parse) stay where that knowledge is.
"""

import math

import ml_collections

from prefix_jax.errors import ConfigError
from prefix_jax.models import families

# Integer fields and their least allowed value.
AT_LEAST = {
    "model.max_len": 1,
    "prefix.reparam_dim": 0,
    "train.top_k": 0,
    "train.warmup_steps": 0,
    "train.num_steps": 1,
    "train.batch_size": 1,
    "train.log_every": 1,
    "train.eval_every": 1,
    "train.eval_sequences": 0,
    "data.bucket_size": 1,
    "data.pack_width": 0,
    "data.block_len": 1,
    "data.max_source_len": 2,  # Room for BOS/EOS and one token.
    "data.max_target_len": 2,
    "data.num_train": 0,
    "data.num_dev": 0,
    "data.num_test": 0,
    "checkpoint.every": 1,
    "checkpoint.keep": 1,
    "decode.max_new_tokens": 1,
    "decode.batch_size": 1,
    "decode.beam_size": 1,
    "decode.top_k": 0,
    "decode.no_repeat_ngram_size": 0,
    "decode.min_new_tokens": 0,
    "decode.max_inputs": 0,
    "serve.max_len": 2,  # A prompt token and a new one.
    "serve.rows": 1,
    "serve.max_queue": 1,
    "serve.max_tokens": 1,
    "serve.task_slots": 1,
}

# Float fields: (low, high, whether each end is allowed).
BETWEEN = {
    "train.lr": (0.0, math.inf, False, False),
    "train.weight_decay": (0.0, math.inf, True, False),
    "train.adam_b1": (0.0, 1.0, True, False),
    "train.adam_b2": (0.0, 1.0, True, False),
    "train.adam_eps": (0.0, math.inf, False, False),
    "train.grad_clip_norm": (0.0, math.inf, False, False),
    "decode.temperature": (0.0, math.inf, False, False),
    "decode.top_p": (0.0, 1.0, False, True),
    "decode.length_penalty": (-math.inf, math.inf, False, False),
    "decode.eos_penalty": (0.0, math.inf, True, False),
    "serve.grace_seconds": (0.0, math.inf, True, False),
}


def _value(config: ml_collections.ConfigDict, field: str):
    section, key = field.split(".")
    return config[section][key]


def _interval(low, high, low_in, high_in) -> str:
    return f"{'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def problems(config: ml_collections.ConfigDict, *, decoding: bool, serving: bool = False) -> list[str]:
    """Every out-of-range field of `config`, one sentence each (empty when all is well).
    The decode and serve sections' bounds on model.max_len apply only to the commands that
    use them."""
    found = []
    for field, low in AT_LEAST.items():
        value = _value(config, field)
        if value < low:
            found.append(f"{field} is {value}; it must be an integer >= {low}")
    for field, bounds in BETWEEN.items():
        value, (low, high, low_in, high_in) = float(_value(config, field)), bounds
        inside = (low < value or (low_in and value == low)) and (value < high or (high_in and value == high))
        if not inside:
            found.append(f"{field} is {value}; it must be a finite number in {_interval(*bounds)}")
    if config.prefix.kind != "none" and config.prefix.length < 1:
        found.append(
            f"prefix.length is {config.prefix.length} with prefix.kind={config.prefix.kind!r}; "
            f"use a length >= 1, or prefix.kind='none' for no prefix"
        )
    max_len = config.model.max_len
    if not families.get(config.model.family).encoder_decoder:
        for field in ("data.bucket_size", "data.pack_width"):
            if (value := _value(config, field)) > max_len:
                found.append(f"{field} is {value}; it must be <= model.max_len ({max_len})")
        if decoding and config.decode.max_new_tokens >= max_len:
            found.append(
                f"decode.max_new_tokens is {config.decode.max_new_tokens}; it must be < model.max_len ({max_len}), "
                f"which holds the source and the new tokens"
            )
    if serving and config.serve.max_len > max_len:
        found.append(f"serve.max_len is {config.serve.max_len}; it must be <= model.max_len ({max_len})")
    for axis, size in config.mesh.items():
        if size != -1 and size < 1:
            found.append(f"mesh.{axis} is {size}; it must be >= 1, or -1 for all remaining devices")
    return found


def check(config: ml_collections.ConfigDict, *, decoding: bool, serving: bool = False) -> None:
    """Raises ConfigError naming every out-of-range field of `config`."""
    if found := problems(config, decoding=decoding, serving=serving):
        raise ConfigError("Config: " + "; ".join(found) + ".")
