"""PEFT prefix tuning <-> prefix_jax on the same tiny GPT-2: equal logits both ways.

Needs the [parity] extra (torch CPU, transformers, peft, safetensors); skipped without it.
"""

import json
import lzma

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import hf_tiny  # noqa: E402
from prefix_jax import convert, peft_adapter  # noqa: E402
from prefix_jax import prefix as prefix_lib  # noqa: E402
from prefix_jax.models import gpt2  # noqa: E402

ATOL = 1e-4
N = 4  # prefix length


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(torch model, its directory, converted flax model, params)."""
    path = tmp_path_factory.mktemp("gpt2")
    hf_tiny.gpt2().save_pretrained(path)
    config, params = convert.load(str(path))
    return str(path), gpt2.GPT2(config), params


def fresh_torch(path):
    return transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def ours_logits(model, params, spec, prefix_params, tokens, mask, shifted=True):
    batch, m = tokens.shape
    kwargs = {"positions": peft_adapter.positions(spec.length, batch, m)} if shifted else {}
    return np.asarray(model.apply(
        {"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask),
        **prefix_lib.model_inputs(spec, prefix_params, model.config.prefix_geometry), **kwargs,
    ))


def scaled(params, scale=3.0):
    return jax.tree.map(lambda x: scale * x, params)


@pytest.mark.parametrize(
    "spec",
    [
        prefix_lib.PrefixSpec(kind="kv", length=N),
        prefix_lib.PrefixSpec(kind="kv", length=N, reparam_dim=8),
        prefix_lib.PrefixSpec(kind="hidden", length=N),
    ],
    ids=["kv", "kv-reparam-folded", "hidden-as-kv"],
)
def test_export_loads_in_peft_with_equal_logits(base, spec, tmp_path):
    path, model, params = base
    prefix_params = scaled(prefix_lib.init_random(spec, model.config.prefix_geometry, jax.random.key(3)))
    peft_adapter.save(str(tmp_path), spec, prefix_params, model, params, base_model_name_or_path=path)
    peft_model = peft.PeftModel.from_pretrained(fresh_torch(path), str(tmp_path)).eval()
    tokens, mask = hf_tiny.batch()
    theirs = hf_tiny.logits(peft_model, tokens, mask)
    ours = ours_logits(model, params, spec, prefix_params, tokens, mask)
    diff = hf_tiny.max_diff(ours, theirs, mask)
    print(f"gpt2 export {spec.kind} reparam={spec.reparam_dim} -> PEFT: max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    # The test can fail: without the prefix, or with positions 0..m-1, the logits differ.
    no_prefix = ours_logits(model, params, None, {}, tokens, mask, shifted=False)
    assert hf_tiny.max_diff(no_prefix, theirs, mask) > 0.1
    unshifted = ours_logits(model, params, spec, prefix_params, tokens, mask, shifted=False)
    assert hf_tiny.max_diff(unshifted, theirs, mask) > 0.1


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "prefix_projection"])
def test_peft_adapter_imports_with_equal_logits(base, projection, tmp_path):
    path, model, params = base
    torch.manual_seed(4)
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_projection=projection, encoder_hidden_size=16
    )
    peft_model = peft.get_peft_model(fresh_torch(path), config).eval()
    with torch.no_grad():  # A trained-looking prefix (PEFT's MLP output is small at init).
        for p in peft_model.prompt_encoder.parameters():
            p.mul_(3.0)
    peft_model.save_pretrained(tmp_path)
    spec, prefix_params = peft_adapter.load(str(tmp_path), model.config)
    assert spec == prefix_lib.PrefixSpec(kind="kv", length=N)
    assert prefix_params["key"].shape == (2, N, 4, 8)
    tokens, mask = hf_tiny.batch(seed=1)
    theirs = hf_tiny.logits(peft_model, tokens, mask)
    ours = ours_logits(model, params, spec, prefix_params, tokens, mask)
    diff = hf_tiny.max_diff(ours, theirs, mask)
    print(f"gpt2 PEFT (projection={projection}) -> import: max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    assert hf_tiny.max_diff(ours_logits(model, params, None, {}, tokens, mask, shifted=False), theirs, mask) > 0.1


def test_export_import_round_trip_is_exact(base, tmp_path):
    _, model, params = base
    spec = prefix_lib.PrefixSpec(kind="kv", length=N)
    prefix_params = prefix_lib.init_random(spec, model.config.prefix_geometry, jax.random.key(5))
    peft_adapter.save(str(tmp_path), spec, prefix_params, model)
    loaded_spec, loaded = peft_adapter.load(str(tmp_path), model.config)
    assert loaded_spec == spec
    for name in ("key", "value"):
        np.testing.assert_array_equal(loaded[name], prefix_params[name])


def test_bad_adapters_fail_clearly(base, tmp_path):
    _, model, params = base
    with pytest.raises(peft_adapter.AdapterFormatError, match="adapter_config.json does not exist"):
        peft_adapter.load(str(tmp_path), model.config)
    prompt = prefix_lib.PrefixSpec(kind="prompt", length=N)
    with pytest.raises(peft_adapter.AdapterFormatError, match="prompt-tuning prompt is not a prefix"):
        peft_adapter.save(str(tmp_path), prompt, prefix_lib.init_random(prompt, model.config.prefix_geometry, jax.random.key(0)), model)
    spec = prefix_lib.PrefixSpec(kind="kv", length=N)
    peft_adapter.save(str(tmp_path), spec, prefix_lib.init_random(spec, model.config.prefix_geometry, jax.random.key(0)), model)
    other = gpt2.GPT2Config(vocab_size=97, num_layers=3, num_heads=4, d_model=32, d_ff=128, max_len=64)
    with pytest.raises(peft_adapter.AdapterFormatError, match=r"num_layers=2 \(the model has 3\)"):
        peft_adapter.load(str(tmp_path), other)
    config_file = tmp_path / "adapter_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "peft_type": "LORA"}))
    with pytest.raises(peft_adapter.AdapterFormatError, match="peft_type is 'LORA'"):
        peft_adapter.load(str(tmp_path), model.config)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], r":\d+: malformed JSON \(.+: column \d+\)"),
        (lambda data: b"", r":1: malformed JSON \(Expecting value: column 1\)"),
        (lambda data: b"[]", r":1: holds a JSON list, not an object"),
        (lzma.compress, r":1: byte 0 \(0xfd\) is not UTF-8 text \(xz-compressed data\)"),
    ],
    ids=["truncated", "empty", "not-an-object", "compressed"],
)
def test_unreadable_adapter_config_names_the_file_and_the_fix(base, damage, message, tmp_path):
    _, model, _ = base
    spec = prefix_lib.PrefixSpec(kind="kv", length=N)
    prefix_params = prefix_lib.init_random(spec, model.config.prefix_geometry, jax.random.key(0))
    peft_adapter.save(str(tmp_path), spec, prefix_params, model)
    config_file = tmp_path / "adapter_config.json"
    config_file.write_bytes(damage(config_file.read_bytes()))
    fix = "give a directory written by PeftModel.save_pretrained"
    with pytest.raises(peft_adapter.AdapterFormatError, match=rf"adapter_config\.json{message}; {fix}"):
        peft_adapter.load(str(tmp_path), model.config)
