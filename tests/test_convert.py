"""Hugging Face checkpoints -> prefix_jax: same logits as the PyTorch model; bad ones refused.

Needs the [parity] extra (torch CPU, transformers, safetensors); skipped without it.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

import hf_tiny  # noqa: E402
from prefix_jax import convert  # noqa: E402
from prefix_jax.data import tokenizer as tokenizer_lib  # noqa: E402
from prefix_jax.models import gpt2  # noqa: E402

ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    model = hf_tiny.gpt2()
    model.save_pretrained(path)
    return model, str(path)


def test_gpt2_logits_match_hugging_face(hf_gpt2):
    model, path = hf_gpt2
    config, params = convert.load(path)
    assert config == gpt2.GPT2Config(vocab_size=97, num_layers=2, num_heads=4, d_model=32, d_ff=128, max_len=64)
    tokens, mask = hf_tiny.batch()
    ours = np.asarray(gpt2.GPT2(config).apply({"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    theirs = hf_tiny.logits(model, tokens, mask)
    diff = hf_tiny.max_diff(ours, theirs, mask)
    print(f"gpt2 no-prefix max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    assert np.abs(theirs).max() > 1.0  # The comparison is not between two near-zero tensors.


def test_gpt2_untied_head_from_pytorch_bin(tmp_path):
    model = hf_tiny.gpt2(tie=False, seed=1)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # The pre-safetensors format.
    config, params = convert.load(str(tmp_path))
    assert not config.tie_embeddings and "lm_head" in params
    tokens, mask = hf_tiny.batch()
    ours = np.asarray(gpt2.GPT2(config).apply({"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask)))
    assert hf_tiny.max_diff(ours, hf_tiny.logits(model, tokens, mask), mask) < ATOL


def _rewrite(path, edit):
    file = path / "model.safetensors"
    tensors = dict(safetensors_numpy.load_file(str(file)))
    edit(tensors)
    safetensors_numpy.save_file(tensors, str(file))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"), "missing: h.1.mlp.c_fc.bias"),
        (lambda t: t.update({"transformer.h.0.extra.weight": np.zeros(3, np.float32)}), "unexpected: h.0.extra.weight"),
        (
            lambda t: t.update({"transformer.wpe.weight": np.zeros((32, 32), np.float32)}),
            "wrong shape: wpe.weight: (32, 32), expected (64, 32)",
        ),
    ],
)
def test_bad_checkpoints_name_the_tensor(tmp_path, edit, message):
    hf_tiny.gpt2().save_pretrained(tmp_path)
    _rewrite(tmp_path, edit)
    with pytest.raises(convert.CheckpointFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert.load(str(tmp_path))


def test_bad_directories_fail_clearly(tmp_path):
    with pytest.raises(convert.CheckpointFormatError, match="no config.json"):
        convert.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(convert.CheckpointFormatError, match="model_type 'mamba' has no converter"):
        convert.load(str(tmp_path))
    hf_tiny.gpt2().config.save_pretrained(tmp_path)
    with pytest.raises(convert.CheckpointFormatError, match="neither model.safetensors nor pytorch_model.bin"):
        convert.load(str(tmp_path))
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(convert.CheckpointFormatError, match="activation_function='relu'"):
        convert.load(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(config)[:30])
    with pytest.raises(convert.CheckpointFormatError, match=r"config\.json:1: malformed JSON .*; download the"):
        convert.load(str(tmp_path))


def test_tokenizer_json_loads_from_the_checkpoint_directory(tmp_path):
    tokenizer_lib.byte_level().save(str(tmp_path / "tokenizer.json"))
    tokenizer = convert.load_tokenizer(str(tmp_path))
    assert tokenizer.encode("hi").ids == [104, 105]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        convert.load_tokenizer(str(tmp_path / "elsewhere"))


def test_sharded_safetensors_checkpoint(tmp_path):
    model = hf_tiny.gpt2(seed=2)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists() and not (tmp_path / "model.safetensors").exists()
    config, params = convert.load(str(tmp_path))
    tokens, mask = hf_tiny.batch()
    ours = gpt2.GPT2(config).apply({"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask))
    assert hf_tiny.max_diff(ours, hf_tiny.logits(model, tokens, mask), mask) < ATOL


def test_bfloat16_checkpoint_converts_exactly(tmp_path):
    model = hf_tiny.gpt2(seed=3).to(torch.bfloat16)
    model.save_pretrained(tmp_path)
    tensors = convert.read_tensors(str(tmp_path))
    expected = model.transformer.h[0].mlp.c_fc.weight.detach().float().numpy()
    assert tensors["transformer.h.0.mlp.c_fc.weight"].dtype == np.float32
    np.testing.assert_array_equal(tensors["transformer.h.0.mlp.c_fc.weight"], expected)
    config, _ = convert.load(str(tmp_path))
    assert config.num_layers == 2
