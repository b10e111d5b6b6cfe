"""BLEU and TER (sacrebleu) and ROUGE-1/2/L (rouge-score), for any number of references.

`references[i]` holds every reference of input i; inputs may have different
numbers of references (sacrebleu's reference streams are padded with None,
which it skips). BLEU and TER use sacrebleu's defaults (13a tokenisation, case
kept); ROUGE uses Porter stemming and takes the best reference per input, as
summarisation papers do. NIST, METEOR, ROUGE-L and CIDEr as the E2E script computes
them are in `table.py`.
"""

from typing import Sequence

import sacrebleu


def _streams(references: Sequence[Sequence[str]]) -> list[list]:
    """[input][reference] -> sacrebleu's [reference][input], None where an input has fewer."""
    if any(len(refs) == 0 for refs in references):
        raise ValueError("Every input needs at least one reference.")
    depth = max(len(refs) for refs in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(depth)]


def check_pairs(hypotheses, references) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets; they must pair up.")


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], lowercase: bool = False) -> float:
    check_pairs(hypotheses, references)
    return sacrebleu.corpus_bleu(list(hypotheses), _streams(references), lowercase=lowercase).score


def ter(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    check_pairs(hypotheses, references)
    return sacrebleu.corpus_ter(list(hypotheses), _streams(references)).score


def rouge(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Mean over inputs of the best-reference ROUGE-1/2/L F-measure."""
    from rouge_score import rouge_scorer  # Here: it imports NLTK (a second a process), for ROUGE only.

    check_pairs(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hypothesis, refs in zip(hypotheses, references):
        scores = scorer.score_multi(list(refs), hypothesis)
        for name in totals:
            totals[name] += scores[name].fmeasure
    return {name: total / max(len(hypotheses), 1) for name, total in totals.items()}


def score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """Every metric above, in one dict."""
    return {"bleu": bleu(hypotheses, references), "ter": ter(hypotheses, references), **rouge(hypotheses, references)}
