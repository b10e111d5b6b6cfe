"""The shipped base model (data/base_lm): intact, still as good as recorded, and the default run uses it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import pretrain_base_lm
from prefix_jax import loop, pretrain
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.models import weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "data", "base_lm")


@pytest.fixture(scope="module")
def card():
    with open(os.path.join(BASE, weights.CONFIG)) as f:
        return json.load(f)


def test_shipped_weights_match_their_digest_and_architecture(card):
    params = weights.load(BASE, card["model"])  # Raises on any digest mismatch.
    m = card["model"]
    per_layer = 4 * m["d_model"] ** 2 + 2 * m["d_model"] * m["d_ff"] + 9 * m["d_model"] + m["d_ff"]
    expected = m["num_layers"] * per_layer + (m["vocab_size"] + m["max_len"] + 2) * m["d_model"]
    assert prefix_lib.num_params(params) == expected
    assert card == {**card, "dtype": "float16", "model": weights.architecture(pretrain_base_lm.get_config().model.to_dict())}


def test_heldout_perplexity_is_as_recorded(card, tmp_path):
    config = pretrain_base_lm.get_config()
    config.base_weights, config.data.tokenizer = BASE, os.path.join(BASE, "tokenizer.json")
    run = loop.setup(config, str(tmp_path), train_data=False, dev_data=False)
    perplexity = pretrain.perplexity(run, run.state.params, os.path.join(BASE, "heldout.txt"))
    assert perplexity == pytest.approx(card["heldout_perplexity"], rel=1e-4)
    assert perplexity < card["model"]["vocab_size"] / 20  # Far from a uniform guess over the vocabulary.


def test_tokenizer_round_trips_and_fits_the_model(card):
    tokenizer = tokenizer_lib.load(os.path.join(BASE, "tokenizer.json"))
    assert tokenizer.get_vocab_size() == card["model"]["vocab_size"]
    for text in ["Aarhus Airport | runwayLength | 2702.0", "Zürich – café “quoted” 1,250 m²", "  two  spaces\n"]:
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False).ids) == text


def test_weights_directories_refuse_another_model_and_corruption(tmp_path):
    model = dict(vocab_size=8, num_layers=1, num_heads=2, d_model=8, d_ff=8, max_len=4)
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    weights.save(str(tmp_path), model, params)
    np.testing.assert_array_equal(weights.load(str(tmp_path), model)["w"], params["w"])
    with pytest.raises(weights.WeightsError, match="d_model"):
        weights.load(str(tmp_path), dict(model, d_model=16))
    path = tmp_path / weights.WEIGHTS
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x40  # One bit of the last weight.
    path.write_bytes(bytes(data))
    with pytest.raises(weights.WeightsError, match="SHA-256"):
        weights.load(str(tmp_path), model)
    config = tmp_path / weights.CONFIG
    config.write_text(config.read_text()[:20])
    with pytest.raises(weights.WeightsError, match=r"base_model\.json:\d+: malformed JSON .*; copy the directory"):
        weights.load(str(tmp_path), model)
    path.unlink()
    with pytest.raises(weights.WeightsError, match="not found"):
        weights.load(str(tmp_path), model)


def test_default_run_prefix_tunes_the_base_model(tmp_path):
    """README's main command, cut to a few steps and a slice of WebNLG."""
    subprocess.run(
        [sys.executable, "-m", "prefix_jax.main", "--config=experiments/webnlg_small.py", f"--workdir={tmp_path}",
         "--config.data.num_train=64", "--config.data.num_dev=16", "--config.train.num_steps=12",
         "--config.train.warmup_steps=2", "--config.train.eval_every=12", "--config.decode.batch_size=8",
         "--config.decode.max_new_tokens=8"],
        cwd=ROOT, check=True, capture_output=True, text=True, timeout=600,
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dev_loss_after"] < summary["dev_loss_before"]
    assert summary["trainable_params"] == summary["prefix_params"]["trained"]
    assert summary["decode"]["inputs"] == len((tmp_path / "generations" / "dev.txt").read_text().splitlines())
    scores = summary["decode"]["metrics"]  # WebNLG dev has seen categories only.
    assert scores["unseen"] is None and scores["seen"] == scores["all"] and 0 <= scores["all"]["ter"]
    assert (tmp_path / "generations" / "dev_metrics.md").read_text().startswith("| | BLEU S | BLEU U | BLEU A |")


def test_pretraining_recipe_exports_a_base_model_that_prefix_runs_load(tmp_path):
    """Pre-train (full mode, text blocks) a few steps, export, and prefix-tune on top of the export."""
    for split, count in (("train", 40), ("dev", 8)):
        documents = [f"Document {i} of the {split} split: the quick brown fox." for i in range(count)]
        (tmp_path / f"{split}.txt").write_text(f"\n{tokenizer_lib.EOS}\n".join(documents))
    common = [
        "--config=experiments/tiny.py", f"--config.data.train_path={tmp_path}/train.txt",
        f"--config.data.dev_path={tmp_path}/dev.txt", "--config.data.name=text", "--config.data.block_len=64",
        "--config.train.batch_size=4", "--config.train.mode=full", "--config.prefix.kind=none",
    ]
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "prefix_jax.main", *common, *args], cwd=ROOT, check=True, capture_output=True, text=True,
        timeout=600,
    )
    run(f"--workdir={tmp_path}/pretrain", "--config.train.num_steps=4",
        "--config.train.eval_every=4", "--config.checkpoint.every=4")
    run("export_base", f"--workdir={tmp_path}/pretrain", f"--out={tmp_path}/base")
    with open(tmp_path / "base" / weights.CONFIG) as f:
        exported = json.load(f)
    assert exported["step"] == 4 and exported["tokens_seen"] == 4 * 4 * 64
    assert exported["heldout_perplexity"] < 257  # Four steps already beat a uniform byte guess.
    heldout = (tmp_path / "base" / "heldout.txt").read_text().split(f"\n{tokenizer_lib.EOS}\n")
    assert heldout == [f"Document {i} of the dev split: the quick brown fox." for i in range(8)]
    # A prefix run on top of the export loads it (and refuses it for another architecture).
    tune = ["--config.train.mode=prefix", "--config.prefix.kind=hidden", f"--config.base_weights={tmp_path}/base",
            "--config.train.num_steps=2", "--config.train.eval_every=2"]
    run(f"--workdir={tmp_path}/tune", *tune)
    with pytest.raises(subprocess.CalledProcessError) as error:
        run(f"--workdir={tmp_path}/wrong", *tune, "--config.model.d_ff=128")
    assert "trained for another model" in error.value.stderr and "d_ff" in error.value.stderr
