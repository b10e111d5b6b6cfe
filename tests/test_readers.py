"""The readers on the real vendored data (data/), and every error they promise, on small files.

The counts are literals computed once without the readers: `<entry` and `<lex` tags counted
with grep over the archive's XML, distinct MRs with sort -u over the E2E file.
`test_webnlg_counts_agree_with_a_regex_over_the_archive` keeps that method beside them.
"""

import dataclasses
import functools
import gzip
import json
import lzma
import os
import pathlib
import re
import tarfile

import numpy as np
import pytest

from experiments import common
from prefix_jax import loop
from prefix_jax.data import dart, e2e, sources, webnlg, xsum
from prefix_jax.data.records import DataError, Example, MissingDataError
from prefix_jax.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEBNLG = os.path.join(ROOT, "data", "webnlg2017_train_dev.tar.xz")
E2E_DEV = os.path.join(ROOT, "data", "e2e_original_valid.txt.xz")

# (entries, texts): the published WebNLG 2017 challenge figures, which the files match.
WEBNLG_COUNTS = {"train": (6940, 18102), "dev": (872, 2268)}
# Only <lex comment="good"> (Li & Liang's training data): 77 / 10 texts are "toFix",
# and 5 train / 1 dev entries have no good text at all.
WEBNLG_GOOD_COUNTS = {"train": (6935, 18025), "dev": (871, 2258)}
E2E_DEV_MRS, E2E_DEV_REFERENCES = 547, 4672


@functools.cache
def _webnlg(split: str, only_good: bool = False) -> list[Example]:
    return webnlg.read(WEBNLG, split, only_good=only_good)


def _xml(*entries: str) -> str:
    return "<benchmark>\n  <entries>\n" + "".join(entries) + "  </entries>\n</benchmark>\n"


def _entry(category: str, triples: list[str], lexes: list[str], eid: str = "Id1") -> str:
    mtriples = "".join(f"        <mtriple>{t}</mtriple>\n" for t in triples)
    lex = "".join(
        f'      <lex comment="good" lid="Id{i}">{text}</lex>\n' for i, text in enumerate(lexes, 1)
    )
    return (
        f'    <entry category="{category}" eid="{eid}" size="{len(triples)}">\n'
        f"      <modifiedtripleset>\n{mtriples}      </modifiedtripleset>\n{lex}    </entry>\n"
    )


def _webnlg_dir(tmp_path, split: str, text: str) -> str:
    directory = tmp_path / "webnlg2017" / split / "1triples"
    directory.mkdir(parents=True)
    (directory / "bad.xml").write_text(text, encoding="utf-8")
    return str(tmp_path)


# WebNLG 2017 on the real archive.

@pytest.mark.parametrize("split", ["train", "dev"])
def test_webnlg_counts(split):
    examples, good = _webnlg(split), _webnlg(split, only_good=True)
    assert (len(examples), sum(len(e.references) for e in examples)) == WEBNLG_COUNTS[split]
    assert (len(good), sum(len(e.references) for e in good)) == WEBNLG_GOOD_COUNTS[split]


def test_webnlg_counts_agree_with_a_regex_over_the_archive():
    counts = {split: [0, 0] for split in WEBNLG_COUNTS}
    with tarfile.open(WEBNLG) as archive:
        for member in archive.getmembers():
            split = member.name.split("/")[1] if member.name.endswith(".xml") else None
            if split in counts:
                data = archive.extractfile(member).read()
                counts[split][0] += len(re.findall(rb"<entry[\s>]", data))
                counts[split][1] += len(re.findall(rb"<lex[\s>]", data))
    assert {split: tuple(c) for split, c in counts.items()} == WEBNLG_COUNTS


def test_webnlg_first_entry_and_a_three_triple_entry_literally():
    assert _webnlg("train")[0] == Example(
        source=' | Aarhus_Airport : cityServed : "Aarhus, Denmark"',
        references=(
            "The Aarhus is the airport of Aarhus, Denmark.",
            "Aarhus Airport serves the city of Aarhus, Denmark.",
        ),
        category="Airport",
        seen=True,
    )
    source = (
        " | Alan_Bean : was a crew member of : Apollo_12 | Apollo_12 : operator : NASA"
        " | Apollo_12 : commander : David_Scott"
    )
    assert [e for e in _webnlg("dev") if e.source == source] == [Example(
        source=source,
        references=(
            "Alan Bean was under commander David Scott on Nasa's Apollo 12 mission.",
            "Alan Bean was a member of the NASA operated Apollo 12 crew commanded by David Scott.",
            "David Scott was the commander of the NASA operated Apollo 12 flight mission on which "
            "the crew included Alan Bean.",
        ),
        category="Astronaut",
        seen=True,
    )]


def test_webnlg_groups_every_lex_of_an_entry_into_one_example():
    train = _webnlg("train")
    assert [len(e.references) for e in train[:4]] == [2, 1, 3, 2]  # Airport Id1..Id4, as the file
    assert train[2].references[2] == "Aarhus Airport is 25.0 metres above the sea level."
    assert max(len(e.references) for e in train) > 3


@pytest.mark.parametrize("split", ["train", "dev"])
def test_webnlg_train_and_dev_categories_are_the_ten_seen_ones(split):
    assert {e.category for e in _webnlg(split)} == webnlg.SEEN_CATEGORIES
    assert all(e.seen for e in _webnlg(split))


def test_webnlg_directory_reads_like_the_archive(tmp_path):
    with tarfile.open(WEBNLG) as archive:
        dev = [member for member in archive if "/dev/" in member.name]
        archive.extractall(tmp_path, members=dev, filter="data")
    assert webnlg.read(str(tmp_path), "dev") == _webnlg("dev")


def test_webnlg_test_split_marks_unseen_categories(tmp_path):
    directory = tmp_path / "webnlg2017" / "test"
    directory.mkdir(parents=True)
    (directory / "testdata_with_lex.xml").write_text(_xml(
        _entry(
            "Athlete",
            ["Aaron_Boogaard | birthPlace | Canada", "Aaron_Boogaard | height | 1.905"],
            ["Aaron Boogaard was born in Canada.", "Canadian Aaron Boogaard is 1.905 m tall."],
        ),
        _entry("Airport", ["Aarhus_Airport | cityServed | Aarhus"], ["It serves Aarhus."]),
    ))
    assert webnlg.read(str(tmp_path), "test") == [
        Example(
            source=" | Aaron_Boogaard : birthPlace : Canada | Aaron_Boogaard : height : 1.905",
            references=(
                "Aaron Boogaard was born in Canada.", "Canadian Aaron Boogaard is 1.905 m tall."
            ),
            category="Athlete",
            seen=False,
        ),
        Example(" | Aarhus_Airport : cityServed : Aarhus", ("It serves Aarhus.",), "Airport", True),
    ]


def _heldout_config():
    config = common.base_config().data
    config.heldout_categories = "Airport, Food"
    return config


@functools.cache
def _heldout_reads():
    return {split: sources.read(_heldout_config(), split) for split in ("train", "dev")}


def test_heldout_categories_leave_training_and_are_evaluated_as_unseen():
    train, dev = _heldout_reads()["train"], _heldout_reads()["dev"]
    full_train, full_dev = _webnlg("train", only_good=True), _webnlg("dev")
    assert not {"Airport", "Food"} & {e.category for e in train}
    assert train == [e for e in full_train if e.category not in ("Airport", "Food")]
    # Dev keeps its own entries (held-out ones marked unseen), then every held-out training
    # entry with all its texts as references.
    assert dev[: len(full_dev)] == [
        dataclasses.replace(e, seen=e.category not in ("Airport", "Food")) for e in full_dev]
    held = [e for e in _webnlg("train") if e.category in ("Airport", "Food")]
    assert dev[len(full_dev):] == [dataclasses.replace(e, seen=False) for e in held]
    assert len(held) == 1090 + 1424 and sum(not e.seen for e in dev) > len(held)
    # Other training data: a resume with other held-out categories is refused, one from
    # before the field existed compares as none held out.
    assert "data.heldout_categories" in loop.RUN_FIELDS and loop.ADDED_RUN_FIELDS["data.heldout_categories"] == ""


def test_a_decoding_sample_spreads_over_seen_and_unseen_halves():
    dev = loop.distinct_inputs(_heldout_config(), "dev")
    sample = loop.sample_inputs(dev, 201)
    halves = sorted((sum(e.seen for e in sample), sum(not e.seen for e in sample)))
    assert halves == [100, 101]  # Both groups are larger than 101; the smaller one takes the rounded-down half.
    assert [dev.index(e) for e in sample] == sorted(dev.index(e) for e in sample)
    assert {e.category for e in sample} == {e.category for e in dev}  # Evenly spaced: every category.
    assert loop.sample_inputs(dev, 0) == dev and loop.sample_inputs(dev[:5], 10) == dev[:5]
    seen_only = [e for e in dev if e.seen]
    assert loop.sample_inputs(seen_only, 7) == [seen_only[i] for i in np.linspace(0, len(seen_only) - 1, 7).round().astype(int)]
    few_unseen = seen_only[:10] + [e for e in dev if not e.seen][:2]
    assert sum(not e.seen for e in loop.sample_inputs(few_unseen, 6)) == 2  # The seen half takes the rest.


def test_heldout_categories_on_the_test_split_and_bad_names(tmp_path):
    directory = tmp_path / "webnlg2017" / "test"
    directory.mkdir(parents=True)
    (directory / "test.xml").write_text(_xml(
        _entry("Airport", ["Aarhus_Airport | cityServed | Aarhus"], ["It serves Aarhus."]),
        _entry("City", ["Aarhus | country | Denmark"], ["Aarhus is in Denmark."]),
    ))
    config = common.base_config().data
    config.update(test_path=str(tmp_path), heldout_categories="Airport")
    assert [(e.category, e.seen) for e in sources.read(config, "test")] == [("Airport", False), ("City", True)]
    config.heldout_categories = "Airports"
    with pytest.raises(ConfigError, match=r"data.heldout_categories names \['Airports'\], not categories of"):
        sources.read(config, "train")
    config.update(name="e2e", heldout_categories="Airport")
    with pytest.raises(ConfigError, match="data.heldout_categories needs WebNLG-format data"):
        sources.read(config, "dev")


# E2E on the real dev file; the CSV format on a small file.

def test_e2e_dev_counts_and_first_example():
    examples = e2e.read(E2E_DEV)
    assert len(examples) == len({e.source for e in examples}) == E2E_DEV_MRS
    assert sum(len(e.references) for e in examples) == E2E_DEV_REFERENCES
    assert examples[0] == Example(
        source="name : Alimentum | area : city centre | family friendly : no",
        references=(
            "There is a place in the city centre , Alimentum , that is not family - friendly .",
            "In the city centre there is a venue name Alimentum , this is not a family - friendly venue .",
            "Alimentum is not a family - friendly place , located in city centre .",
            "Alimentum is not a family - friendly arena and is located in the city centre .",
            "Alimentum is not a family - friendly place in the city centre .",
            "Alimentum in city centre is not a family - friendly place .",
        ),
    )


def test_e2e_csv_reads_like_the_equivalent_text(tmp_path):
    text = (
        "name : Blue Spice | Type : coffee shop | price : £ 20 - 25 | customer rating : 3 out of 5"
        " | family friendly : yes||Blue Spice is a coffee shop .\n"
        "name : Cotto | near : The Portland Arms||Cotto is near The Portland Arms .\n"
        "name : Blue Spice | Type : coffee shop | price : £ 20 - 25 | customer rating : 3 out of 5"
        " | family friendly : yes||It costs £ 20 - 25 .\n"
    )
    csv_text = (
        "mr,ref\n"
        '"name[Blue Spice], eatType[coffee shop], priceRange[£20-25], customer rating[3 out of 5], '
        'familyFriendly[yes]",Blue Spice is a coffee shop .\n'
        '"name[Cotto], near[The Portland Arms]",Cotto is near The Portland Arms .\n'
        '"name[Blue Spice], eatType[coffee shop], priceRange[£20-25], customer rating[3 out of 5], '
        'familyFriendly[yes]",It costs £ 20 - 25 .\n'
    )
    with gzip.open(tmp_path / "pairs.txt.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    (tmp_path / "pairs.csv").write_text(csv_text, encoding="utf-8")
    examples = e2e.read(str(tmp_path / "pairs.csv"))
    assert examples == e2e.read(str(tmp_path / "pairs.txt.gz"))
    assert [len(e.references) for e in examples] == [2, 1]


# DART on a small file.

def test_dart_reads_entries_like_li_and_liang(tmp_path):
    path = tmp_path / "dart.json"
    path.write_text(json.dumps([
        {
            "tripleset": [["Mars Hill College", "JOINED", "1973"], ["Mars Hill College", "IN", "NC"]],
            "subtree_was_extended": True,
            "annotations": [
                {"source": "WikiSQL_decl_sents", "text": "A school from Mars Hill joined in 1973."},
                {"source": "WikiSQL_decl_sents", "text": "Mars Hill College joined in 1973. "},
            ],
        },
        {"tripleset": [["Aarhus", "leaderName", "Jacob_Bundsgaard"]], "annotations": [
            {"source": "webnlg", "text": "Aarhus is led by Jacob Bundsgaard."}]},
    ], indent=2))
    assert dart.read(str(path)) == [
        Example(
            "Mars Hill College : joined : 1973 | Mars Hill College : in : NC",
            ("A school from Mars Hill joined in 1973.", "Mars Hill College joined in 1973."),
        ),
        Example("Aarhus : leadername : Jacob_Bundsgaard", ("Aarhus is led by Jacob Bundsgaard.",)),
    ]


# Errors name the file and the line (or entry) of the bad record.

def test_webnlg_malformed_xml_names_file_and_line(tmp_path):
    text = "<benchmark>\n  <entries>\n    <entry category='Food'>\n  </oops>\n"
    path = _webnlg_dir(tmp_path, "train", text)
    with pytest.raises(DataError, match=r"bad\.xml:4: malformed XML \(mismatched tag"):
        webnlg.read(path, "train")


def test_webnlg_entry_without_lex_names_its_line(tmp_path):
    path = _webnlg_dir(tmp_path, "dev", _xml(_entry("Food", ["Bread | country | France"], [])))
    with pytest.raises(DataError, match=r"bad\.xml:3: <entry eid='Id1'> has no <lex> reference"):
        webnlg.read(path, "dev")


def test_webnlg_entry_without_triples_names_its_line(tmp_path):
    path = _webnlg_dir(tmp_path, "dev", _xml(_entry("Food", ["Bread | country | France"], ["x"]),
                                             _entry("Food", [], ["Bread is French."], eid="Id2")))
    with pytest.raises(DataError, match=r"bad\.xml:9: <entry eid='Id2'> has no <modifiedtripleset>"):
        webnlg.read(path, "dev")


def test_webnlg_unknown_split_says_which_exist():
    with pytest.raises(ValueError, match=r"split 'test' is not in .*; it holds: dev, train"):
        _webnlg("test")


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "valid.txt",
            "name : A||A .\n\nname : B, B is there .\nname : C||C .\n",
            r"valid\.txt:3: expected one `mr\|\|reference` pair, found 0 '\|\|'",
        ),
        ("valid.txt", "name : A||A is here .\nname : B|| \n", r"valid\.txt:2: the reference is empty"),
        (
            "devset.csv",
            'mr,ref\n"name[A]","A spans\ntwo lines."\nname[B],B is, unquoted\n',
            r"devset\.csv:4: expected 2 fields \(mr, ref\), found 3",
        ),
        ("devset.csv", 'mr,ref\n"name[A], colour[red]",A is red.\n', r"devset\.csv:2: unknown E2E attribute 'colour'"),
    ],
    ids=["txt-no-separator", "txt-empty-reference", "csv-bad-row", "csv-unknown-attribute"],
)
def test_e2e_bad_records_name_file_and_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        e2e.read(str(path))


def test_dart_bad_entry_names_entry_and_line(tmp_path):
    path = tmp_path / "dart.json"
    good = {"tripleset": [["A", "p", "B"]], "annotations": [{"source": "x", "text": "A p B."}]}
    path.write_text(json.dumps([good, {"tripleset": [["A", "p"]], "annotations": []}], indent=1))
    with pytest.raises(DataError, match=r"dart\.json:17: entry 1: triple \['A', 'p'\] is not"):
        dart.read(str(path))


def test_dart_malformed_json_names_its_line(tmp_path):
    path = tmp_path / "dart.json"
    path.write_text('[\n  {"tripleset": [["A", "p", "B"]],\n   "annotations": [}\n]\n')
    with pytest.raises(DataError, match=r"dart\.json:3: malformed JSON"):
        dart.read(str(path))


# Paths that are not what the reader needs: missing, or a directory for a file (or the reverse).

@pytest.mark.parametrize(
    "read, make, message",
    [
        (lambda p: webnlg.read(p, "train"), None, r"WebNLG path '.*data' does not exist; pass the release archive"),
        (e2e.read, None, r"E2E file '.*data' does not exist; pass a `mr\|\|reference` text file"),
        (e2e.read, pathlib.Path.mkdir, r"E2E file '.*data' is a directory; pass a `mr\|\|reference` text file"),
        (dart.read, None, r"DART file '.*data' does not exist; pass a DART json file"),
        (dart.read, pathlib.Path.mkdir, r"DART file '.*data' is a directory; pass a DART json file"),
        (lambda p: xsum.read(p, "dev"), None, r"XSUM files \[.*val\.source', .*\] do not exist; give data\.\*_path"),
        (lambda p: xsum.read(p, "dev"), pathlib.Path.touch, r"XSUM path '.*data' is a file, not a directory; give"),
    ],
    ids=["webnlg-missing", "e2e-missing", "e2e-directory", "dart-missing", "dart-directory", "xsum-missing",
         "xsum-file"],
)
def test_missing_path_or_wrong_kind_says_what_to_pass(tmp_path, read, make, message):
    path = tmp_path / "data"
    if make:
        make(path)
    with pytest.raises(MissingDataError, match=message):  # A DataError and a FileNotFoundError.
        read(str(path))


# Files that are not what their name says: cut short, corrupt, compressed, not UTF-8.

def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x55]) + data[middle + 1:]


@pytest.mark.parametrize(
    "source, name, damage, read",
    [
        (WEBNLG, "webnlg2017.tar.xz", _cut, lambda p: webnlg.read(p, "train")),
        (WEBNLG, "webnlg2017.tar.xz", _flip, lambda p: webnlg.read(p, "dev")),
        (E2E_DEV, "valid.txt.xz", _cut, e2e.read),
        (E2E_DEV, "valid.txt.gz", lambda data: _cut(gzip.compress(lzma.decompress(data))), e2e.read),
    ],
    ids=["webnlg-truncated", "webnlg-corrupt", "e2e-xz-truncated", "e2e-gz-truncated"],
)
def test_truncated_or_corrupt_compressed_file_is_named(tmp_path, source, name, damage, read):
    path = tmp_path / name
    with open(source, "rb") as f:
        path.write_bytes(damage(f.read()))
    message = rf"^{re.escape(str(path))}: the file is truncated or corrupt \(.+\); download or copy it again$"
    with pytest.raises(DataError, match=message):
        read(str(path))


_E2E_LINE = b"name : A||A .\n"


@pytest.mark.parametrize(
    "files, read, message",
    [
        (
            {"valid.txt": lzma.compress(_E2E_LINE)}, lambda d: e2e.read(f"{d}/valid.txt"),
            r"valid\.txt:1: byte 0 \(0xfd\) is not UTF-8 text \(xz-compressed data\); "
            r"if it is compressed, name it \.xz or \.gz",
        ),
        (
            # Past the first buffer the codec decodes: the offset still counts from the file's start.
            {"valid.txt": 10_000 * _E2E_LINE + "name : Café||Café .\n".encode("latin-1")},
            lambda d: e2e.read(f"{d}/valid.txt"),
            r"valid\.txt:10001: byte 140010 \(0xe9\) is not UTF-8 text; .*otherwise re-encode it as UTF-8",
        ),
        (
            {"devset.csv": gzip.compress(b"mr,ref\nname[A],A .\n")}, lambda d: e2e.read(f"{d}/devset.csv"),
            r"devset\.csv:1: byte 1 \(0x8b\) is not UTF-8 text \(gzip-compressed data\)",
        ),
        (
            {"dart.json": gzip.compress(b"[]")}, lambda d: dart.read(f"{d}/dart.json"),
            r"dart\.json:1: byte 1 \(0x8b\) is not UTF-8 text \(gzip-compressed data\); "
            r"if it is compressed, decompress it",
        ),
        (
            {"val.source": b"one\ntwo\n", "val.target": b"1\n\xff2\n"}, lambda d: xsum.read(d, "dev"),
            r"val\.target:2: byte 2 \(0xff\) is not UTF-8 text",
        ),
        (
            {"webnlg2017/dev/1triples/bad.xml": lzma.compress(_xml().encode())}, lambda d: webnlg.read(d, "dev"),
            r"bad\.xml: holds xz-compressed data, not XML; decompress it",
        ),
    ],
    ids=["e2e-xz-as-txt", "e2e-latin-1", "e2e-gzip-as-csv", "dart-gzip", "xsum-bad-byte", "webnlg-xz-as-xml"],
)
def test_compressed_or_non_utf8_text_names_file_line_and_byte(tmp_path, files, read, message):
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError, match=message):
        read(str(tmp_path))
