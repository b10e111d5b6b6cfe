"""config.base_weights: one field for both formats, told apart by the files (convert.load_base)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from experiments import webnlg_small
from prefix_jax import convert, train
from prefix_jax.checkpoint import weights_digest
from prefix_jax.models import bart, families, gpt2, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = os.path.join(ROOT, "data", "base_lm")
TINY = gpt2.GPT2Config(vocab_size=11, num_layers=1, num_heads=2, d_model=8, d_ff=16, max_len=8)


@pytest.fixture
def project_dir(tmp_path):
    """A directory as export_base writes one, for TINY (the model section of a config)."""
    params = families.init_params(gpt2.GPT2(TINY), jax.random.key(0))
    model = dict(family="gpt2", vocab_size=11, num_layers=1, num_heads=2, d_model=8, d_ff=16, max_len=8,
                 dropout_rate=0.0, tie_embeddings=True)
    weights.save(str(tmp_path / "project"), model, params)
    return str(tmp_path / "project"), weights.round_trip(params)


def test_the_default_run_loads_the_embedded_model_with_its_recorded_digest():
    with open(os.path.join(BASE, weights.CONFIG)) as f:
        recorded = json.load(f)["sha256"]
    assert convert.detect(BASE) == convert.PROJECT
    config = webnlg_small.get_config()
    config.base_weights = os.path.join(ROOT, config.base_weights)  # The config names it from the repo root.
    _, state = train.create(config)
    assert weights_digest(jax.device_get(state.params["base"])) == recorded


def test_a_project_directory_loads_and_keeps_its_checks(project_dir):
    path, params = project_dir
    assert convert.detect(path) == convert.PROJECT
    jax.tree.map(np.testing.assert_array_equal, convert.load_base(path, TINY), params)
    with pytest.raises(weights.WeightsError, match="trained for another model.*d_ff"):
        convert.load_base(path, dataclasses.replace(TINY, d_ff=32))
    with pytest.raises(weights.WeightsError, match=r"trained for another model.*'family': \('gpt2', 'bart'\)"):
        convert.load_base(path, bart.BartConfig(vocab_size=11, encoder_layers=1, decoder_layers=1, num_heads=2,
                                                d_model=8, d_ff=16, max_len=8))
    os.remove(os.path.join(path, weights.WEIGHTS))
    with pytest.raises(weights.WeightsError, match="incomplete"):
        convert.load_base(path, TINY)


def test_a_hugging_face_directory_loads_and_keeps_its_checks(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import hf_tiny

    hf_tiny.gpt2().save_pretrained(tmp_path)
    expected = gpt2.GPT2Config(vocab_size=97, num_layers=2, num_heads=4, d_model=32, d_ff=128, max_len=64)
    assert convert.detect(str(tmp_path)) == convert.HUGGING_FACE
    jax.tree.map(np.testing.assert_array_equal, convert.load_base(str(tmp_path), expected), convert.load(str(tmp_path))[1])
    with pytest.raises(convert.CheckpointFormatError, match="num_layers: checkpoint 2, config 3"):
        convert.load_base(str(tmp_path), dataclasses.replace(expected, num_layers=3))


def _one_line_error(path, match):
    with pytest.raises(convert.BaseWeightsError, match=match) as error:
        convert.load_base(str(path), TINY)
    message = str(error.value)
    assert "\n" not in message and repr(str(path)) in message
    return message


def test_anything_else_is_a_one_line_error_naming_the_path(tmp_path, project_dir):
    expected = ("expected a project base-model directory .base_model.json . base_model.safetensors., a Hugging Face "
                "directory .*, a GGUF file or a known model name")
    _one_line_error(tmp_path / "missing", f"does not exist; {expected}")
    (tmp_path / "empty").mkdir()
    _one_line_error(tmp_path / "empty", f"holds neither format; {expected}")
    (tmp_path / "weights.bin").write_bytes(b"PK\x03\x04")
    _one_line_error(tmp_path / "weights.bin", f"is a file of unknown type; {expected}")
    # The layout models/weights.py wrote before its files had names of their own.
    path, _ = project_dir
    os.rename(os.path.join(path, weights.CONFIG), os.path.join(path, "config.json"))
    os.rename(os.path.join(path, weights.WEIGHTS), os.path.join(path, "model.safetensors"))
    _one_line_error(path, "old layout; rename its config.json to base_model.json and model.safetensors to base_model.safetensors")
    (tmp_path / "both").mkdir()
    for name in ("config.json", weights.CONFIG):
        (tmp_path / "both" / name).write_text("{}")
    _one_line_error(tmp_path / "both", "holds both")
