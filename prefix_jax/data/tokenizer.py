"""Tokenizers, always `tokenizers.Tokenizer` objects.

`load("byte")` builds a byte-level tokenizer needing no file: token id = byte value,
plus `<|endoftext|>` = 256. It is the fallback for smoke runs on models trained
from scratch. Any other value is a `tokenizer.json` path (GPT-2's BPE saved by
Hugging Face, or the one shipped with the embedded model), a GGUF file or a known model
name (`gguf_file.KNOWN`, e.g. "smollm2-135m"), whose tokenizer is built from its metadata.
"""

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

EOS = "<|endoftext|>"


def _byte_to_unicode() -> dict:
    """GPT-2's reversible byte -> printable character map (what ByteLevel expects)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


def byte_level() -> Tokenizer:
    vocab = {char: byte for byte, char in _byte_to_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def load(name: str) -> Tokenizer:
    """'byte', a GGUF file or known model name, or the path of a tokenizer.json that has an `<|endoftext|>` token (GPT-2) or
    BART's `</s>` (encoder-decoder runs)."""
    from prefix_jax import convert, gguf_file  # They import this module.

    if name == "byte":
        return byte_level()
    if name in gguf_file.KNOWN:
        name = gguf_file.resolve(name)
    if not os.path.isfile(name):
        raise FileNotFoundError(
            f"Tokenizer file {name!r} does not exist; give a tokenizer.json path, a GGUF file, one of "
            f"{sorted(gguf_file.KNOWN)} or 'byte'."
        )
    tokenizer = convert.load_tokenizer(name) if convert.is_gguf(name) else Tokenizer.from_file(name)
    if tokenizer.token_to_id(EOS) is None and tokenizer.token_to_id(BART_EOS) is None:
        raise ValueError(f"Tokenizer {name!r} has no {EOS!r} token, which the data format needs.")
    return tokenizer


BART_BOS, BART_EOS, BART_PAD = "<s>", "</s>", "<pad>"


def eos_id(tokenizer: Tokenizer) -> int:
    """`<|endoftext|>`, or BART's `</s>` where there is none."""
    eos = tokenizer.token_to_id(EOS)
    return tokenizer.token_to_id(BART_EOS) if eos is None else eos


def newline_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """Every token whose text holds a newline (GPT-2's "\\n" and "\\n\\n", and the many
    merged ones of a larger vocabulary): what Li & Liang ban when decoding."""
    texts = tokenizer.decode_batch([[i] for i in range(tokenizer.get_vocab_size())], skip_special_tokens=False)
    return tuple(i for i, text in enumerate(texts) if "\n" in text)


def bos_id(tokenizer: Tokenizer):
    """BART's `<s>` (HF's tokenizer starts every source and target with it), or None."""
    return tokenizer.token_to_id(BART_BOS)


def pad_id(tokenizer: Tokenizer) -> int:
    """BART's `<pad>`, else 0 (padding is always masked; the id only has to be valid)."""
    pad = tokenizer.token_to_id(BART_PAD)
    return 0 if pad is None else pad
