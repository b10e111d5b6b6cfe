"""The report collects fabricated run directories into tables and plots."""

import json
import os

import pytest

from experiments import webnlg_small_row
from prefix_jax import report


def _run(root, name, arg, *, summary=None, scores=None, layout="webnlg", curve=(), data_name=None):
    directory = os.path.join(root, name)
    os.makedirs(os.path.join(directory, "generations"))
    config = webnlg_small_row.get_config(arg)
    if data_name:
        config.data.name = data_name
    with open(os.path.join(directory, "config.json"), "w") as f:
        f.write(config.to_json())
    if summary:
        with open(os.path.join(directory, "summary.json"), "w") as f:
            json.dump(summary, f)
    if scores:
        with open(os.path.join(directory, "generations", "dev_metrics.json"), "w") as f:
            json.dump({"layout": layout, "inputs": 3, "scores": scores, "unavailable": {}}, f)
    with open(os.path.join(directory, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(record) + "\n" for record in curve)


def _webnlg(bleu, ter, meteor=None):
    seen = {"bleu": bleu, "ter": ter, "meteor": meteor}
    return {"seen": seen, "unseen": None, "all": seen}


def _summary(trainable, loss):
    return {"trainable_params": trainable, "base_params": 4000, "best_dev_loss": loss, "train_seconds": 90.0}


def test_report_tables_and_plots(tmp_path):
    runs = str(tmp_path / "runs")
    curve = [{"step": 0, "dev/loss": 5.0}, {"step": 50, "train/loss": 4.0}, {"step": 100, "dev/loss": 3.0}]
    _run(runs, "ft", "ft", summary=_summary(4000, 1.0), scores=_webnlg(40.0, 0.5, 0.3), curve=curve)
    _run(runs, "prefix-kv", "prefix-kv", summary=_summary(40, 2.0), scores=_webnlg(10.0, 0.9), curve=curve)
    _run(runs, "prefix-kv_seed1", "prefix-kv,seed=1", summary=_summary(40, 3.0), scores=_webnlg(20.0, 0.7))
    _run(runs, "prefix-kv_length5", "prefix-kv,length=5", summary=_summary(20, 2.5), scores=_webnlg(12.0, 0.8))
    infix_summary = {**_summary(1000, 2.2), "prefix_params": {"served_share_of_base": 0.02}}  # MLP trained, K/V served.
    _run(runs, "infix", "infix", summary=infix_summary)  # Not decoded: dev loss only.
    _run(runs, "adapter-3", "adapter-3")  # Not finished: config only.
    for seed, bleu in ((0, 5.0), (1, 7.0)):
        _run(runs, f"prefix-kv_size50_seed{seed}", f"prefix-kv,size=50,seed={seed}", scores=_webnlg(bleu, 0.9))
    _run(runs, "ft_size50_seed0", "ft,size=50,seed=0", scores=_webnlg(3.0, 1.0))
    _run(runs, "e2e/prefix-kv", "prefix-kv", data_name="e2e", layout="e2e",
         scores={"bleu": 0.7, "nist": 8.5, "meteor": 0.46, "rouge_l": 0.71, "cider": None})

    path = report.write(runs, str(tmp_path / "out"))
    text = open(path).read()
    lines = text.splitlines()
    # WebNLG: BLEU S U A, MET S U A, TER S U A; rows in the paper's order, seeds averaged.
    assert "| Method | runs | % params | train min | dev loss | BLEU S | BLEU U | BLEU A | MET S | MET U | MET A | TER ↓ S | TER ↓ U | TER ↓ A |" in lines
    assert "| FT | 1 | 100.00 | 1.5 | 1.000 | 40.00 | – | 40.00 | 0.30 | – | 0.30 | 0.50 | – | 0.50 |" in lines
    assert "| Adapter (r=32) | 1 | – | – | – | – | – | – | – | – | – | – | – | – |" in lines
    assert "| Prefix-5 (kv) | 1 | 0.50 | 1.5 | 2.500 | 12.00 | – | 12.00 | – | – | – | 0.80 | – | 0.80 |" in lines
    assert "| Prefix-10 (kv) | 2 | 1.00 | 1.5 | 2.500 | 15.00 | – | 15.00 | – | – | – | 0.80 | – | 0.80 |" in lines
    assert "| Infix-10 | 1 | 2.00 | 1.5 | 2.200 | – | – | – | – | – | – | – | – | – |" in lines
    webnlg = text.split("## webnlg")[1].split("### 50 training inputs")[0].splitlines()
    rows = [line.split(" | ")[0] for line in webnlg if line.startswith("| ") and "Method" not in line]
    assert rows == ["| FT", "| Adapter (r=32)", "| Prefix-5 (kv)", "| Prefix-10 (kv)", "| Infix-10"]
    # E2E on its own scales: BLEU, MET and R-L x100; CIDEr absent.
    assert "| Prefix-10 (kv) | 1 | – | – | – | 70.00 | 8.50 | 46.00 | 71.00 | – |" in lines
    assert "### 50 training inputs" in text
    assert "| Prefix-10 (kv) | 2 | – | – | – | 6.00 | – | 6.00 | – | – | – | 0.90 | – | 0.90 |" in lines
    assert "e2e_training_curves.png" not in text  # The E2E run has no curve.
    for png in ("webnlg_prefix_length.png", "webnlg_training_size.png", "webnlg_training_curves.png"):
        assert f"]({png})" in text
        with open(tmp_path / "out" / png, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_the_runs_column_counts_diverged_runs(tmp_path):
    """A seed whose dev loss rose in training stays in the mean, and the row says so."""
    for seed, (before, after, bleu) in enumerate(((4.0, 1.8, 16.0), (4.0, 7.4, 0.0))):
        summary = {**_summary(40, after), "dev_loss_before": before, "dev_loss_after": after}
        _run(tmp_path, f"seed{seed}", f"prefix-kv,size=500,seed={seed}", summary=summary, scores=_webnlg(bleu, 0.9))
    _run(tmp_path, "ft", "ft,size=500,seed=0", scores=_webnlg(15.0, 0.7),
         summary={**_summary(4000, 1.7), "dev_loss_before": 3.4, "dev_loss_after": 1.7})
    lines = report.table(report.load_runs(str(tmp_path)), "webnlg").splitlines()
    assert "| Prefix-10 (kv) | 2 (1 diverged) | 1.00 | 1.5 | 4.600 | 8.00 | – | 8.00 | – | – | – | 0.90 | – | 0.90 |" in lines
    assert lines[2].startswith("| FT | 1 | 100.00 |")


def test_report_lines_follow_the_dev_metric(tmp_path):
    runs = str(tmp_path)
    _run(runs, "a", "prefix-kv,size=50,seed=0", scores=_webnlg(5.0, 0.9))
    _run(runs, "b", "prefix-kv,size=50,seed=1", scores=_webnlg(7.0, 0.9))
    _run(runs, "c", "prefix-kv,size=100,seed=0", scores=_webnlg(9.0, 0.9))
    _run(runs, "d", "ft,size=50,seed=0", summary=_summary(4000, 1.5))  # No BLEU: left out.
    loaded = report.load_runs(runs)
    bleu, loss = report.dev_metrics(loaded)
    label, lines = report._lines(loaded, lambda r: r.size, bleu)
    assert label == "dev BLEU"
    assert lines == {"Prefix (kv)": ([50, 100], [6.0, 9.0], [1.0, 0.0])}
    label, lines = report._lines(loaded, lambda r: r.size, loss)
    assert label == "best dev loss" and lines["FT"] == ([50], [1.5], [0.0])  # Every run has a loss.


def test_a_prefix_initialised_from_words_is_its_own_row():
    config = json.loads(webnlg_small_row.get_config("prefix-kv,length=6").to_json())
    assert report.method(config) == "Prefix-6 (kv)"
    config["prefix"]["init"] = "words"
    assert (report.family(config), report.method(config)) == ("Prefix (kv, words)", "Prefix-6 (kv, words)")
    config["prefix"]["kind"] = "prompt"
    assert report.method(config) == "EMB-6 (words)"


def test_report_needs_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no directory there holds a config.json"):
        report.write(str(tmp_path), str(tmp_path / "out"))


def test_sample_generations_side_by_side_on_unseen_inputs(tmp_path):
    runs = str(tmp_path / "runs")
    records = lambda text: [
        {"source": f" | S{i}", "references": [f"ref {i}"], "generation": f"{text} {i}", "category": c, "seen": c == "City"}
        for i, c in enumerate(["City", "Monument", "City", "Astronaut", "Monument"])]
    for name, text in (("prefix-kv", "p"), ("ft", "f")):
        _run(runs, name, name, scores=_webnlg(1.0, 0.5))
        with open(os.path.join(runs, name, "generations", "dev.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records(text)[: 4 if name == "ft" else 5])
    text = open(report.write(runs, str(tmp_path / "out"), sample_runs=("prefix-kv", "ft", "absent"))).read()
    block = text.split("### Sample generations\n\n")[1].splitlines()
    # Unseen inputs both runs decoded (S4 only prefix-kv has), each run's output under its reference.
    assert block[:8] == ["* **Monument**: `| S1`", "  * reference: ref 1", "  * prefix-kv: p 1", "  * ft: f 1",
                         "* **Astronaut**: `| S3`", "  * reference: ref 3", "  * prefix-kv: p 3", "  * ft: f 3"]
    assert "Sample generations" not in open(report.write(runs, str(tmp_path / "out2"))).read()
