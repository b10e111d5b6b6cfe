"""Hugging Face base weights in experiments, and the export/import commands.

The command-line test trains on a tiny Hugging Face GPT-2, exports the best prefix, loads it
in PEFT (same logits), imports it back into a new workdir (same dev loss). Needs the
[parity] extra; skipped without it.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import hf_tiny  # noqa: E402
from experiments import tiny, webnlg_gpt2_medium  # noqa: E402
from prefix_jax import convert, interop, peft_adapter, train  # noqa: E402
from prefix_jax import prefix as prefix_lib  # noqa: E402
from prefix_jax.models import gpt2  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_HF = dict(vocab_size=257, num_layers=2, num_heads=4, d_model=32, d_ff=128, max_len=128)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    hf_tiny.gpt2(vocab_size=257, n_positions=128).save_pretrained(path)
    return str(path)


def test_create_reads_a_hugging_face_directory_from_base_weights(hf_dir):
    config = tiny.get_config()
    config.model.update(TINY_HF)
    config.base_weights = hf_dir
    _, state = train.create(config)
    _, expected = convert.load(hf_dir)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params["base"]), expected)
    config.model.num_layers = 3
    with pytest.raises(convert.CheckpointFormatError, match="num_layers: checkpoint 2, config 3"):
        train.create(config)


def _main(*args):
    result = subprocess.run(
        [sys.executable, "-m", "prefix_jax.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_train_export_to_peft_import_back(hf_dir, tmp_path):
    flags = [
        f"--config=experiments/webnlg_gpt2_medium.py:{hf_dir}",
        *(f"--config.model.{k}={v}" for k, v in TINY_HF.items()),
        "--config.prefix.reparam_dim=16", "--config.data.name=copy", "--config.data.tokenizer=byte",
        "--config.data.num_train=16", "--config.data.num_dev=4", "--config.train.batch_size=4",
        "--config.train.lr=1e-2", "--config.train.num_steps=2", "--config.train.eval_every=2",
        "--config.checkpoint.every=2",
    ]
    trained, adapter = tmp_path / "trained", tmp_path / "adapter"
    _main(*flags, f"--workdir={trained}")
    exported = _main("export", *flags, f"--workdir={trained}", f"--out={adapter}")
    assert exported["num_virtual_tokens"] == 5

    # PEFT gives the logits of the converted model with the exported (folded) prefix.
    peft_model = peft.PeftModel.from_pretrained(
        transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval(), str(adapter)
    ).eval()
    config, base = convert.load(hf_dir)
    spec, kv = peft_adapter.load(str(adapter), config)
    tokens, mask = hf_tiny.batch(vocab=257)
    ours = gpt2.GPT2(config).apply(
        {"params": base}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask),
        positions=peft_adapter.positions(5, *tokens.shape), **prefix_lib.model_inputs(spec, kv, config.prefix_geometry),
    )
    assert hf_tiny.max_diff(ours, hf_tiny.logits(peft_model, tokens, mask), mask) < 1e-4

    # Imported into a kv-prefix workdir, the adapter scores on dev as `eval` then reports.
    kv_flags = [*flags, "--config.prefix.reparam_dim=0"]
    imported = _main("import", *kv_flags, f"--workdir={tmp_path / 'imported'}", f"--adapter={adapter}")
    evaluated = _main("eval", *kv_flags, f"--workdir={tmp_path / 'imported'}")
    assert evaluated["dev_loss"] == pytest.approx(imported["dev_loss"], rel=1e-6)
    assert evaluated["step"] == 0


def _tiny_run_config(hf_dir, **prefix):
    config = webnlg_gpt2_medium.get_config(hf_dir)
    config.model.update(TINY_HF)
    config.prefix.update(prefix)
    config.data.update(name="copy", tokenizer="byte", num_train=8, num_dev=4)
    config.train.batch_size = 4
    return config


def test_import_refuses_a_mismatched_prefix_or_used_workdir(hf_dir, tmp_path):
    model_config, _ = convert.load(hf_dir)
    spec = prefix_lib.PrefixSpec(kind="kv", length=5)
    peft_adapter.save(str(tmp_path / "adapter"), spec, prefix_lib.init_random(spec, model_config.prefix_geometry, jax.random.key(0)),
                      gpt2.GPT2(model_config))
    with pytest.raises(ValueError, match="--config.prefix.reparam_dim=0"):
        interop.import_adapter(_tiny_run_config(hf_dir, reparam_dim=16), str(tmp_path / "a"), str(tmp_path / "adapter"))
    config = _tiny_run_config(hf_dir, reparam_dim=0)
    interop.import_adapter(config, str(tmp_path / "b"), str(tmp_path / "adapter"))
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        interop.import_adapter(config, str(tmp_path / "b"), str(tmp_path / "adapter"))


def test_export_and_import_need_their_directory_flag(tmp_path):
    for command, flag in (("export", "--out"), ("import", "--adapter")):
        result = subprocess.run(
            [sys.executable, "-m", "prefix_jax.main", command, "--config=experiments/tiny.py", f"--workdir={tmp_path}"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode != 0 and f"This command needs {flag}" in result.stderr
