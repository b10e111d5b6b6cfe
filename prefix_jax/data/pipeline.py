"""From records to padded batches: the paper's format, length buckets or packing, a fixed order.

Format (Li & Liang 2021): ` {source} <|endoftext|> {target} <|endoftext|>`; only the
target and its closing `<|endoftext|>` count in the loss. Training uses one
sequence per (input, reference) pair.

Plain-text corpora (`data.name = "text"`, for pre-training) are instead cut into
blocks of `data.block_len` tokens with every token in the loss.

Encoder-decoder models (BART) get the source as encoder tokens, `[BOS] source [EOS]` cut
to `data.max_source_len`, and the target as labels `[BOS] target [EOS]` cut to
`data.max_target_len`, with decoder input `[EOS] + labels[:-1]` (BART's
decoder_start_token_id is its EOS, and Hugging Face's tokenizer adds BOS/EOS this way);
tokenizers without a BOS (byte-level) simply leave it out.

Batch order is a pure function of (seed, epoch), so the data position of a run is
just its step number: resuming at step s replays exactly the batches an
uninterrupted run would have seen.
"""

import math
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from absl import logging
from tokenizers import Tokenizer

from prefix_jax.data import records, sources
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.data.records import Example
from prefix_jax.errors import ConfigError

Encoded = tuple[np.ndarray, np.ndarray]  # tokens [len] int32, loss_mask [len] float32
# Encoder-decoder: source tokens [m_enc], decoder input [m_dec], labels [m_dec] (int32).
Seq2SeqEncoded = tuple[np.ndarray, np.ndarray, np.ndarray]


def spread(items: Sequence, count: int) -> list:
    """`count` items evenly spaced through `items` (all when count is 0 or covers them): a
    sample that reaches every category of a split sorted by category, first and last included."""
    if count == 0 or count >= len(items):
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _segment(tokenizer: Tokenizer, text: str) -> list[int]:
    """` {text} <|endoftext|>`, one half of the format."""
    return tokenizer.encode(f" {text} ", add_special_tokens=False).ids + [tokenizer_lib.eos_id(tokenizer)]


def encode_source(tokenizer: Tokenizer, source: str) -> list[int]:
    """The prompt a model trained on this format continues with its target."""
    return _segment(tokenizer, source)


def encode_prompts(tokenizer: Tokenizer, examples: Sequence[Example], *, max_len: int, max_new_tokens: int,
                   split: str) -> list[list[int]]:
    """Every example's `encode_source`, for decoding `max_new_tokens` after it within `max_len`.

    A source that does not fit is refused, not cut: a cut source is another input, and
    its generation would be scored against the references of the whole one.
    """
    prompts = [encode_source(tokenizer, example.source) for example in examples]
    room, longest = max_len - max_new_tokens, max(map(len, prompts), default=0)
    if longest > room:
        lower = f", or lower decode.max_new_tokens to at most {max_len - longest}" if longest < max_len else ""
        raise ConfigError(
            f"{sum(len(p) > room for p in prompts)} of {len(prompts)} {split} sources do not fit in the {room} tokens "
            f"model.max_len={max_len} leaves beside decode.max_new_tokens={max_new_tokens} (the longest is {longest} "
            f"tokens); raise model.max_len to at least {longest + max_new_tokens}{lower}."
        )
    return prompts


def encode(tokenizer: Tokenizer, source: str, target: str) -> Encoded:
    source_ids, target_ids = encode_source(tokenizer, source), _segment(tokenizer, target)
    tokens = np.array(source_ids + target_ids, np.int32)
    loss_mask = np.concatenate([np.zeros(len(source_ids)), np.ones(len(target_ids))])
    return tokens, loss_mask.astype(np.float32)


def encode_pairs(examples: Sequence[Example], tokenizer: Tokenizer, max_len: int, *, split: str = "") -> list[Encoded]:
    """One sequence per (input, reference), cut to `max_len` tokens.

    A sequence cut inside its source keeps no target token and adds nothing to the loss:
    such sequences are counted in a warning, and refused when they are most of the split
    (the run would train on next to nothing and report a loss near 0).
    """
    encoded = [encode(tokenizer, e.source, reference) for e in examples for reference in e.references]
    lengths = np.array([len(tokens) for tokens, _ in encoded])
    source_lengths = np.array([len(mask) - int(mask.sum()) for _, mask in encoded])
    lost, cut, what = source_lengths >= max_len, lengths > max_len, f"{split} sequence".lstrip()
    if encoded and lost.mean() > 0.5:
        raise ConfigError(
            f"{lost.sum()} of {len(encoded)} {what}s lose their whole target at model.max_len={max_len} (sources are "
            f"{source_lengths.min()} to {source_lengths.max()} tokens), so nothing would train; raise model.max_len "
            f"to at least {source_lengths.max() + 1} (a target token in every sequence) or {lengths.max()} (none cut)."
        )
    if lost.any():
        logging.warning(
            "%d of %d %ss lose their whole target at model.max_len=%d and add nothing to the loss; "
            "model.max_len=%d keeps a target token in every one.",
            lost.sum(), len(encoded), what, max_len, source_lengths.max() + 1,
        )
    if cut.any():
        logging.warning("%d of %d %ss were longer than %d tokens and were cut.", cut.sum(), len(encoded), what, max_len)
    return [(tokens[:max_len], loss_mask[:max_len]) for tokens, loss_mask in encoded]


def encode_text(path: str, tokenizer: Tokenizer, block_len: int) -> list[Encoded]:
    """A corpus file (documents separated by `<|endoftext|>` lines) as blocks of `block_len` tokens.

    Documents are joined, each closed by `<|endoftext|>`, and the stream is cut
    into consecutive blocks (the last partial one dropped).
    """
    records.require_file(
        path, "Corpus file", "a text file of documents separated by <|endoftext|> lines "
        "(build one with python -m prefix_jax.data.corpus)",
    )
    with records.reading(path), open(path, encoding="utf-8") as f:
        documents = f.read().split(f"\n{tokenizer_lib.EOS}\n")
    eos = tokenizer_lib.eos_id(tokenizer)
    stream = np.fromiter(
        (i for encoding in tokenizer.encode_batch(documents, add_special_tokens=False) for i in encoding.ids + [eos]),
        np.int32,
    )
    blocks = stream[: len(stream) - len(stream) % block_len].reshape(-1, block_len)
    if not len(blocks):
        raise ValueError(f"{path} holds {len(stream)} tokens, fewer than one block of {block_len}.")
    return [(block, np.ones(block_len, np.float32)) for block in blocks]


def encode_split(data_config, split: str, tokenizer: Tokenizer, max_len: int) -> list[Encoded]:
    """The encoded sequences of a split: corpus blocks or (input, reference) pairs."""
    if data_config.name != "text":
        return encode_pairs(sources.read(data_config, split), tokenizer, max_len, split=split)
    if data_config.block_len > max_len:
        raise ValueError(f"data.block_len ({data_config.block_len}) exceeds model.max_len ({max_len}).")
    path, limit = sources.path_and_limit(data_config, split)
    blocks = encode_text(path, tokenizer, data_config.block_len)
    return blocks[:limit] if limit > 0 else blocks


def encode_seq2seq_side(tokenizer: Tokenizer, text: str, max_len: int) -> tuple[list[int], bool]:
    """(`[BOS] text [EOS]` cut to `max_len` tokens keeping BOS and EOS, whether it was cut)."""
    bos, eos = tokenizer_lib.bos_id(tokenizer), tokenizer_lib.eos_id(tokenizer)
    head = [] if bos is None else [bos]
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    room = max_len - len(head) - 1
    return head + ids[:room] + [eos], len(ids) > room


def decoder_prompt(tokenizer: Tokenizer) -> list[int]:
    """What the decoder reads before the first generated token: decoder start (EOS), then BOS
    where the tokenizer has one (as Hugging Face's forced_bos_token_id does for BART)."""
    bos = tokenizer_lib.bos_id(tokenizer)
    return [tokenizer_lib.eos_id(tokenizer)] + ([] if bos is None else [bos])


def encode_seq2seq(examples: Sequence[Example], tokenizer: Tokenizer, max_source_len: int,
                   max_target_len: int) -> list[Seq2SeqEncoded]:
    """One (source, decoder input, labels) per (input, reference); cut sides are counted."""
    encoded, cut = [], [0, 0]
    for example in examples:
        source, source_cut = encode_seq2seq_side(tokenizer, example.source, max_source_len)
        for reference in example.references:
            labels, target_cut = encode_seq2seq_side(tokenizer, reference, max_target_len)
            decoder = [tokenizer_lib.eos_id(tokenizer)] + labels[:-1]
            encoded.append(tuple(np.array(x, np.int32) for x in (source, decoder, labels)))
            cut[0] += source_cut
            cut[1] += target_cut
    if any(cut):
        logging.info("Cut %d sources to %d tokens and %d targets to %d tokens (of %d pairs).",
                     cut[0], max_source_len, cut[1], max_target_len, len(encoded))
    return encoded


def bucket_width(length: int, bucket_size: int, max_width: Optional[int] = None) -> int:
    """`length` rounded up to a multiple of `bucket_size` (few distinct shapes to compile),
    but at most `max_width`: a sequence cut to the model's max_len pads to max_len, not past it."""
    if max_width is not None and length > max_width:
        raise ValueError(f"A sequence of {length} tokens exceeds the batch width cap {max_width}.")
    width = bucket_size * math.ceil(length / bucket_size)
    return width if max_width is None else min(width, max_width)


def pad_lm(rows: Sequence[Encoded], batch_size: int, width: int) -> dict:
    """Decoder-only rows as tokens, attention_mask, loss_mask [batch_size, width]."""
    tokens = np.zeros((batch_size, width), np.int32)
    loss_mask = np.zeros((batch_size, width), np.float32)
    attention_mask = np.zeros((batch_size, width), np.int32)
    for row, (seq_tokens, seq_mask) in enumerate(rows):
        tokens[row, : len(seq_tokens)] = seq_tokens
        loss_mask[row, : len(seq_tokens)] = seq_mask
        attention_mask[row, : len(seq_tokens)] = 1
    return {"tokens": tokens, "attention_mask": attention_mask, "loss_mask": loss_mask}


def pack(lengths: Sequence[int], width: int, seed: int, open_rows: int = 8) -> list[list[int]]:
    """Sequence indices grouped into rows of at most `width` tokens.

    The sequences go in a seed-shuffled order, each into the first of the last `open_rows`
    rows with room for it, else into a new row: next-fit over a small window, linear time,
    and rows a few percent short of full on WebNLG's lengths.
    """
    if max(lengths) > width:
        raise ValueError(
            f"data.pack_width ({width}) is below the longest sequence ({max(lengths)} tokens); "
            f"raise it to at least {max(lengths)}."
        )
    rows, room = [], []
    for index in np.random.default_rng([seed, width]).permutation(len(lengths)):
        length = lengths[index]
        fits = [r for r in range(max(0, len(rows) - open_rows), len(rows)) if room[r] >= length]
        if not fits:
            rows.append([])
            room.append(width)
            fits = [len(rows) - 1]
        rows[fits[0]].append(int(index))
        room[fits[0]] -= length
    return rows


def target_positions(row: Sequence[Encoded]) -> np.ndarray:
    """Positions t of a packed row whose logits predict a target token t + 1 (the numpy
    twin of `train._target_weights`, which reads the same from a padded batch)."""
    return np.flatnonzero(np.concatenate([mask for _, mask in row])[1:])


def pack_lm(rows: Sequence[Sequence[Encoded]], batch_size: int, width: int, target_slots: int) -> dict:
    """Packed decoder-only rows: `pad_lm`'s fields plus segment_ids (1, 2, ... per sequence
    in its row, 0 for padding) and positions (each sequence from 0), [batch_size, width],
    and the loss's positions alone, [batch_size, target_slots] (`target_slots` at least
    every row's count): target_positions (t whose logits predict token t + 1, a target),
    target_ids (token t + 1) and target_weights (1, or 0 for unused slots), so the model
    computes its head and softmax only there (38% of WebNLG's packed tokens)."""
    batch = pad_lm([(np.concatenate([t for t, _ in row]), np.concatenate([m for _, m in row])) for row in rows],
                   batch_size, width)
    batch["segment_ids"] = np.zeros((batch_size, width), np.int32)
    batch["positions"] = np.zeros((batch_size, width), np.int32)
    for r, row in enumerate(rows):
        start = 0
        for segment, (tokens, _) in enumerate(row, 1):
            batch["segment_ids"][r, start : start + len(tokens)] = segment
            batch["positions"][r, start : start + len(tokens)] = np.arange(len(tokens))
            start += len(tokens)
    for name, dtype in (("target_positions", np.int32), ("target_ids", np.int32), ("target_weights", np.float32)):
        batch[name] = np.zeros((batch_size, target_slots), dtype)
    for r, row in enumerate(rows):
        positions = target_positions(row)
        if len(positions) > target_slots:
            raise ValueError(f"A packed row has {len(positions)} targets, over its {target_slots} target slots.")
        batch["target_positions"][r, : len(positions)] = positions
        batch["target_ids"][r, : len(positions)] = batch["tokens"][r, positions + 1]
        batch["target_weights"][r, : len(positions)] = 1
    return batch


def seq2seq_padder(decoder_width: int, pad_id: int = 0) -> Callable[[Sequence[Seq2SeqEncoded], int, int], dict]:
    """Pads encoder-decoder rows: tokens, attention_mask [batch, width] (the source's bucket)
    and decoder_tokens, labels, decoder_attention_mask [batch, decoder_width] (one width for
    every batch, so targets add no shapes to compile)."""

    def pad(rows, batch_size, width):
        out = {
            "tokens": np.full((batch_size, width), pad_id, np.int32),
            "attention_mask": np.zeros((batch_size, width), np.int32),
            "decoder_tokens": np.full((batch_size, decoder_width), pad_id, np.int32),
            "labels": np.full((batch_size, decoder_width), pad_id, np.int32),
            "decoder_attention_mask": np.zeros((batch_size, decoder_width), np.int32),
        }
        for row, (source, decoder, labels) in enumerate(rows):
            if len(labels) > decoder_width:
                raise ValueError(f"A target of {len(labels)} tokens exceeds the decoder width {decoder_width}.")
            out["tokens"][row, : len(source)] = source
            out["attention_mask"][row, : len(source)] = 1
            out["decoder_tokens"][row, : len(decoder)] = decoder
            out["labels"][row, : len(labels)] = labels
            out["decoder_attention_mask"][row, : len(labels)] = 1
        return out

    return pad


class Batches:
    """Fixed-size batches of encoded sequences, each padded to its length bucket.

    Sequences are grouped by length bucket (multiples of `bucket_size`, capped at
    `max_width`: the model's max_len, or an encoder's max_source_len) of their first
    field (the tokens, or an encoder-decoder's source), so few shapes get compiled and
    little is padding. `pad` turns a bucket's rows into the batch dict (`pad_lm`, or
    `seq2seq_padder(...)` for encoder-decoder rows). With `pack_width` > 0 (decoder-only),
    a row is instead several sequences packed to that width (`pack`, `pack_lm`): one shape
    to compile and almost no padding; the rows are fixed by the seed, their order by the
    epoch, and their loss positions get as many target slots as the fullest row needs
    (rounded up to `bucket_size`). With `shuffle`, every epoch is a fresh seed-determined
    order and each bucket's remainder is left out of that epoch; without it (evaluation)
    everything is kept in order, the last batch of a bucket filled with all-masked rows.
    """

    def __init__(self, sequences: Sequence[Encoded | Seq2SeqEncoded], batch_size: int, bucket_size: int, *,
                 seed: int, shuffle: bool, pad: Callable[[Sequence, int, int], dict] = pad_lm, pack_width: int = 0,
                 max_width: Optional[int] = None):
        if not sequences:
            raise ValueError("No sequences to batch; check the data paths and example limits.")
        self.batch_size, self.seed, self.shuffle, self.pad = batch_size, seed, shuffle, pad
        if pack_width:  # Rows of packed sequences, all one width.
            rows = pack([len(sequence[0]) for sequence in sequences], pack_width, seed)
            self.rows = [[sequences[index] for index in row] for row in rows]
            # Target slots for every row of the run: one shape, rounded up like widths.
            most = max(len(target_positions(row)) for row in self.rows)
            slots = bucket_width(max(most, 1), bucket_size, pack_width)
            self.buckets = {pack_width: np.arange(len(rows))}
            self.pad = lambda rows, batch_size, width: pack_lm(rows, batch_size, width, slots)
        else:
            self.rows = sequences
            widths = [bucket_width(len(sequence[0]), bucket_size, max_width) for sequence in sequences]
            self.buckets = {w: np.flatnonzero(np.array(widths) == w) for w in sorted(set(widths))}
        count = lambda n: n // batch_size if shuffle else math.ceil(n / batch_size)
        self.batches_per_epoch = sum(count(len(members)) for members in self.buckets.values())
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"Batch size {batch_size} exceeds every length bucket's size (largest "
                f"{max(len(m) for m in self.buckets.values())}); lower the batch size or raise bucket_size."
            )
        self._order_cache: dict[int, list] = {}

    def _epoch_order(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """[(width, member indices)] for every batch of `epoch`, in order."""
        if epoch not in self._order_cache:
            batches = []
            for b, (width, members) in enumerate(self.buckets.items()):
                if self.shuffle:
                    members = np.random.default_rng([self.seed, epoch, b]).permutation(members)
                    stop = len(members) - len(members) % self.batch_size
                else:
                    stop = len(members)
                batches += [(width, members[i : i + self.batch_size]) for i in range(0, stop, self.batch_size)]
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(len(batches))
                batches = [batches[i] for i in order]
            self._order_cache = {epoch: batches}
        return self._order_cache[epoch]

    def _pad(self, width: int, members: np.ndarray) -> dict:
        return self.pad([self.rows[index] for index in members], self.batch_size, width)

    def from_step(self, step: int) -> Iterator[dict]:
        """Endless batches, starting with global batch number `step`."""
        while True:
            epoch, offset = divmod(step, self.batches_per_epoch)
            width, members = self._epoch_order(epoch)[offset]
            yield self._pad(width, members)
            step += 1

    def __iter__(self) -> Iterator[dict]:
        """One pass over epoch 0 (for evaluation)."""
        for width, members in self._epoch_order(0):
            yield self._pad(width, members)

    def position(self, step: int) -> dict:
        """Where global batch `step` lies, for logs and checkpoint metadata."""
        epoch, offset = divmod(step, self.batches_per_epoch)
        return {"epoch": epoch, "batch_in_epoch": offset, "batches_per_epoch": self.batches_per_epoch}
