"""The command line as a user runs it, and the benchmark at toy size."""

import json
import os
import subprocess
import sys

import pytest


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, check=True):
    return subprocess.run(
        [sys.executable, "-m", "prefix_jax.main", "--config=experiments/tiny.py", *args],
        cwd=ROOT, capture_output=True, text=True, check=check, timeout=600,
    )


def test_main_trains_on_webnlg_then_evaluates(tmp_path):
    small = [
        f"--workdir={tmp_path}", "--config.data.num_train=200", "--config.data.num_dev=20",
        "--config.train.batch_size=4", "--config.data.bucket_size=256",
    ]
    _main(*small, "--config.train.num_steps=30", "--config.train.eval_every=15", "--config.prefix.kind=kv")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dev_loss_after"] < summary["dev_loss_before"]
    assert summary["steps"] == 30
    evaluated = _main("eval", *small, "--config.prefix.kind=kv")
    assert json.loads(evaluated.stdout)["dev_loss"] == pytest.approx(summary["best_dev_loss"], rel=1e-6)
    assert summary["prefix_params"]["served"] == 2 * 2 * 10 * 64  # 2 * L * n * d
    assert summary["trainable_params"] == summary["prefix_params"]["trained"]


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.train.lrr=1", 'Did you mean "lr"'),
        ("--config.prefix.kind=deep", "Unknown prefix kind 'deep'"),
    ],
)
def test_main_rejects_bad_config_fields(tmp_path, flag, message):
    result = _main(flag, f"--workdir={tmp_path}", check=False)
    assert result.returncode == 1
    assert message in result.stderr.splitlines()[-1] and "Traceback" not in result.stderr


def test_readme_python_example_runs():
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (16, 64, 257)
    assert float(namespace["metrics"]["loss"]) > 0


def test_decode_writes_one_generation_per_input_and_the_metric_table(tmp_path):
    copy = [
        f"--workdir={tmp_path}", "--config.data.name=copy", "--config.data.num_train=64",
        "--config.data.num_dev=5", "--config.model.max_len=128", "--config.train.batch_size=4",
        "--config.decode.batch_size=4", "--config.decode.max_new_tokens=8",
    ]
    _main(*copy, "--config.train.num_steps=4", "--config.train.eval_every=2")
    result = json.loads(_main("decode", *copy, "--config.decode.split=test", "--config.data.num_test=3").stdout)
    assert result["inputs"] == 3 and result["split"] == "test"
    out = tmp_path / "generations"
    records = [json.loads(line) for line in (out / "test.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["references"] == [r["source"]] for r in records)
    assert len((out / "test.txt").read_text().splitlines()) == 3
    scores = json.loads((out / "test_metrics.json").read_text())
    assert scores["layout"] == "other" and scores["scores"] == result["metrics"]
    assert set(scores["scores"]) == {"bleu", "ter", "rouge1", "rouge2", "rougeL"}
    table = (out / "test_metrics.md").read_text().splitlines()
    assert table[0] == "| | BLEU | TER ↓ | R-L |" and table[2].startswith(f"| {tmp_path.name} (step 4) | ")
