"""Reader for the WebNLG challenge 2017 XML: train and dev, and test if you have it.

`path` is the release as a `.tar.xz` (read in one streaming pass, nothing extracted) or a
directory holding the same layout, `webnlg2017/<split>/**/*.xml`. Files are read in sorted
member order, entries in document order, so the Example order never depends on the file
system.

Source linearisation is exactly Li & Liang (2021)'s training code
(github.com/XiangLi1999/PrefixTuning, transformers/src/transformers/data/datasets/
language_modeling.py, `LineByLineWebNLGTextDataset`): every <mtriple> of the
<modifiedtripleset> is written `" | " + "{subject} : {property} : {object}"`, the first one
included, so a source *starts* with " | "; subject, property (camelCase) and object are kept
verbatim (underscores, quotes). Their generation script (gpt2/run_generation.py,
`read_webnlg_files`) builds the same string for every entry but the first of a file, where
`if i > 0` tests the entry index instead of the triple index and drops the separators; the
training form is used everywhere here.

Two things Li & Liang do that a reader should not decide silently, left to the caller:
* they train only on <lex comment="good"> texts and evaluate against all of them; pass
  `only_good=True` for training to match (an entry with no good text is then skipped);
* their generation script merges entries with the same source into one input; this reader
  returns one Example per <entry>, as the files do.

Line numbers: the XML goes through expat into an ElementTree `TreeBuilder` (ElementTree's
own parsers do not report where an element starts), so every error names its exact line, in
a file named `archive.tar.xz[webnlg2017/dev/...xml]` when it is an archive member.
"""

import os
import tarfile
import xml.etree.ElementTree as ET
from xml.parsers import expat

from prefix_jax.data import records
from prefix_jax.data.records import DataError, Example, MissingDataError, data_error

SEEN_CATEGORIES = frozenset({
    "Airport", "Astronaut", "Building", "City", "ComicsCharacter",
    "Food", "Monument", "SportsTeam", "University", "WrittenWork",
})
_TOP = "webnlg2017"
_LAYOUT = f"{_TOP}/<split>/**/*.xml (train and dev as webnlg2017/train/1triples/*.xml, ...)"


def read(path: str, split: str, *, only_good: bool = False) -> list[Example]:
    """Examples of `split` ("train", "dev", ...): one per <entry>, all its <lex> as references."""
    examples = []
    for name, data in _xml_files(path, split):
        examples.extend(_examples(name, data, only_good))
    return examples


def linearise(triples: list[tuple[str, str, str]]) -> str:
    """Li & Liang's WebNLG source: " | s : p : o" for every triple, the first included."""
    return "".join(f" | {s} : {p} : {o}" for s, p, o in triples)


def _xml_files(path: str, split: str) -> list[tuple[str, bytes]]:
    """(name for messages, contents) of the split's XML files, in sorted path order."""
    if os.path.isdir(path):
        files, splits = _directory_files(path, split)
    elif os.path.isfile(path):
        files, splits = _archive_files(path, split)
    else:
        raise MissingDataError(
            f"WebNLG path {path!r} does not exist; pass the release archive "
            f"(e.g. data/webnlg2017_train_dev.tar.xz) or a directory holding {_LAYOUT}"
        )
    if not splits:
        raise DataError(
            f"WebNLG path {path!r} holds no {_LAYOUT}; pass the release archive "
            "(e.g. data/webnlg2017_train_dev.tar.xz) or a directory with that layout"
        )
    if not files:
        raise DataError(
            f"WebNLG split {split!r} is not in {path}; it holds: {', '.join(sorted(splits))}. "
            f"Pass one of those splits or data that has {_TOP}/{split}/*.xml"
        )
    return sorted(files, key=lambda file: file[0])


def _archive_files(path: str, split: str) -> tuple[list[tuple[str, bytes]], set[str]]:
    """One streaming pass: a compressed tar cannot seek back cheaply to read members."""
    files, splits = [], set()
    with open(path, "rb") as f:
        kind = records.compression(f.read(6))
    # Decompressed here, not by tarfile: lzma and gzip raise on a file cut short, where
    # tarfile's own stream would end the archive early, without a word, at a cut in a header.
    with records.reading(path), (kind[1] if kind else open)(path, "rb") as stream:
        try:
            archive = tarfile.open(fileobj=stream, mode="r|")
        except tarfile.ReadError as error:
            raise DataError(
                f"WebNLG path {path!r} is not a tar archive ({error}); pass the release archive "
                f"(e.g. data/webnlg2017_train_dev.tar.xz) or a directory holding {_LAYOUT}"
            ) from None
        with archive:
            for member in archive:
                parts = member.name.split("/")
                is_xml = member.isfile() and member.name.endswith(".xml")
                if not is_xml or parts[0] != _TOP or len(parts) < 3:
                    continue
                splits.add(parts[1])
                if parts[1] == split:
                    files.append((f"{path}[{member.name}]", archive.extractfile(member).read()))
        while stream.read(1 << 20):  # To the end: only there is a compressed stream's checksum tested.
            pass
    return files, splits


def _directory_files(path: str, split: str) -> tuple[list[tuple[str, bytes]], set[str]]:
    top = os.path.join(path, _TOP)
    splits = set()
    if os.path.isdir(top):
        splits = {d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d))}
    files = []
    for directory, _, names in os.walk(os.path.join(top, split)):
        for name in names:
            if name.endswith(".xml"):
                with open(os.path.join(directory, name), "rb") as f:
                    files.append((os.path.join(directory, name), f.read()))
    return files, splits


def _examples(name: str, data: bytes, only_good: bool) -> list[Example]:
    root, lines = _parse(name, data)
    examples = (_example(name, entry, lines, only_good) for entry in root.iter("entry"))
    return [example for example in examples if example is not None]


def _parse(name: str, data: bytes) -> tuple[ET.Element, dict[ET.Element, int]]:
    """The element tree and the line each element starts on."""
    if kind := records.compression(data):
        raise data_error(name, None, f"holds {kind[0]}-compressed data, not XML", "decompress it")
    builder, parser, lines = ET.TreeBuilder(), expat.ParserCreate(), {}

    def start(tag: str, attributes: dict[str, str]) -> None:
        lines[builder.start(tag, attributes)] = parser.CurrentLineNumber

    parser.StartElementHandler = start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        problem = f"malformed XML ({expat.ErrorString(error.code)}, column {error.offset + 1})"
        raise data_error(
            name, error.lineno, problem,
            "repair the file or replace it with an intact copy of the WebNLG 2017 release",
        ) from None
    return builder.close(), lines


def _example(
    name: str, entry: ET.Element, lines: dict[ET.Element, int], only_good: bool
) -> Example | None:
    line, eid, category = lines[entry], entry.get("eid", "?"), entry.get("category")
    if not category:
        problem = f"<entry eid={eid!r}> has no category"
        raise data_error(name, line, problem, 'add category="..." (e.g. "Airport")')
    mtriples = entry.iterfind("modifiedtripleset/mtriple")
    triples = [_triple(name, mtriple, lines[mtriple]) for mtriple in mtriples]
    if not triples:
        raise data_error(
            name, line, f"<entry eid={eid!r}> has no <modifiedtripleset>/<mtriple>",
            "give the entry its triples or remove it",
        )
    lexes = entry.findall("lex")
    if not lexes:
        problem = f"<entry eid={eid!r}> has no <lex> reference"
        raise data_error(name, line, problem, "add its texts or remove the entry")
    if only_good:
        lexes = [lex for lex in lexes if lex.get("comment") == "good"]
    references = tuple(_text(name, lex, lines[lex]) for lex in lexes)
    if not references:
        return None
    return Example(
        source=linearise(triples), references=references, category=category,
        seen=category in SEEN_CATEGORIES,
    )


def _triple(name: str, mtriple: ET.Element, line: int) -> tuple[str, str, str]:
    parts = (mtriple.text or "").strip().split(" | ")
    if len(parts) != 3 or not all(parts):
        raise data_error(
            name, line, f"<mtriple> {mtriple.text!r} is not 'subject | property | object'",
            "write the triple as three non-empty parts separated by ' | '",
        )
    return parts[0], parts[1], parts[2]


def _text(name: str, lex: ET.Element, line: int) -> str:
    text = (lex.text or "").strip()
    if not text:
        problem = f"<lex lid={lex.get('lid', '?')!r}> is empty"
        raise data_error(name, line, problem, "give it its text or remove it")
    return text
