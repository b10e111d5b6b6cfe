"""Metric values against published or independently measured ones."""

import json
import os
import shutil

import pytest

from prefix_jax import metrics

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


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokeniser and METEOR need Java")
def test_coco_metrics_match_the_e2e_script():
    # One call (each starts JVMs, ~10-50 s on a loaded 2-core machine).
    scores = metrics.e2e(E2E_EXAMPLE["hypotheses"], E2E_EXAMPLE["references"])
    assert scores == pytest.approx(E2E_SCRIPT, abs=5e-5)


def test_coco_metrics_without_java_say_so(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="install a Java runtime"):
        metrics.coco(CAT, CAT_REFS)
