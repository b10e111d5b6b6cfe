"""Hugging Face checkpoints -> (model config, params pytree) for the project's models.

A checkpoint is a directory as `save_pretrained` writes it: `config.json` plus
`model.safetensors` (read with `safetensors`; torch not needed) or
`pytorch_model.bin` (needs torch). `config.json`'s `model_type` picks the
converter. Every tensor is accounted for: missing, unexpected or misshapen ones
raise `CheckpointFormatError` naming them, never a silently partial model.

`load_base` is how a run gets its base weights (`config.base_weights`): `detect` tells a
Hugging Face directory from a project one (models/weights.py) by the files in it, and
`load_base` hands it to that format's reader, so a new format is added in those two places.
"""

import dataclasses
import json
import os
from typing import Callable

import numpy as np
from safetensors import flax as safetensors_flax

from prefix_jax import errors
from prefix_jax.data import records
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.models import bart, families, gpt2, layers, llama, weights


class CheckpointFormatError(errors.UserError):
    """The checkpoint directory does not hold what its model type needs."""


_REWRITE = "download the checkpoint again, or write it with Hugging Face's save_pretrained"


def read_config(path: str) -> dict:
    """The directory's config.json as a dict."""
    file = os.path.join(path, "config.json")
    if not os.path.isfile(file):
        raise CheckpointFormatError(
            f"{path!r} has no config.json; give a directory written by Hugging Face's save_pretrained."
        )
    return records.read_json_object(file, CheckpointFormatError, _REWRITE)


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint in `path` as float32 numpy arrays, by name.

    Prefers model.safetensors (or a sharded model.safetensors.index.json; any float
    dtype, bfloat16 included); falls back to pytorch_model.bin, which needs torch.
    """
    safetensors_file = os.path.join(path, "model.safetensors")
    index_file = os.path.join(path, "model.safetensors.index.json")
    torch_file = os.path.join(path, "pytorch_model.bin")
    if os.path.isfile(safetensors_file) or os.path.isfile(index_file):
        if os.path.isfile(safetensors_file):
            files = [safetensors_file]
        else:
            index = records.read_json_object(index_file, CheckpointFormatError, _REWRITE)
            files = [os.path.join(path, name) for name in sorted(set(index["weight_map"].values()))]
        tensors = {}
        for file in files:
            # The flax reader, unlike the numpy one, knows bfloat16 (how most Llama weights ship).
            tensors.update(safetensors_flax.load_file(file))
    elif os.path.isfile(torch_file):
        try:
            import torch
        except ImportError as e:
            raise CheckpointFormatError(
                f"{torch_file} is a PyTorch file and torch is not installed; install the "
                f"[parity] extra or convert the checkpoint to safetensors."
            ) from e
        state = torch.load(torch_file, map_location="cpu", weights_only=True)
        tensors = {name: t.float().numpy() for name, t in state.items()}
    else:
        raise CheckpointFormatError(
            f"{path!r} has neither model.safetensors nor pytorch_model.bin."
        )
    return {name: np.asarray(t, np.float32) for name, t in tensors.items()}


class _Tensors:
    """Takes named tensors out of a checkpoint, checking shapes, and reports the rest."""

    def __init__(self, tensors: dict, path: str, ignore: Callable[[str], bool]):
        self.tensors = {name: t for name, t in tensors.items() if not ignore(name)}
        self.path = path
        self.missing, self.wrong_shape, self.invalid, self.used = [], [], [], set()

    def take(self, name: str, shape: tuple) -> np.ndarray:
        self.used.add(name)
        if name not in self.tensors:
            self.missing.append(name)
            return np.zeros(shape, np.float32)
        tensor = self.tensors[name]
        if tensor.shape != tuple(shape):
            self.wrong_shape.append(f"{name}: {tensor.shape}, expected {tuple(shape)}")
            return np.zeros(shape, np.float32)
        return tensor

    def check(self) -> None:
        unexpected = sorted(set(self.tensors) - self.used)
        problems = [
            f"  {label}: {', '.join(items)}"
            for label, items in (
                ("missing", self.missing), ("wrong shape", self.wrong_shape),
                ("unexpected", unexpected), ("invalid", self.invalid),
            )
            if items
        ]
        if problems:
            raise CheckpointFormatError(
                f"The checkpoint in {self.path!r} does not match its config.json:\n" + "\n".join(problems)
            )


def _strip_prefix(tensors: dict, prefix: str) -> dict:
    """Names relative to the base model: LM-head checkpoints prefix them (`transformer.`)."""
    return {name[len(prefix):] if name.startswith(prefix) else name: t for name, t in tensors.items()}


def _require(hf: dict, key: str, allowed, path: str):
    value = hf.get(key, allowed[0])
    if value not in allowed:
        raise CheckpointFormatError(
            f"{path!r}: config.json has {key}={value!r}; this converter supports {allowed}."
        )


def gpt2_config(hf: dict, path: str = "") -> gpt2.GPT2Config:
    """GPT2Config from a GPT-2 config.json (all sizes: small .. xl)."""
    _require(hf, "activation_function", ("gelu_new",), path)
    _require(hf, "scale_attn_weights", (True,), path)
    _require(hf, "scale_attn_by_inverse_layer_idx", (False,), path)
    _require(hf, "add_cross_attention", (False,), path)
    d = hf["n_embd"]
    return gpt2.GPT2Config(
        vocab_size=hf["vocab_size"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        d_model=d,
        d_ff=hf.get("n_inner") or 4 * d,
        max_len=hf["n_positions"],
        tie_embeddings=hf.get("tie_word_embeddings", True),
        layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
    )


def _gpt2_ignored(name: str) -> bool:
    # Causal-mask buffers that older GPT-2 checkpoints saved beside the weights.
    return name.endswith((".attn.bias", ".attn.masked_bias"))


def gpt2_params(tensors: dict, c: gpt2.GPT2Config, path: str = "") -> dict:
    """Params for `gpt2.GPT2` from GPT-2 tensors (GPT2Model or GPT2LMHeadModel names).

    HF's Conv1D stores weights [in, out], the layout of a flax kernel; the fused
    c_attn [d, 3d] splits into query, key, value, each reshaped to [d, heads, head_dim].
    """
    t = _Tensors(_strip_prefix(tensors, "transformer."), path, _gpt2_ignored)
    d, heads, hd, ff = c.d_model, c.num_heads, c.head_dim, c.d_ff
    norm = lambda name: {"scale": t.take(f"{name}.weight", (d,)), "bias": t.take(f"{name}.bias", (d,))}
    params = {
        "token_embed": {"embedding": t.take("wte.weight", (c.vocab_size, d))},
        "position_embed": {"embedding": t.take("wpe.weight", (c.max_len, d))},
        "final_norm": norm("ln_f"),
    }
    for i in range(c.num_layers):
        h = f"h.{i}"
        qkv_kernel = t.take(f"{h}.attn.c_attn.weight", (d, 3 * d)).reshape(d, 3, heads, hd)
        qkv_bias = t.take(f"{h}.attn.c_attn.bias", (3 * d,)).reshape(3, heads, hd)
        attn = {
            name: {"kernel": qkv_kernel[:, j], "bias": qkv_bias[j]}
            for j, name in enumerate(("query", "key", "value"))
        }
        attn["out"] = {
            "kernel": t.take(f"{h}.attn.c_proj.weight", (d, d)).reshape(heads, hd, d),
            "bias": t.take(f"{h}.attn.c_proj.bias", (d,)),
        }
        params[layers.layer_name(i)] = {
            "ln_1": norm(f"{h}.ln_1"),
            "attn": attn,
            "ln_2": norm(f"{h}.ln_2"),
            "mlp": {
                "fc": {"kernel": t.take(f"{h}.mlp.c_fc.weight", (d, ff)), "bias": t.take(f"{h}.mlp.c_fc.bias", (ff,))},
                "proj": {"kernel": t.take(f"{h}.mlp.c_proj.weight", (ff, d)), "bias": t.take(f"{h}.mlp.c_proj.bias", (d,))},
            },
        }
    _take_head(t, params, c)
    t.check()
    return params


def llama_config(hf: dict, path: str = "") -> llama.LlamaConfig:
    """LlamaConfig from a Llama config.json (RoPE without scaling, SiLU gate, no biases)."""
    _require(hf, "hidden_act", ("silu",), path)
    _require(hf, "attention_bias", (False,), path)
    _require(hf, "mlp_bias", (False,), path)
    rope = hf.get("rope_parameters") or {"rope_type": "default", "rope_theta": hf.get("rope_theta", 10000.0)}
    _require(rope, "rope_type", ("default",), path)
    if hf.get("rope_scaling"):
        raise CheckpointFormatError(f"{path!r}: rope_scaling {hf['rope_scaling']!r} is not supported.")
    heads = hf["num_attention_heads"]
    return llama.LlamaConfig(
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"],
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        rope_theta=float(rope["rope_theta"]),
        rms_norm_epsilon=hf.get("rms_norm_eps", 1e-6),
        tie_embeddings=hf.get("tie_word_embeddings", False),
    )


def llama_params(tensors: dict, c: llama.LlamaConfig, path: str = "") -> dict:
    """Params for `llama.Llama` from LlamaForCausalLM tensors.

    torch Linear weights are [out, in]; flax kernels are [in, out], split per head.
    """
    # Older checkpoints saved RoPE's inverse frequencies, which are recomputed here.
    t = _Tensors(_strip_prefix(tensors, "model."), path, lambda name: name.endswith("rotary_emb.inv_freq"))
    d, hd, ff = c.d_model, c.head_dim, c.d_ff
    linear = lambda name, out, inp: t.take(f"{name}.weight", (out, inp)).T
    params = {
        "token_embed": {"embedding": t.take("embed_tokens.weight", (c.vocab_size, d))},
        "final_norm": {"scale": t.take("norm.weight", (d,))},
    }
    for i in range(c.num_layers):
        h = f"layers.{i}"
        attn = {
            name: {"kernel": linear(f"{h}.self_attn.{proj}", heads * hd, d).reshape(d, heads, hd)}
            for name, proj, heads in (
                ("query", "q_proj", c.num_heads), ("key", "k_proj", c.num_kv_heads), ("value", "v_proj", c.num_kv_heads)
            )
        }
        attn["out"] = {"kernel": linear(f"{h}.self_attn.o_proj", d, c.num_heads * hd).reshape(c.num_heads, hd, d)}
        params[layers.layer_name(i)] = {
            "attn_norm": {"scale": t.take(f"{h}.input_layernorm.weight", (d,))},
            "attn": attn,
            "mlp_norm": {"scale": t.take(f"{h}.post_attention_layernorm.weight", (d,))},
            "mlp": {
                "gate": {"kernel": linear(f"{h}.mlp.gate_proj", ff, d)},
                "up": {"kernel": linear(f"{h}.mlp.up_proj", ff, d)},
                "down": {"kernel": linear(f"{h}.mlp.down_proj", d, ff)},
            },
        }
    _take_head(t, params, c)
    t.check()
    return params


def _take_head(t: _Tensors, params: dict, c) -> None:
    """lm_head: its own kernel, or (tied) absent or equal to the token embedding."""
    if c.tie_embeddings:
        # save_pretrained usually drops a tied head; when present it must equal the embedding.
        head = t.tensors.get("lm_head.weight")
        t.used.add("lm_head.weight")
        if head is not None and not np.array_equal(head, params["token_embed"]["embedding"]):
            t.invalid.append("lm_head.weight: differs from the token embedding but tie_word_embeddings is true")
    else:
        params["lm_head"] = {"kernel": t.take("lm_head.weight", (c.vocab_size, c.d_model)).T}


def bart_config(hf: dict, path: str = "") -> bart.BartConfig:
    """BartConfig from a BART config.json (post-LN, exact GELU, same heads and widths on both sides)."""
    _require(hf, "activation_function", ("gelu",), path)
    _require(hf, "normalize_before", (False,), path)
    _require(hf, "add_final_layer_norm", (False,), path)
    for encoder_key, decoder_key in (("encoder_attention_heads", "decoder_attention_heads"), ("encoder_ffn_dim", "decoder_ffn_dim")):
        if hf[encoder_key] != hf[decoder_key]:
            raise CheckpointFormatError(
                f"{path!r}: {encoder_key}={hf[encoder_key]} differs from {decoder_key}={hf[decoder_key]}; "
                f"this converter needs them equal."
            )
    return bart.BartConfig(
        vocab_size=hf["vocab_size"],
        encoder_layers=hf["encoder_layers"],
        decoder_layers=hf["decoder_layers"],
        num_heads=hf["encoder_attention_heads"],
        d_model=hf["d_model"],
        d_ff=hf["encoder_ffn_dim"],
        max_len=hf["max_position_embeddings"],
        scale_embedding=hf.get("scale_embedding", False),
    )


def bart_params(tensors: dict, c: bart.BartConfig, path: str = "") -> dict:
    """Params for `bart.Bart` from BartForConditionalGeneration tensors (torch Linear: [out, in])."""
    t = _Tensors(_strip_prefix(tensors, "model."), path, lambda name: False)
    d, heads, hd, ff = c.d_model, c.num_heads, c.head_dim, c.d_ff
    norm = lambda name: {"scale": t.take(f"{name}.weight", (d,)), "bias": t.take(f"{name}.bias", (d,))}
    dense = lambda name, out, inp: {"kernel": t.take(f"{name}.weight", (out, inp)).T, "bias": t.take(f"{name}.bias", (out,))}

    def attention(name):
        qkv = {
            ours: {
                "kernel": t.take(f"{name}.{theirs}.weight", (d, d)).T.reshape(d, heads, hd),
                "bias": t.take(f"{name}.{theirs}.bias", (d,)).reshape(heads, hd),
            }
            for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))
        }
        qkv["out"] = {
            "kernel": t.take(f"{name}.out_proj.weight", (d, d)).T.reshape(heads, hd, d),
            "bias": t.take(f"{name}.out_proj.bias", (d,)),
        }
        return qkv

    shared = t.take("shared.weight", (c.vocab_size, d))
    params = {"token_embed": {"embedding": shared}, "final_logits_bias": t.take("final_logits_bias", (1, c.vocab_size))[0]}
    for side, num_layers in (("encoder", c.encoder_layers), ("decoder", c.decoder_layers)):
        # Some checkpoints repeat the shared embedding per side; it must be the same tensor.
        copy = t.tensors.get(f"{side}.embed_tokens.weight")
        t.used.add(f"{side}.embed_tokens.weight")
        if copy is not None and not np.array_equal(copy, shared):
            t.invalid.append(f"{side}.embed_tokens.weight: differs from shared.weight")
        params[f"{side}_position_embed"] = {"embedding": t.take(f"{side}.embed_positions.weight", (c.max_len + 2, d))}
        params[f"{side}_embed_norm"] = norm(f"{side}.layernorm_embedding")
        for i in range(num_layers):
            h = f"{side}.layers.{i}"
            layer = {
                "self_attn": attention(f"{h}.self_attn"),
                "self_attn_norm": norm(f"{h}.self_attn_layer_norm"),
                "fc1": dense(f"{h}.fc1", ff, d),
                "fc2": dense(f"{h}.fc2", d, ff),
                "final_norm": norm(f"{h}.final_layer_norm"),
            }
            if side == "decoder":
                layer["cross_attn"] = attention(f"{h}.encoder_attn")
                layer["cross_attn_norm"] = norm(f"{h}.encoder_attn_layer_norm")
            params[f"{side}_{layers.layer_name(i)}"] = layer
    head = t.tensors.get("lm_head.weight")  # BART ties its head to the shared embedding.
    t.used.add("lm_head.weight")
    if head is not None and not np.array_equal(head, shared):
        t.invalid.append("lm_head.weight: differs from shared.weight (BART ties them)")
    t.check()
    return params


_CONVERTERS = {
    "gpt2": (gpt2_config, gpt2_params),
    "llama": (llama_config, llama_params),
    "bart": (bart_config, bart_params),
}


def is_gguf(path: str) -> bool:
    """A file that starts as GGUF files do, whatever its name."""
    from prefix_jax import gguf_file  # It imports this module.

    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == gguf_file.MAGIC


def load(path: str):
    """(model config, params) of the Hugging Face checkpoint directory `path`, or of a GGUF file."""
    if is_gguf(path):
        from prefix_jax import gguf_file

        return gguf_file.load(path)
    hf = read_config(path)
    model_type = hf.get("model_type")
    if model_type not in _CONVERTERS:
        raise CheckpointFormatError(
            f"{path!r}: model_type {model_type!r} has no converter; supported: {sorted(_CONVERTERS)}."
        )
    make_config, make_params = _CONVERTERS[model_type]
    config = make_config(hf, path)
    return config, make_params(read_tensors(path), config, path)


def load_params(path: str, expected) -> dict:
    """Params of the checkpoint in `path`, refused unless its architecture is `expected`'s.

    Training-time fields (dropout, activation dtype, adapters the run adds) are the run's
    choice and not compared.
    """
    return _fitting(path, *load(path), expected)


def _fitting(path: str, config, params: dict, expected) -> dict:
    """`params`, refused unless the checkpoint's `config` is the architecture of `expected`."""
    if type(config) is not type(expected):
        raise CheckpointFormatError(
            f"The checkpoint in {path!r} is a {type(config).__name__}; this run needs a {type(expected).__name__}."
        )
    run_fields = {name: getattr(expected, name) for name in ("dropout_rate", "dtype", "adapter_dim", "remat")
                  if hasattr(expected, name)}
    same_run = dataclasses.replace(config, **run_fields)
    if same_run != expected:
        differ = [
            f"{f.name}: checkpoint {getattr(config, f.name)!r}, config {getattr(expected, f.name)!r}"
            for f in dataclasses.fields(expected)
            if getattr(same_run, f.name) != getattr(expected, f.name)
        ]
        raise CheckpointFormatError(
            f"The checkpoint in {path!r} does not fit config.model ({'; '.join(differ)}); "
            f"set config.model to the checkpoint's architecture."
        )
    return params


PROJECT, HUGGING_FACE, GGUF = "project", "hugging_face", "gguf"
_EXPECTED = (
    f"a project base-model directory ({weights.CONFIG} + {weights.WEIGHTS}), a Hugging Face directory "
    "(config.json + model.safetensors or pytorch_model.bin), a GGUF file or a known model name"
)


class BaseWeightsError(errors.UserError):
    """config.base_weights names nothing a base-weight reader takes."""


def _old_project_layout(config_file: str) -> bool:
    """A config.json as models/weights.py wrote it before its files were renamed."""
    try:
        with open(config_file) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False  # Not ours; the Hugging Face reader reports what is wrong with it.
    return isinstance(meta, dict) and "model" in meta and "sha256" in meta


def detect(path: str) -> str:
    """The format of the base weights at `path` (PROJECT, HUGGING_FACE or GGUF), from its files.

    A known model name (`gguf_file.KNOWN`, e.g. "smollm2-135m") is a GGUF file shipped in a
    pip distribution. The one place a new kind of `path` is recognised; its reader then goes
    in `_BASE_READERS`.
    """
    from prefix_jax import gguf_file  # It imports this module.

    where = f"config.base_weights={path!r}"
    if path in gguf_file.KNOWN:
        return GGUF
    if not os.path.exists(path):
        raise BaseWeightsError(f"{where} does not exist; expected {_EXPECTED} ({sorted(gguf_file.KNOWN)}).")
    if is_gguf(path):
        return GGUF
    if not os.path.isdir(path):
        raise BaseWeightsError(f"{where} is a file of unknown type; expected {_EXPECTED}.")
    project = any(os.path.isfile(os.path.join(path, name)) for name in (weights.CONFIG, weights.WEIGHTS))
    hugging_face = os.path.isfile(os.path.join(path, "config.json"))
    if project and hugging_face:
        raise BaseWeightsError(
            f"{where} holds both a project base model ({weights.CONFIG}) and a Hugging Face config.json; "
            "keep one model per directory."
        )
    if project:
        return PROJECT
    if hugging_face and _old_project_layout(os.path.join(path, "config.json")):
        raise BaseWeightsError(
            f"{where} is a project base-model directory in the old layout; rename its config.json to "
            f"{weights.CONFIG} and model.safetensors to {weights.WEIGHTS}."
        )
    if hugging_face:
        return HUGGING_FACE
    raise BaseWeightsError(f"{where} holds neither format; expected {_EXPECTED}.")


def _load_project(path: str, expected) -> dict:
    """A project directory records its model's family and fields; weights.load compares them."""
    return weights.load(path, {"family": families.of(expected).name, **dataclasses.asdict(expected)})


def _load_gguf(path: str, expected) -> dict:
    from prefix_jax import gguf_file

    path = gguf_file.resolve(path)
    return _fitting(path, *gguf_file.load(path), expected)


_BASE_READERS = {PROJECT: _load_project, HUGGING_FACE: load_params, GGUF: _load_gguf}


def load_base(path: str, expected) -> dict:
    """Params of the base weights at `path` in any format `detect` knows, refused unless made
    for the model config `expected` (each reader's own architecture check)."""
    return _BASE_READERS[detect(path)](path, expected)


def load_tokenizer(path: str):
    """The checkpoint directory's tokenizer.json (or a GGUF file's tokenizer) as a `tokenizers.Tokenizer`."""
    if is_gguf(path):
        from prefix_jax import gguf_file

        return gguf_file.load_tokenizer(path)
    return tokenizer_lib.load(os.path.join(path, "tokenizer.json"))
