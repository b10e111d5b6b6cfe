"""BART-style encoder-decoder: converted tiny Hugging Face BART gives its logits; prefixes on
encoder self-attention, decoder self-attention and cross-attention each reach the output.

The PEFT comparison covers what PEFT can express: decoder self-attention prefixes.
Needs the [parity] extra; skipped without it.
"""

import copy

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
from prefix_jax.models import bart, gpt2  # noqa: E402

ATOL = 1e-4
N = 3


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("bart")
    torch_model = hf_tiny.bart()
    torch_model.save_pretrained(path)
    config, params = convert.load(str(path))
    return torch_model, bart.Bart(config), params


def inputs():
    rng = np.random.default_rng(0)
    tokens, mask = rng.integers(3, 97, (3, 11)), np.ones((3, 11), np.int64)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    decoder_tokens, decoder_mask = hf_tiny.batch(seed=1)
    return tokens, mask, decoder_tokens, decoder_mask


def ours(model, params, prefix=None):
    tokens, mask, decoder_tokens, decoder_mask = inputs()
    return np.asarray(model.apply(
        {"params": params}, jnp.asarray(tokens), jnp.asarray(decoder_tokens), prefix=prefix,
        attention_mask=jnp.asarray(mask), decoder_attention_mask=jnp.asarray(decoder_mask),
    ))


def test_bart_logits_match_hugging_face(base):
    torch_model, model, params = base
    tokens, mask, decoder_tokens, decoder_mask = inputs()
    with torch.no_grad():
        theirs = torch_model(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(decoder_tokens), decoder_attention_mask=torch.tensor(decoder_mask),
        ).logits.numpy()
    diff = hf_tiny.max_diff(ours(model, params), theirs, decoder_mask)
    print(f"bart no-prefix max |logit diff| = {diff:.2e}")
    assert diff < ATOL and np.abs(theirs).max() > 1.0


def random_prefix(config, num_layers, seed):
    shape = (N, config.num_heads, config.head_dim)
    keys = jax.random.split(jax.random.key(seed), 2 * num_layers)
    return tuple(
        {"key": 3 * jax.random.normal(keys[2 * i], shape), "value": 3 * jax.random.normal(keys[2 * i + 1], shape)}
        for i in range(num_layers)
    )


@pytest.mark.parametrize("side", bart.SIDES)
def test_each_prefix_side_changes_the_output(base, side):
    _, model, params = base
    c = model.config
    layers = c.encoder_layers if side == "encoder" else c.decoder_layers
    prefix = {side: random_prefix(c, layers, seed=bart.SIDES.index(side))}
    _, _, _, decoder_mask = inputs()
    change = hf_tiny.max_diff(ours(model, params, prefix), ours(model, params), decoder_mask)
    assert change > 0.1, f"a {side} prefix left the logits unchanged (max change {change:.2e})"


def test_encoder_prefix_reaches_the_decoder_only_through_the_encoder(base):
    """An encoder prefix changes the encoder's outputs: with the cross-attention weights
    zeroed, the decoder no longer sees the encoder, and the encoder prefix has no effect."""
    _, model, params = base
    cut = jax.tree.map(lambda x: x, params)
    for i in range(model.config.decoder_layers):
        cut[f"decoder_layers_{i}"]["cross_attn"] = jax.tree.map(jnp.zeros_like, params[f"decoder_layers_{i}"]["cross_attn"])
    prefix = {"encoder": random_prefix(model.config, model.config.encoder_layers, seed=7)}
    _, _, _, decoder_mask = inputs()
    assert hf_tiny.max_diff(ours(model, cut, prefix), ours(model, cut), decoder_mask) < 1e-6
    assert hf_tiny.max_diff(ours(model, params, prefix), ours(model, params), decoder_mask) > 0.1


def test_bad_prefixes_and_checkpoints_fail_clearly(base, tmp_path):
    _, model, params = base
    with pytest.raises(ValueError, match="Unknown prefix sides \\['encoder_self'\\]"):
        ours(model, params, {"encoder_self": ()})
    with pytest.raises(ValueError, match="prefix\\['cross'\\] has 1 entries but that side has 2 layers"):
        ours(model, params, {"cross": (None,)})
    hf_tiny.bart().save_pretrained(tmp_path)
    file = str(tmp_path / "model.safetensors")
    tensors = dict(load_file(file))
    tensors.pop("model.decoder.layers.1.encoder_attn.v_proj.bias")
    save_file(tensors, file)
    with pytest.raises(convert.CheckpointFormatError, match="missing: decoder.layers.1.encoder_attn.v_proj.bias"):
        convert.load(str(tmp_path))


def test_peft_seq2seq_prefix_imports_with_equal_logits(base, tmp_path):
    """PEFT prefix-tunes BART's decoder self-attention only (see peft_adapter.load_encoder_decoder)."""
    torch_model, model, params = base
    torch.manual_seed(5)
    config = peft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=N)
    peft_model = peft.get_peft_model(copy.deepcopy(torch_model), config).eval()
    with torch.no_grad():
        for p in peft_model.prompt_encoder.parameters():
            p.mul_(3.0)
    peft_model.save_pretrained(tmp_path)
    prefix = peft_adapter.load_encoder_decoder(str(tmp_path), model.config)
    assert set(prefix) == {"decoder"}
    tokens, mask, decoder_tokens, decoder_mask = inputs()
    with torch.no_grad():
        theirs = peft_model(
            input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
            decoder_input_ids=torch.tensor(decoder_tokens), decoder_attention_mask=torch.tensor(decoder_mask),
        ).logits.numpy()
    ours_shifted = model.apply(
        {"params": params}, jnp.asarray(tokens), jnp.asarray(decoder_tokens), prefix=prefix,
        attention_mask=jnp.asarray(mask), decoder_attention_mask=jnp.asarray(decoder_mask),
        decoder_positions=peft_adapter.positions(N, *decoder_tokens.shape),
    )
    diff = hf_tiny.max_diff(ours_shifted, theirs, decoder_mask)
    print(f"bart PEFT (decoder self-attention) -> import: max |logit diff| = {diff:.2e}")
    assert diff < ATOL
    assert hf_tiny.max_diff(ours(model, params), theirs, decoder_mask) > 0.1
    with pytest.raises(peft_adapter.AdapterFormatError, match="num_transformer_submodules=2 \\(the model has 1\\)"):
        peft_adapter.load(str(tmp_path), gpt2.GPT2Config(
            vocab_size=97, num_layers=2, num_heads=4, d_model=32, d_ff=64, max_len=64))
