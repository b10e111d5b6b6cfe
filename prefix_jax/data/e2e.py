"""Reader for the original E2E NLG data: `mr||reference` text files and the official CSV.

The text format is Li & Liang (2021)'s (github.com/XiangLi1999/PrefixTuning,
data/e2e_data/src1_{train,valid,test}.txt; the vendored dev file is byte-identical to their
src1_valid.txt): one pair a line, the source already linearised
("name : Alimentum | area : city centre | family friendly : no"), the reference tokenised
("... not family - friendly ."). Plain, `.xz` or `.gz`.

The official CSV (header `mr,ref`, MR "name[Alimentum], area[city centre], familyFriendly[no]")
is converted to that linearisation: attributes in CSV order, named as the text files name
them (`eatType` -> "Type", `priceRange` -> "price", `familyFriendly` -> "family friendly"; the
others unchanged), and "£" and "-" in values set off by spaces ("£20-25" -> "£ 20 - 25"). This
rebuilds every MR of Li & Liang's valid and test files from the official devset.csv and
testset_w_refs.csv (547 and 630 MRs, checked). CSV references are kept as written: they are
not tokenised like the text files', so the two formats of one split share sources, not
references.

References of one MR are grouped into one Example in first-seen order; MRs and references
are stripped of surrounding whitespace (the text files end every reference with a space), as
Li & Liang's generation reader does; blank lines are skipped, as their training reader does.
"""

import csv
import gzip
import lzma
import os
import re
from typing import IO, Iterator

from prefix_jax.data import records
from prefix_jax.data.records import Example, data_error

_OPENERS = {".xz": lzma.open, ".gz": gzip.open}
_ATTRIBUTES = {
    "name": "name", "eatType": "Type", "food": "food", "priceRange": "price",
    "customer rating": "customer rating", "area": "area", "familyFriendly": "family friendly",
    "near": "near",
}
_ITEM = re.compile(r"([^\[\],]+)\[([^\[\]]*)\]")  # attribute[value]
_SPLIT_OFF = re.compile(r"([£-])")


def read(path: str) -> list[Example]:
    """One Example per distinct MR, with all its references in file order."""
    records.require_file(
        path, "E2E file", "a `mr||reference` text file (.txt, .txt.xz, or .txt.gz, "
        "e.g. data/e2e_original_valid.txt.xz) or the official CSV with references",
    )
    is_csv = _is_csv(path)
    references: dict[str, list[str]] = {}
    opener = _OPENERS.get(os.path.splitext(path)[1], open)
    not_utf8 = "if it is compressed, name it .xz or .gz (or decompress it); otherwise re-encode it as UTF-8"
    with records.reading(path, opener, not_utf8), opener(path, "rt", encoding="utf-8-sig", newline="") as f:
        for line, mr, reference in _csv_rows(path, f) if is_csv else _text_pairs(path, f):
            mr, reference = _non_empty(path, line, mr, reference)
            source = _linearise(path, line, mr) if is_csv else mr
            references.setdefault(source, []).append(reference)
    return [Example(source=source, references=tuple(texts)) for source, texts in references.items()]


def _is_csv(path: str) -> bool:
    root, extension = os.path.splitext(path)
    if extension in _OPENERS:
        extension = os.path.splitext(root)[1]
    return extension == ".csv"


def _text_pairs(path: str, f: IO[str]) -> Iterator[tuple[int, str, str]]:
    for line, text in enumerate(f, 1):
        if not text.strip():
            continue
        parts = text.split("||")
        if len(parts) != 2:
            problem = f"expected one `mr||reference` pair, found {len(parts) - 1} '||'"
            raise data_error(
                path, line, f"{problem} in {text.strip()[:80]!r}",
                "write each pair on its own line as `mr||reference`",
            )
        yield line, parts[0], parts[1]


def _csv_rows(path: str, f: IO[str]) -> Iterator[tuple[int, str, str]]:
    rows = csv.reader(f)
    header = next(rows, None)
    if header is None or [field.strip().lower() for field in header] != ["mr", "ref"]:
        raise data_error(
            path, 1, f"expected the CSV header `mr,ref`, found {header}",
            "use an official E2E CSV with references "
            "(trainset.csv, devset.csv, testset_w_refs.csv)",
        )
    line = rows.line_num + 1  # a quoted field may span lines: a row starts after the last one
    for row in rows:
        if row:  # a blank line reads as []
            if len(row) != 2:
                raise data_error(
                    path, line, f"expected 2 fields (mr, ref), found {len(row)}: {row}",
                    "quote fields that contain commas, "
                    'e.g. "name[Alimentum], area[city centre]",text',
                )
            yield line, row[0], row[1]
        line = rows.line_num + 1


def _non_empty(path: str, line: int, mr: str, reference: str) -> tuple[str, str]:
    mr, reference = mr.strip(), reference.strip()
    for what, value in (("MR", mr), ("reference", reference)):
        if not value:
            raise data_error(
                path, line, f"the {what} is empty", f"give the pair its {what} or remove the line"
            )
    return mr, reference


def _linearise(path: str, line: int, mr: str) -> str:
    """A CSV MR as the text files write it: "name : Alimentum | area : city centre"."""
    items = _ITEM.findall(mr)
    if not items or _ITEM.sub("", mr).strip(", "):
        raise data_error(
            path, line, f"MR {mr!r} is not a list of attribute[value]",
            'write it as "name[Alimentum], area[city centre], familyFriendly[no]"',
        )
    return linearise_attributes([(name.strip(), value) for name, value in items], path, line)


def linearise_attributes(items: list[tuple[str, str]], path: str, where: int | str) -> str:
    """[(CSV attribute, value)] as the text files write the MR; `path:where` names errors."""
    return " | ".join(_attribute(path, where, name, value) for name, value in items)


def _attribute(path: str, where: int | str, name: str, value: str) -> str:
    if name not in _ATTRIBUTES:
        raise data_error(
            path, where, f"unknown E2E attribute {name!r}", f"use one of {', '.join(_ATTRIBUTES)}",
        )
    value = " ".join(_SPLIT_OFF.sub(r" \1 ", value).split())
    if not value:
        problem = f"attribute {name!r} has an empty value"
        raise data_error(path, where, problem, f"write it as {name}[value]")
    return f"{_ATTRIBUTES[name]} : {value}"
