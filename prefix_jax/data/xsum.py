"""Reader for XSUM as Li & Liang (2021) used it: `{train,val,test}.source` and `.target`.

The files (from the Hugging Face seq2seq examples' xsum.tar.gz, which the official code's
seq2seq/ scripts read) hold one document, or its one-sentence summary, per line; line i of
`.source` pairs with line i of `.target`. A line-count mismatch or an empty document or
summary is an error naming the file and line: a silent misalignment would pair every later
document with the wrong summary.

Lines are split on "\\n" only (a stray "\\r" or U+2028 inside a document is text, not a line
break, as in the scripts that wrote the files).
"""

import itertools
import os

from prefix_jax.data import records
from prefix_jax.data.records import Example, MissingDataError, data_error

FILES = {"train": "train", "dev": "val", "test": "test"}
_EXPECTED = (
    "give data.*_path the directory holding train/val/test .source and .target (one document or summary per line)"
)


def _lines(path: str):
    with records.reading(path), open(path, encoding="utf-8", newline="\n") as f:
        for number, line in enumerate(f, start=1):
            yield number, line.rstrip("\n").removesuffix("\r")


def read(directory: str, split: str) -> list[Example]:
    """One Example (document, (summary,)) per line pair of `<directory>/<val|train|test>.{source,target}`."""
    if split not in FILES:
        raise ValueError(f"Unknown split {split!r}; expected one of {tuple(FILES)}.")
    if os.path.isfile(directory):
        raise MissingDataError(f"XSUM path {directory!r} is a file, not a directory; {_EXPECTED}.")
    paths = [os.path.join(directory, f"{FILES[split]}.{kind}") for kind in ("source", "target")]
    if missing := [p for p in paths if not os.path.isfile(p)]:
        raise MissingDataError(f"XSUM files {missing} do not exist; {_EXPECTED}.")
    examples = []
    for (number, source), (other, target) in itertools.zip_longest(*map(_lines, paths), fillvalue=(None, None)):
        if source is None or target is None:
            short, long_path = (paths[0], paths[1]) if source is None else (paths[1], paths[0])
            raise data_error(
                long_path, number or other, f"has a line here but {short} ended after {len(examples)} lines",
                "the two files must have one line per example, in the same order",
            )
        for path, text in zip(paths, (source, target)):
            if not text.strip():
                raise data_error(path, number, "empty line", "every document and summary must be non-empty")
        examples.append(Example(source=source.strip(), references=(target.strip(),)))
    return examples
