"""Metric values against published or independently measured ones."""

import json
import os
import shutil

import pytest

from prefix_jax import metrics
from prefix_jax.metrics import text

# sacrebleu's README example (BLEU = 48.53), three inputs with two references each.
SYSTEM = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFERENCES = [
    ["The dog bit the man.", "The dog had bit the man."],
    ["It was not unexpected.", "No one was surprised."],
    ["The man bit him first.", "The man had bitten the dog."],
]
# DESIGN.md section 6, measured with the packages' own command-line conventions.
CAT = ["the cat sat on the mat"]
CAT_REFS = [["the cat is on the mat", "a cat sat on the mat"]]


def test_bleu_matches_sacrebleus_documented_example():
    assert metrics.bleu(SYSTEM, REFERENCES) == pytest.approx(48.53, abs=0.005)


def test_reference_values():
    assert metrics.bleu(CAT, CAT_REFS) == pytest.approx(84.09, abs=0.005)
    assert metrics.ter(CAT, CAT_REFS) == pytest.approx(16.67, abs=0.005)
    assert metrics.rouge(CAT, CAT_REFS) == pytest.approx({"rouge1": 0.8333, "rouge2": 0.8, "rougeL": 0.8333}, abs=5e-5)


def test_inputs_may_have_different_numbers_of_references():
    hypotheses = ["a b c d e", "x y z w v"]
    # The second input's single reference matches exactly; padding must not count against it.
    assert metrics.bleu(hypotheses, [["a b c d e", "q q q q q"], ["x y z w v"]]) == pytest.approx(100.0)
    scores = metrics.score(hypotheses, [["a b c d e"], ["x y z w v"]])
    assert scores == pytest.approx({"bleu": 100.0, "ter": 0.0, "rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})


def test_mismatched_inputs_fail_clearly():
    with pytest.raises(ValueError, match="2 hypotheses but 1 reference sets"):
        metrics.bleu(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="at least one reference"):
        metrics.ter(["a"], [[]])


# The E2E metrics script's own example (tests/data: its outputs and references for the first
# 10 dev inputs, 6 to 39 references each); the script prints these values for it.
E2E_EXAMPLE = json.load(open(os.path.join(os.path.dirname(__file__), "data", "e2e_metrics_example.json")))
E2E_SCRIPT = {"bleu": 0.7203, "nist": 7.8212, "meteor": 0.4801, "rouge_l": 0.7910, "cider": 2.3039}


def test_bleu_and_nist_match_the_e2e_script():
    hypotheses, references = E2E_EXAMPLE["hypotheses"], E2E_EXAMPLE["references"]
    assert metrics.bleu(hypotheses, references, lowercase=True) / 100 == pytest.approx(E2E_SCRIPT["bleu"], abs=5e-5)
    assert metrics.nist(hypotheses, references) == pytest.approx(E2E_SCRIPT["nist"], abs=5e-5)
    # DESIGN.md section 6: the E2E scripts' NIST for the cat example (nltk's corpus_nist: 2.6573).
    assert metrics.nist(CAT, CAT_REFS) == pytest.approx(3.1906, abs=5e-5)


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokeniser and METEOR need Java")


@needs_java
def test_e2e_layout_matches_the_e2e_script():
    # One call (each starts JVMs, ~10-50 s on a loaded 2-core machine).
    result = metrics.evaluate("e2e", E2E_EXAMPLE["hypotheses"], E2E_EXAMPLE["references"])
    assert result["scores"] == pytest.approx(E2E_SCRIPT, abs=5e-5) and result["unavailable"] == {}
    # The paper's Table 1 scales: BLEU, METEOR and ROUGE-L x100.
    assert metrics.markdown(result, row="script example").splitlines() == [
        "| | BLEU | NIST | MET | R-L | CIDEr |",
        "|---|---|---|---|---|---|",
        "| script example | 72.03 | 7.82 | 48.01 | 79.10 | 2.30 |",
    ]


def test_coco_metrics_without_java_say_so(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="install a Java runtime"):
        metrics.coco(CAT, CAT_REFS)
    with pytest.raises(ValueError, match="Unknown metrics"):
        metrics.coco(CAT, CAT_REFS, ("bleu",))


# Four WebNLG-style inputs, two from unseen categories; the second has four references.
WEBNLG_HYPS = SYSTEM + CAT
WEBNLG_REFS = [REFERENCES[0], REFERENCES[1] + ["No surprise.", "It wasn't surprising."], REFERENCES[2], CAT_REFS[0]]
WEBNLG_SEEN = [True, False, True, False]


def test_webnlg_layout_scores_seen_unseen_and_all_against_three_references(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)  # METEOR: checked separately below.
    result = metrics.evaluate("webnlg", WEBNLG_HYPS, WEBNLG_REFS, WEBNLG_SEEN)
    three = [refs[:3] for refs in WEBNLG_REFS]  # The fourth reference would make input 1 exact.
    for subset, rows in (("seen", [0, 2]), ("unseen", [1, 3]), ("all", [0, 1, 2, 3])):
        hyps, refs = [WEBNLG_HYPS[i] for i in rows], [three[i] for i in rows]
        expected = {"bleu": metrics.bleu(hyps, refs, lowercase=True), "ter": metrics.ter(hyps, refs) / 100}
        assert result["scores"][subset] == pytest.approx(expected | {"meteor": None})
    assert result["scores"]["all"]["bleu"] != pytest.approx(metrics.bleu(WEBNLG_HYPS, WEBNLG_REFS, lowercase=True))
    assert result["unavailable"] == {"meteor": "needs Java (`java` is not on PATH)"}
    table = metrics.markdown(result, row="x").splitlines()
    assert table[0] == "| | BLEU S | BLEU U | BLEU A | MET S | MET U | MET A | TER ↓ S | TER ↓ U | TER ↓ A |"
    scores = result["scores"]
    assert table[2] == "| x | " + " | ".join(
        [f"{scores[s]['bleu']:.2f}" for s in ("seen", "unseen", "all")] + ["–"] * 3
        + [f"{scores[s]['ter']:.2f}" for s in ("seen", "unseen", "all")]
    ) + " |"
    assert "meteor: needs Java" in metrics.markdown(result, row="x")


def test_a_subset_without_inputs_has_no_scores(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    ter_calls = []
    monkeypatch.setattr(text, "ter", lambda *args: ter_calls.append(args) or 50.0)
    result = metrics.evaluate("webnlg", CAT, CAT_REFS, [True])  # WebNLG dev: every category seen.
    assert result["scores"]["unseen"] is None and result["scores"]["seen"] == result["scores"]["all"]
    assert len(ter_calls) == 1  # seen = all: scored once (TER takes a minute on WebNLG dev).
    assert metrics.markdown(result, row="dev").splitlines()[2].split(" | ")[2] == "–"
    with pytest.raises(ValueError, match="1 hypotheses but 2"):
        metrics.evaluate("webnlg", CAT, CAT_REFS, [True, False])


@needs_java
def test_meteor_in_the_webnlg_layout_is_pycocoevalcaps():
    result = metrics.evaluate("dart", SYSTEM, REFERENCES)
    assert result["scores"]["meteor"] == pytest.approx(metrics.coco(SYSTEM, REFERENCES, ("meteor",))["meteor"])
    assert 0 < result["scores"]["meteor"] < 1


def test_summarisation_layout_and_data_set_names():
    result = metrics.evaluate("xsum", CAT, CAT_REFS)
    assert result["scores"] == pytest.approx({"rouge1": 0.8333, "rouge2": 0.8, "rougeL": 0.8333}, abs=5e-5)
    assert metrics.markdown(result, row="x").splitlines()[::2] == ["| | R-1 | R-2 | R-L |", "| x | 83.33 | 80.00 | 83.33 |"]
    names = ["webnlg", "tfds:web_nlg", "e2e", "tfds:e2e_cleaned", "dart", "tfds:dart", "tfds:xsum", "copy", "text"]
    assert [metrics.layout_name(n) for n in names] == ["webnlg"] * 2 + ["e2e"] * 2 + ["dart"] * 2 + ["xsum", "other", "other"]
