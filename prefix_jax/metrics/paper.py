"""Each data set's metrics, computed and laid out as Li & Liang (2021) report them.

  e2e     BLEU NIST MET R-L CIDEr           (Table 1; the E2E script, see table.py)
  webnlg  BLEU MET TER, for seen (S), unseen (U) and all (A) categories (Table 1)
  dart    BLEU MET TER                       (Table 1; MoverScore, BERTScore and BLEURT
                                              need model downloads and are not computed)
  xsum    R-1 R-2 R-L                        (Table 2; rouge-score with stemming)
  other   BLEU TER R-L                       (copy, text: sacrebleu and rouge-score)

Scores (the JSON) are on the scale each data set's official script prints (E2E's BLEU in
[0, 1], WebNLG's in [0, 100]); tables are on the paper's (BLEU and ROUGE x100 everywhere,
E2E's METEOR and ROUGE-L x100, WebNLG's and DART's METEOR and TER in [0, 1]). BLEU is lowercased for table-to-text as the
E2E (mteval -lc) and WebNLG (multi-bleu.perl -lc) scripts do; the WebNLG script scores
against the first three references of each input, and so does this. METEOR is METEOR 1.5
through pycocoevalcap and TER is sacrebleu's tercom port; the WebNLG/DART scripts tokenise
for multi-bleu and tercom themselves, so their values can differ by tenths of a point.

Metrics that need Java (METEOR, and the E2E script's ROUGE-L and CIDEr) are reported as
None, with the reason under "unavailable", when `java` is missing: a finished run's
generations are worth keeping whatever the machine lacks.
"""

import dataclasses
import math
from typing import Callable, Optional, Sequence

from prefix_jax.metrics import table, text

Scores = dict[str, Optional[float]]


@dataclasses.dataclass(frozen=True)
class Column:
    header: str
    key: str  # Key in the scores dict.
    scale: float = 1.0  # Shown value = score * scale.
    digits: int = 2


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a data set reports: its columns, how they are computed, and over which subsets."""

    columns: tuple[Column, ...]
    compute: Callable[[Sequence[str], Sequence[Sequence[str]]], Scores]
    by_seen: bool = False  # WebNLG: each column for seen, unseen and all categories.
    max_references: int = 0  # 0 = all references of an input.


def _coco(hypotheses, references, names: tuple[str, ...]) -> Scores:
    if not table.java_available():
        return {name: None for name in names}
    return table.coco(hypotheses, references, names)


def _e2e(hypotheses, references) -> Scores:
    """The E2E challenge's five metrics, on its script's scales."""
    bleu = text.bleu(hypotheses, references, lowercase=True) / 100
    scores = {"bleu": bleu, "nist": table.nist(hypotheses, references)}
    return scores | _coco(hypotheses, references, table.COCO_METRICS)


def _bleu_meteor_ter(hypotheses, references) -> Scores:
    scores = {"bleu": text.bleu(hypotheses, references, lowercase=True), "ter": text.ter(hypotheses, references) / 100}
    return scores | _coco(hypotheses, references, ("meteor",))


LAYOUTS = {
    "e2e": Layout(
        (Column("BLEU", "bleu", 100), Column("NIST", "nist"), Column("MET", "meteor", 100), Column("R-L", "rouge_l", 100),
         Column("CIDEr", "cider")),
        _e2e,
    ),
    "webnlg": Layout(
        (Column("BLEU", "bleu"), Column("MET", "meteor"), Column("TER ↓", "ter")), _bleu_meteor_ter,
        by_seen=True, max_references=3,
    ),
    "dart": Layout((Column("BLEU", "bleu"), Column("MET", "meteor"), Column("TER ↓", "ter")), _bleu_meteor_ter),
    "xsum": Layout((Column("R-1", "rouge1", 100), Column("R-2", "rouge2", 100), Column("R-L", "rougeL", 100)), text.rouge),
    "other": Layout((Column("BLEU", "bleu"), Column("TER ↓", "ter"), Column("R-L", "rougeL", 100)), text.score),
}
_DATA_SETS = {"webnlg": "webnlg", "tfds:web_nlg": "webnlg", "e2e": "e2e", "tfds:e2e_cleaned": "e2e",
              "dart": "dart", "tfds:dart": "dart", "xsum": "xsum", "tfds:xsum": "xsum"}


def layout_name(data_name: str) -> str:
    """The layout of a `config.data.name` ("tfds:web_nlg" -> "webnlg"; copy, text -> "other")."""
    return _DATA_SETS.get(data_name, "other")


def _subsets(seen: Sequence[bool]) -> dict[str, list[int]]:
    subsets = {"seen": [i for i, s in enumerate(seen) if s], "unseen": [i for i, s in enumerate(seen) if not s]}
    return subsets | {"all": list(range(len(seen)))}


def evaluate(
    layout: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]], seen: Optional[Sequence[bool]] = None
) -> dict:
    """{"layout", "inputs", "scores" (per subset for WebNLG), "unavailable"} for one split.

    `seen[i]`: input i's category was seen in training (WebNLG; default all seen).
    An empty subset (WebNLG dev has no unseen categories) gets no scores.
    """
    spec = LAYOUTS[layout]
    text.check_pairs(hypotheses, references)
    if spec.max_references:
        references = [refs[: spec.max_references] for refs in references]
    if spec.by_seen:
        seen = [True] * len(hypotheses) if seen is None else list(seen)
        text.check_pairs(hypotheses, seen)
        by_rows = {}  # A subset equal to another (WebNLG dev: seen = all) is scored once; TER is slow.
        for rows in _subsets(seen).values():
            if rows and tuple(rows) not in by_rows:
                by_rows[tuple(rows)] = spec.compute([hypotheses[i] for i in rows], [references[i] for i in rows])
        scores = {subset: dict(by_rows[tuple(rows)]) if rows else None for subset, rows in _subsets(seen).items()}
        computed = [s for s in scores.values() if s]
    else:
        scores = spec.compute(hypotheses, references)
        computed = [scores]
    missing = sorted({key for s in computed for key, value in s.items() if value is None})
    unavailable = {key: "needs Java (`java` is not on PATH)" for key in missing if key in table.COCO_METRICS}
    return {"layout": layout, "inputs": len(hypotheses), "scores": scores, "unavailable": unavailable}


def _cell(scores: Optional[Scores], column: Column) -> str:
    value = None if scores is None else scores.get(column.key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * column.scale:.{column.digits}f}"


def markdown(result: dict, row: str) -> str:
    """A markdown table in the paper's column layout, with one row named `row`."""
    spec = LAYOUTS[result["layout"]]
    if spec.by_seen:
        subsets = (("S", "seen"), ("U", "unseen"), ("A", "all"))
        header = [f"{c.header} {s}" for c in spec.columns for s, _ in subsets]
        cells = [_cell(result["scores"][subset], c) for c in spec.columns for _, subset in subsets]
    else:
        header = [c.header for c in spec.columns]
        cells = [_cell(result["scores"], c) for c in spec.columns]
    lines = ["| | " + " | ".join(header) + " |", "|---|" + "---|" * len(header), f"| {row} | " + " | ".join(cells) + " |"]
    notes = [f"{key}: {reason}" for key, reason in result["unavailable"].items()]
    return "\n".join(lines) + "\n" + "".join(f"\n– {note}\n" for note in notes)
