"""Tokenizer, the paper's sequence format, and batch order."""

import logging

import ml_collections
import numpy as np
import pytest

from prefix_jax.errors import ConfigError
from prefix_jax.data import pipeline, synthetic
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.data.records import Example

EOS = 256


@pytest.fixture(scope="module")
def byte_tokenizer():
    return tokenizer_lib.byte_level()


def test_byte_tokenizer_ids_are_bytes_and_round_trip(byte_tokenizer):
    text = "Aarhus Airport — 25 m élevation"
    ids = byte_tokenizer.encode(text, add_special_tokens=False).ids
    assert ids == list(text.encode("utf-8"))
    assert byte_tokenizer.decode(ids) == text
    assert tokenizer_lib.eos_id(byte_tokenizer) == EOS


def test_tokenizer_files_are_checked(tmp_path, byte_tokenizer):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenizer_lib.load(str(tmp_path / "missing.json"))
    from tokenizers import Tokenizer, models
    path = str(tmp_path / "no_eos.json")
    Tokenizer(models.BPE(vocab={"a": 0}, merges=[])).save(path)
    with pytest.raises(ValueError, match="has no '<|endoftext|>' token"):
        tokenizer_lib.load(path)
    path = str(tmp_path / "byte.json")
    byte_tokenizer.save(path)
    assert tokenizer_lib.load(path).encode("hi").ids == [104, 105]


def test_format_masks_the_source(byte_tokenizer):
    tokens, loss_mask = pipeline.encode(byte_tokenizer, "a : b", "A b.")
    source, target = list(b" a : b ") + [EOS], list(b" A b. ") + [EOS]
    np.testing.assert_array_equal(tokens, source + target)
    np.testing.assert_array_equal(loss_mask, [0] * len(source) + [1] * len(target))


def test_one_sequence_per_reference_and_long_ones_are_cut(byte_tokenizer):
    examples = [Example("x", ("one", "two", "three")), Example("y" * 50, ("z",))]
    encoded = pipeline.encode_pairs(examples, byte_tokenizer, max_len=20)
    assert len(encoded) == 4
    assert [len(t) for t, _ in encoded] == [10, 10, 12, 20]
    assert all(len(t) == len(m) for t, m in encoded)


def test_a_split_whose_targets_are_mostly_cut_off_is_refused(byte_tokenizer):
    """max_len at or below most sources: most loss masks are empty, so the loss would read ~0."""
    examples = [Example("s" * 40, ("t" * 10,)), Example("s" * 60, ("t" * 30, "t"))]  # Sources of 43 and 63 tokens.
    with pytest.raises(ConfigError, match=r"^3 of 3 train sequences lose their whole target at model.max_len=32 "
                       r"\(sources are 43 to 63 tokens\), so nothing would train; raise model.max_len to at least 64 "
                       r"\(a target token in every sequence\) or 96 \(none cut\).$"):
        pipeline.encode_pairs(examples, byte_tokenizer, 32, split="train")
    config = ml_collections.ConfigDict({"name": "copy", "dev_path": "", "num_dev": 4})
    with pytest.raises(ConfigError, match="^4 of 4 dev sequences lose their whole target at model.max_len=5 "):
        pipeline.encode_split(config, "dev", byte_tokenizer, 5)


def test_sequences_that_lose_their_target_are_counted(byte_tokenizer, caplog):
    examples = [Example("s" * 40, ("t" * 10,)), Example("s", ("t" * 10, "t"))]
    with caplog.at_level(logging.WARNING):
        encoded = pipeline.encode_pairs(examples, byte_tokenizer, 32, split="train")
    assert [m.sum() for _, m in encoded] == [0, 13, 4]
    assert ("1 of 3 train sequences lose their whole target at model.max_len=32 and add nothing to the loss; "
            "model.max_len=44 keeps a target token in every one.") in caplog.text
    assert "1 of 3 train sequences were longer than 32 tokens and were cut." in caplog.text


def test_batch_widths_never_exceed_the_cap(byte_tokenizer):
    """A sequence cut to max_len=100 pads to 100, not to bucket_size's next multiple (128),
    which the model would refuse as longer than its max_len."""
    examples = [Example("s" * n, ("t" * 20,)) for n in range(10, 160, 5)]
    sequences = pipeline.encode_pairs(examples, byte_tokenizer, 100)
    batches = list(pipeline.Batches(sequences, 4, 64, seed=0, shuffle=False, max_width=100))
    assert sorted({b["tokens"].shape[1] for b in batches}) == [64, 100]
    assert pipeline.bucket_width(100, 64) == 128 and pipeline.bucket_width(100, 64, 100) == 100
    with pytest.raises(ValueError, match="A sequence of 101 tokens exceeds the batch width cap 100"):
        pipeline.bucket_width(101, 64, 100)


def test_decode_sources_must_fit_beside_the_new_tokens(byte_tokenizer):
    examples = [Example("s" * n, ("t",)) for n in (10, 29, 30, 40)]  # Sources of 13, 32, 33 and 43 tokens.
    prompts = pipeline.encode_prompts(byte_tokenizer, examples, max_len=128, max_new_tokens=85, split="dev")
    assert prompts == [pipeline.encode_source(byte_tokenizer, e.source) for e in examples]
    with pytest.raises(ConfigError, match=r"^2 of 4 dev sources do not fit in the 32 tokens model.max_len=128 leaves "
                       r"beside decode.max_new_tokens=96 \(the longest is 43 tokens\); raise model.max_len to at least "
                       r"139, or lower decode.max_new_tokens to at most 85.$"):
        pipeline.encode_prompts(byte_tokenizer, examples, max_len=128, max_new_tokens=96, split="dev")
    with pytest.raises(ConfigError, match=r"the longest is 43 tokens\); raise model.max_len to at least 44.$"):
        pipeline.encode_prompts(byte_tokenizer, examples, max_len=40, max_new_tokens=1, split="test")


def _sequences(byte_tokenizer, num=100):
    return pipeline.encode_pairs(synthetic.copy_examples(num, seed=0, max_words=12), byte_tokenizer, 128)


def test_training_batches_are_deterministic_bucketed_and_resumable(byte_tokenizer):
    sequences = _sequences(byte_tokenizer)
    batches = pipeline.Batches(sequences, 8, 16, seed=3, shuffle=True)
    again = pipeline.Batches(sequences, 8, 16, seed=3, shuffle=True)
    n = batches.batches_per_epoch
    first = [next_ for _, next_ in zip(range(2 * n), batches.from_step(0))]
    for a, b in zip(first, again.from_step(0)):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    # Resuming at step k replays exactly batch k onwards.
    for a, b in zip(first[5:], batches.from_step(5)):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
    for batch in first:
        width = batch["tokens"].shape[1]
        assert width % 16 == 0 and batch["tokens"].shape[0] == 8
        lengths = batch["attention_mask"].sum(1)
        assert lengths.min() > width - 16, "a sequence was padded past its own bucket"
    # Each epoch sees a sequence at most once, and epochs differ in order.
    epoch0 = [row.tobytes() for b in first[:n] for row in b["tokens"]]
    assert len(set(epoch0)) == len(epoch0)
    assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first[:n], first[n:]))
    assert batches.position(n + 2) == {"epoch": 1, "batch_in_epoch": 2, "batches_per_epoch": n}


def test_evaluation_batches_cover_everything_once(byte_tokenizer):
    sequences = _sequences(byte_tokenizer, num=37)
    batches = list(pipeline.Batches(sequences, 8, 16, seed=0, shuffle=False))
    seen = sorted(
        tuple(b["tokens"][r, : b["attention_mask"][r].sum()])
        for b in batches
        for r in range(8)
        if b["attention_mask"][r].any()
    )
    assert seen == sorted(tuple(t) for t, _ in sequences)
    assert all(b["loss_mask"][b["attention_mask"] == 0].sum() == 0 for b in batches)


def test_batching_errors_are_clear(byte_tokenizer):
    with pytest.raises(ValueError, match="No sequences"):
        pipeline.Batches([], 8, 16, seed=0, shuffle=True)
    with pytest.raises(ValueError, match="exceeds every length bucket"):
        pipeline.Batches(_sequences(byte_tokenizer, num=5), 8, 16, seed=0, shuffle=True)


def test_dev_loss_sequences_are_spread_over_the_split():
    """train.eval_sequences: evenly spaced, first and last included, all when 0 or too many."""
    sequences = list(range(100))
    assert pipeline.spread(sequences, 5) == [0, 25, 50, 74, 99]
    assert pipeline.spread(sequences, 0) == pipeline.spread(sequences, 200) == sequences
