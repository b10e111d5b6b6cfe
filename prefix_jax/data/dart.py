"""Reader for DART (Nan et al., 2021) JSON: a list of entries {"tripleset": [[s, p, o], ...],
"subtree_was_extended": ..., "annotations": [{"source": ..., "text": ...}, ...]}.

Source linearisation is exactly Li & Liang (2021)'s DART code (github.com/XiangLi1999/
PrefixTuning, language_modeling.py `LineByLineTriplesTextDataset` and gpt2/run_generation.py
`read_triples_files`): "s : p : o | s : p : o" with the predicate lower-cased and " | " only
*between* triples. That differs from their WebNLG form (see webnlg.py: nothing lower-cased, a
leading " | "); each reader follows the code the paper's numbers came from.

One Example per entry, the annotation texts as references (stripped of surrounding
whitespace); entries with the same tripleset are not merged (Li & Liang's generation script
merges them). A JSON list carries no line per entry, so the file is walked entry by entry
with `JSONDecoder.raw_decode`, which gives each entry's offset: errors name `entry <i>`
(0-based) and the line it starts on.
"""

import json
import re
from typing import Iterator

from prefix_jax.data import records
from prefix_jax.data.records import DataError, Example, data_error

_SPACE = re.compile(r"[ \t\n\r]*")


class _Bad(Exception):
    """What is wrong with one entry and how to fix it; `read` adds the file and position."""


def read(path: str) -> list[Example]:
    """One Example per entry of a DART json file."""
    records.require_file(path, "DART file", "a DART json file such as dart-v1.1.1-full-train.json")
    with records.reading(path), open(path, encoding="utf-8") as f:
        text = f.read()
    examples = []
    for index, line, entry in _entries(path, text):
        try:
            examples.append(_example(entry))
        except _Bad as bad:
            raise data_error(path, f"{line}: entry {index}", *bad.args) from None
    return examples


def linearise(triples: list[list[str]]) -> str:
    """Li & Liang's DART source: "s : p : o" joined by " | ", predicates lower-cased."""
    return " | ".join(f"{s} : {p.lower()} : {o}" for s, p, o in triples)


def _entries(path: str, text: str) -> Iterator[tuple[int, int, object]]:
    """(index, line, entry) for each element of the top-level JSON list."""
    decoder, index, line, counted = json.JSONDecoder(), 0, 1, 0
    position = _skip(text, 0)
    if not text.startswith("[", position):
        raise _malformed(path, text)
    position = _skip(text, position + 1)
    while not text.startswith("]", position):
        if index:
            if not text.startswith(",", position):
                raise _malformed(path, text)
            position = _skip(text, position + 1)
        line, counted = line + text.count("\n", counted, position), position
        try:
            entry, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError:
            raise _malformed(path, text) from None
        yield index, line, entry
        index, position = index + 1, _skip(text, end)
    if _skip(text, position + 1) < len(text):
        raise _malformed(path, text)


def _skip(text: str, position: int) -> int:
    return _SPACE.match(text, position).end()


def _malformed(path: str, text: str) -> DataError:
    """json's own message and line for broken JSON; else the file is JSON but not a list."""
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return data_error(path, error.lineno, f"malformed JSON ({error.msg})", "repair the file")
    return data_error(
        path, 1, "expected a JSON list of DART entries",
        'pass a DART json file: [{"tripleset": ..., "annotations": ...}, ...]',
    )


def _example(entry: object) -> Example:
    if not isinstance(entry, dict):
        raise _Bad(
            f"expected an object, found {type(entry).__name__}",
            'write the entry as {"tripleset": ..., "annotations": ...}',
        )
    triples, annotations = entry.get("tripleset"), entry.get("annotations")
    if not isinstance(triples, list) or not triples:
        raise _Bad(
            f"'tripleset' is {triples!r}, not a non-empty list",
            'give it [["subject", "predicate", "object"], ...]',
        )
    for triple in triples:
        if not (isinstance(triple, list) and len(triple) == 3 and all(_is_text(x) for x in triple)):
            raise _Bad(
                f"triple {triple!r} is not [subject, predicate, object]",
                "write each triple as three non-empty strings",
            )
    if not isinstance(annotations, list) or not annotations:
        raise _Bad(
            f"'annotations' is {annotations!r}, not a non-empty list",
            'give it [{"source": ..., "text": ...}, ...]',
        )
    return Example(source=linearise(triples), references=tuple(_text(a) for a in annotations))


def _text(annotation: object) -> str:
    text = annotation.get("text") if isinstance(annotation, dict) else None
    if not _is_text(text):
        raise _Bad(
            f"annotation {annotation!r} has no text",
            'write it as {"source": ..., "text": "..."} or remove it',
        )
    return text.strip()


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())
