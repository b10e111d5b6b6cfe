"""NIST, METEOR, ROUGE-L and CIDEr as the E2E NLG challenge's official script computes them.

That script (measure_scores.py of the e2e-metrics repository) takes BLEU and NIST from
mteval-v13a (Perl) and METEOR, ROUGE-L and CIDEr from the MS-COCO caption evaluation
code after PTB tokenisation. Here:

  * BLEU: sacrebleu with 13a tokenisation and lowercasing, which is mteval-v13a's
    BLEU (`text.bleu(..., lowercase=True)`; 72.03 on the script's example, as it prints).
  * NIST: mteval-v13a's formula, written out below because no maintained package has
    it (nltk's `corpus_nist` uses another length penalty and information weights).
    As the script feeds mteval, inputs with fewer references are padded with empty
    ones, which lowers the average reference length in the length penalty.
  * METEOR 1.5, ROUGE-L, CIDEr: pycocoevalcap, after its PTB tokeniser. Its tokeniser
    and METEOR run Java (the jars ship in the wheel); without `java` on PATH these
    raise an error saying so. CIDEr's IDF comes from the corpus: score a whole set.

`paper.evaluate("e2e", ...)` puts the five together on the script's scales.
"""

import collections
import math
import re
import shutil
from typing import Sequence

from prefix_jax.metrics import text

_MAX_NGRAM = 5
_BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval: penalty 0.5 at 2/3 of the reference length.


def _mteval_tokens(sentence: str) -> list[str]:
    """mteval-v13a's default (non-international) tokenisation, lowercased."""
    s = sentence.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    s = s.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    s = f" {s} "
    s = re.sub(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])", r" \1 ", s)  # Punctuation.
    s = re.sub(r"([^0-9])([\.,])", r"\1 \2 ", s)  # Period and comma unless after a digit,
    s = re.sub(r"([\.,])([^0-9])", r" \1 \2", s)  # or before one.
    s = re.sub(r"([0-9])(-)", r"\1 \2 ", s)  # Dash after a digit.
    return s.lower().split()


def _ngrams(tokens: list, n: int) -> collections.Counter:
    return collections.Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def nist(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus NIST (n <= 5) as mteval-v13a computes it for the E2E script."""
    text.check_pairs(hypotheses, references)
    hyps = [_mteval_tokens(h) for h in hypotheses]
    refs = [[_mteval_tokens(r) for r in rs] for rs in references]
    depth = max(len(rs) for rs in refs)
    ref_counts = [collections.Counter() for _ in range(_MAX_NGRAM + 1)]  # [n][ngram]; n = 0 counts words.
    for rs in refs:
        for r in rs:
            ref_counts[0][()] += len(r)
            for n in range(1, _MAX_NGRAM + 1):
                ref_counts[n].update(_ngrams(r, n))

    def info(ngram):  # log2(count(w1..w_{n-1}) / count(w1..wn)) over all references.
        return math.log2(ref_counts[len(ngram) - 1][ngram[:-1]] / ref_counts[len(ngram)][ngram])

    total = 0.0
    for n in range(1, _MAX_NGRAM + 1):
        gained, produced = 0.0, 0
        for h, rs in zip(hyps, refs):
            hyp_ngrams = _ngrams(h, n)
            best = collections.Counter()
            for r in rs:
                best |= _ngrams(r, n)  # Clip by the most any one reference has.
            gained += sum(info(g) * min(c, best[g]) for g, c in hyp_ngrams.items() if best[g])
            produced += max(len(h) - n + 1, 0)
        total += gained / produced if produced else 0.0
    hyp_len = sum(len(h) for h in hyps)
    mean_ref_len = ref_counts[0][()] / depth  # Sum over inputs of (total ref length / depth).
    ratio = hyp_len / mean_ref_len
    penalty = 1.0 if ratio >= 1 else 0.0 if ratio <= 0 else math.exp(-_BETA * math.log(ratio) ** 2)
    return total * penalty


def java_available() -> bool:
    return shutil.which("java") is not None


def _require_java() -> None:
    if not java_available():
        raise RuntimeError(
            "METEOR, ROUGE-L and CIDEr as the E2E script computes them run pycocoevalcap's "
            "Java tokeniser (and METEOR 1.5 runs on Java): install a Java runtime (e.g. "
            "apt-get install default-jre-headless) so that `java` is on PATH."
        )


COCO_METRICS = ("meteor", "rouge_l", "cider")


def coco(hypotheses: Sequence[str], references: Sequence[Sequence[str]], names: Sequence[str] = COCO_METRICS) -> dict:
    """`names` out of METEOR, ROUGE-L and CIDEr, from pycocoevalcap after its PTB tokeniser (needs Java)."""
    text.check_pairs(hypotheses, references)
    if any(len(refs) == 0 for refs in references):
        raise ValueError("Every input needs at least one reference.")
    if unknown := set(names) - set(COCO_METRICS):
        raise ValueError(f"Unknown metrics {sorted(unknown)}; expected some of {COCO_METRICS}.")
    _require_java()
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = tokenizer.tokenize({i: [{"caption": h}] for i, h in enumerate(hypotheses)})
    scorers = {"meteor": Meteor, "rouge_l": Rouge, "cider": Cider}
    return {name: float(scorers[name]().compute_score(gts, res)[0]) for name in names}
