"""The record every reader returns, and the error every reader raises.

One record type for all table-to-text sets lets the pipeline, the metrics and the
tests treat WebNLG, E2E and DART alike: a linearised input and all its references.
Errors name the file and the line (or entry) of the bad record, because a message
like "KeyError: 'lex'" on a 20 000-record file sends the user hunting.
"""

import dataclasses

from prefix_jax import errors


@dataclasses.dataclass(frozen=True)
class Example:
    source: str  # linearised input, e.g. " | Aarhus_Airport : cityServed : Aarhus"
    references: tuple[str, ...]  # every reference text for this input, in file order
    category: str = ""  # WebNLG category ("Airport"), "" where the data set has none
    seen: bool = True  # WebNLG: category seen in training (False = unseen test category)


class DataError(errors.UserError):
    """A record in a data file is malformed; the message says where, what and what to do."""


def data_error(path: str, where: int | str, problem: str, fix: str) -> DataError:
    """`DataError("<path>:<where>: <problem>; <fix>")`; `where` is a 1-based line number,
    or a line and more, e.g. "12: entry 3"."""
    return DataError(f"{path}:{where}: {problem}; {fix}")
