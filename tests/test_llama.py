"""Llama-style decoder: converted tiny Hugging Face Llama (GQA) gives its logits, with and
without the same PEFT prefix; export and import through PEFT adapters.

Needs the [parity] extra; skipped without it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from safetensors.numpy import load_file, save_file  # noqa: E402

import hf_tiny  # noqa: E402
from prefix_jax import convert, peft_adapter  # noqa: E402
from prefix_jax import prefix as prefix_lib  # noqa: E402
from prefix_jax.models import llama  # noqa: E402

ATOL = 1e-4
N = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf_tiny.llama().save_pretrained(path)
    config, params = convert.load(str(path))
    return str(path), llama.Llama(config), params


def fresh_torch(path):
    return transformers.LlamaForCausalLM.from_pretrained(path).eval()


def ours(model, params, tokens, mask, kv=None):
    kwargs = {}
    if kv is not None:
        kwargs = {
            "prefix": tuple({"key": k, "value": v} for k, v in zip(kv["key"], kv["value"])),
            "positions": peft_adapter.positions(kv["key"].shape[1], *tokens.shape),
        }
    return np.asarray(model.apply({"params": params}, jnp.asarray(tokens), attention_mask=jnp.asarray(mask), **kwargs))


def test_llama_logits_match_hugging_face(base):
    path, model, params = base
    assert model.config == llama.LlamaConfig(
        vocab_size=97, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64, max_len=64,
        head_dim=8, rope_theta=1000.0,
    )
    tokens, mask = hf_tiny.batch()
    theirs = hf_tiny.logits(fresh_torch(path), tokens, mask)
    diff = hf_tiny.max_diff(ours(model, params, tokens, mask), theirs, mask)
    print(f"llama no-prefix max |logit diff| = {diff:.2e}")
    assert diff < ATOL and np.abs(theirs).max() > 1.0


@pytest.mark.parametrize("projection", [False, True], ids=["plain", "prefix_projection"])
def test_peft_prefix_imports_with_equal_logits(base, projection, tmp_path):
    path, model, params = base
    torch.manual_seed(1)
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, prefix_projection=projection, encoder_hidden_size=16
    )
    peft_model = peft.get_peft_model(fresh_torch(path), config).eval()
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.mul_(3.0)
    peft_model.save_pretrained(tmp_path)
    spec, kv = peft_adapter.load(str(tmp_path), model.config)
    assert kv["key"].shape == (2, N, 2, 8)  # [layers, n, kv_heads, head_dim]: GQA-sized
    tokens, mask = hf_tiny.batch(seed=2)
    theirs = hf_tiny.logits(peft_model, tokens, mask)
    diff = hf_tiny.max_diff(ours(model, params, tokens, mask, kv), theirs, mask)
    print(f"llama PEFT (projection={projection}) -> import: max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    assert hf_tiny.max_diff(ours(model, params, tokens, mask), theirs, mask) > 0.1


def test_export_loads_in_peft_with_equal_logits(base, tmp_path):
    path, model, params = base
    spec = prefix_lib.PrefixSpec(kind="kv", length=N)
    shape = (2, N, 2, 8)
    kv = {
        "key": jax.random.normal(jax.random.key(0), shape),
        "value": jax.random.normal(jax.random.key(1), shape),
    }
    peft_adapter.save(str(tmp_path), spec, kv, model)
    peft_model = peft.PeftModel.from_pretrained(fresh_torch(path), str(tmp_path)).eval()
    tokens, mask = hf_tiny.batch(seed=3)
    theirs = hf_tiny.logits(peft_model, tokens, mask)
    diff = hf_tiny.max_diff(ours(model, params, tokens, mask, kv), theirs, mask)
    print(f"llama export kv -> PEFT: max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    # Rotating the prefix keys (as if they sat at positions 0..n-1) breaks the match.
    rotated = dict(kv, key=llama.rope(kv["key"], jnp.broadcast_to(jnp.arange(N), (2, N)), 1000.0))
    assert hf_tiny.max_diff(ours(model, params, tokens, mask, rotated), theirs, mask) > 1e-2


def test_bad_llama_checkpoints_fail_clearly(tmp_path):
    hf_tiny.llama().save_pretrained(tmp_path)
    file = str(tmp_path / "model.safetensors")
    tensors = dict(load_file(file))
    tensors.pop("model.layers.0.mlp.up_proj.weight")
    tensors["model.layers.1.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)
    save_file(tensors, file)
    with pytest.raises(convert.CheckpointFormatError) as error:
        convert.load(str(tmp_path))
    assert "missing: layers.0.mlp.up_proj.weight" in str(error.value)
    assert "wrong shape: layers.1.self_attn.k_proj.weight: (32, 32), expected (16, 32)" in str(error.value)


def test_a_hugging_face_llama_is_a_runs_base_weights(base):
    """config.base_weights=DIR trains a prefix on the converted weights, GQA-sized."""
    from experiments import common
    from prefix_jax import train

    path, model, params = base
    config = common.base_config()
    fields = dict(vars(model.config))
    fields.pop("dtype")
    config.model = common.llama_model(**fields)
    config.base_weights = path
    config.prefix.update(kind="kv", length=N, reparam_dim=16)
    exp, state = train.create(config)
    jax.tree.map(np.testing.assert_array_equal, state.params["base"], params)
    assert state.params["prefix"]["out_kernel"].shape == (16, 2 * 2 * 2 * 8)  # L * (K, V) * kv_heads * head_dim
    tokens, mask = hf_tiny.batch()
    batch = {"tokens": jnp.asarray(tokens), "attention_mask": jnp.asarray(mask),
             "loss_mask": jnp.asarray(mask, jnp.float32)}
    with_prefix = train.forward(state.params, batch, None, model=exp.model, spec=exp.spec, deterministic=True)
    assert hf_tiny.max_diff(np.asarray(with_prefix), ours(model, params, tokens, mask), mask) > 1e-3
