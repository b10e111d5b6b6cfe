"""The record every reader returns, the error every reader raises, and the guards that make
a file that cannot be read fail with that error.

One record type for all table-to-text sets lets the pipeline, the metrics and the
tests treat WebNLG, E2E and DART alike: a linearised input and all its references.
Errors name the file and the line (or entry) of the bad record, because a message
like "KeyError: 'lex'" on a 20 000-record file sends the user hunting. The same holds
for a file that is not what its name says (compressed, not UTF-8, cut short): lzma,
tarfile or the UTF-8 codec fail with a message that names no file, so `reading` and
`read_json_object` turn their errors into one naming the file, where it goes wrong
and the fix.
"""

import contextlib
import dataclasses
import gzip
import json
import lzma
import os
import tarfile
import zlib
from typing import IO, Callable, Iterator

from prefix_jax import errors


@dataclasses.dataclass(frozen=True)
class Example:
    source: str  # linearised input, e.g. " | Aarhus_Airport : cityServed : Aarhus"
    references: tuple[str, ...]  # every reference text for this input, in file order
    category: str = ""  # WebNLG category ("Airport"), "" where the data set has none
    seen: bool = True  # WebNLG: category seen in training (False = unseen test category)


class DataError(errors.UserError):
    """A record in a data file is malformed; the message says where, what and what to do."""


class MissingDataError(DataError, FileNotFoundError):
    """A data path does not exist, or is a directory where a file is expected (or the reverse)."""


# The compressed formats a data file may arrive in: leading bytes -> (name, how to open it).
_COMPRESSION = {b"\xfd7zXZ\x00": ("xz", lzma.open), b"\x1f\x8b": ("gzip", gzip.open)}
# What a truncated or corrupt compressed file or tar archive raises part-way through.
_DAMAGED = (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile, tarfile.ReadError)
_REENCODE = "if it is compressed, decompress it; otherwise re-encode it as UTF-8"


def data_error(
    path: str, where: int | str | None, problem: str, fix: str, error: type[errors.UserError] = DataError
) -> errors.UserError:
    """`error("<path>:<where>: <problem>; <fix>")`; `where` is a 1-based line number, or a
    line and more, e.g. "12: entry 3", or None where the problem is the whole file."""
    place = path if where is None else f"{path}:{where}"
    return error(f"{place}: {problem}; {fix}")


def require_file(path: str, what: str, expected: str) -> None:
    """Refuses a path that is missing or a directory, saying which and what to pass instead."""
    if not os.path.isfile(path):
        problem = "is a directory" if os.path.isdir(path) else "does not exist"
        raise MissingDataError(f"{what} {path!r} {problem}; pass {expected}")


def compression(head: bytes) -> tuple[str, Callable] | None:
    """(name, opener) of the compressed format of a file that starts with `head`, else None."""
    return next((kind for magic, kind in _COMPRESSION.items() if head.startswith(magic)), None)


@contextlib.contextmanager
def reading(
    path: str, opener: Callable = open, fix: str = _REENCODE, error: type[errors.UserError] = DataError
) -> Iterator[None]:
    """Makes a read of `path` that meets non-UTF-8 bytes, or a truncated or corrupt compressed
    file or tar archive, raise `error` naming the file. `opener(path, "rb")` gives the bytes
    the reader decodes (decompressed, for a compressed file); `fix` is said for non-UTF-8."""
    try:
        try:
            yield
        except UnicodeDecodeError:
            # Its offset counts from the start of a buffer, not of the file: look again.
            with opener(path, "rb") as f:
                raise _not_utf8(path, f, fix, error) from None
    except _DAMAGED as damage:
        raise data_error(
            path, None, f"the file is truncated or corrupt ({damage})", "download or copy it again", error
        ) from None


def _not_utf8(path: str, f: IO[bytes], fix: str, error: type[errors.UserError]) -> errors.UserError:
    """The error for the first byte of binary stream `f` that is not UTF-8."""
    offset = 0
    for line, raw in enumerate(f, 1):  # b"\n" never occurs inside a UTF-8 character.
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            for _ in f:  # A corrupt compressed file decompresses to bad bytes before it fails.
                pass
            kind = compression(raw) if line == 1 else None
            problem = f"byte {offset + bad.start} (0x{raw[bad.start]:02x}) is not UTF-8 text"
            return data_error(path, line, problem + (f" ({kind[0]}-compressed data)" if kind else ""), fix, error)
        offset += len(raw)
    return data_error(path, None, "is not UTF-8 text", fix, error)  # It changed since the first read.


def read_json_object(path: str, error: type[errors.UserError], fix: str) -> dict:
    """The JSON object in `path`; truncated, malformed or non-UTF-8 JSON, or JSON that is not
    an object, raises `error` naming the file, the line and `fix`."""
    with reading(path, fix=fix, error=error), open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except json.JSONDecodeError as bad:
            problem = f"malformed JSON ({bad.msg}: column {bad.colno})"
            raise data_error(path, bad.lineno, problem, fix, error) from None
    if not isinstance(value, dict):
        raise data_error(path, 1, f"holds a JSON {type(value).__name__}, not an object", fix, error)
    return value


def read_saved_config(
    directory: str, config_name: str, weights_name: str, *, error: type[errors.UserError], fix: str,
    marker: tuple[str, str], expected: dict,
) -> dict:
    """The JSON config of a saved prefix directory, checked: both files are there, the config's
    `marker` field (name, value) says what it holds, and its `expected` fields match the model."""
    config_file, weights_file = (os.path.join(directory, name) for name in (config_name, weights_name))
    for file in (config_file, weights_file):
        if not os.path.isfile(file):
            raise error(f"{file} does not exist; {fix}.")
    config = read_json_object(config_file, error, fix)
    field, value = marker
    if config.get(field) != value:
        raise error(f"{config_file}: {field} is {config.get(field)!r}, not {value!r}; {fix}.")
    problems = [f"{k}={config.get(k)!r} (the model has {v})" for k, v in expected.items() if config.get(k) != v]
    if problems:
        raise error(f"{directory} was made for another model: " + ", ".join(problems) + ".")
    return config
