"""The method's definition, checked on intermediate values (DESIGN.md, section 1)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import hidden_entries, random_hidden
from prefix_jax import prefix
from prefix_jax.models import families, gpt2, layers

N = 4


def _layer_inputs(model, base_params, tokens, **kwargs):
    _, state = model.apply({"params": base_params}, tokens, mutable=["intermediates"], **kwargs)
    return [
        state["intermediates"][layers.layer_name(l)]["layer_input"][0]
        for l in range(model.config.num_layers)
    ]


def _layer_outputs(model, base_params, layer_inputs, valid):
    """Runs each layer alone on its recorded input (literal form: full n+m rows)."""

    def run(module, l, x):
        positions = jnp.zeros(x.shape[:2], jnp.int32)  # GPT-2's layers take no positions.
        return module.layers[l](x, positions, layers.causal_mask(valid, x.shape[1]))

    return [
        nn.apply(run, model)({"params": base_params}, l, x) for l, x in enumerate(layer_inputs)
    ]


def test_seed_invariants_on_intermediates(config, model, base_params, tokens):
    hidden = random_hidden(config, N)
    inputs = _layer_inputs(
        model, base_params, tokens, prefix=hidden_entries(hidden), literal_prefix=True
    )
    batch, m = tokens.shape
    valid = jnp.ones((batch, N + m), bool)
    outputs = _layer_outputs(model, base_params, inputs, valid)
    embedded = model.apply({"params": base_params}, tokens, jnp.arange(m)[None], method=gpt2.GPT2.embed)
    for l, x in enumerate(inputs):
        assert x.shape == (batch, N + m, config.d_model)
        # H^l = [P^l ; h^l]: every layer gets its own prefix ...
        np.testing.assert_array_equal(x[:, :N], jnp.broadcast_to(hidden[l], (batch, N, config.d_model)))
        # ... and h^l is the previous layer's output with the prefix rows dropped.
        previous_rows = embedded if l == 0 else outputs[l - 1][:, N:]
        np.testing.assert_allclose(x[:, N:], previous_rows, atol=1e-6)
    # Distinct prefixes per layer really reached distinct layers.
    assert not np.allclose(inputs[0][:, :N], inputs[1][:, :N])


def _rollout_bug(module, tokens, hidden):
    """The classic bug: layer l+1 gets all n+m output rows, prefix outputs included."""
    batch, m = tokens.shape
    x = module.embed(tokens, jnp.broadcast_to(jnp.arange(m), (batch, m)))
    x = jnp.concatenate([jnp.broadcast_to(hidden[0], (batch,) + hidden[0].shape), x], axis=1)
    mask = layers.causal_mask(jnp.ones((batch, x.shape[1]), bool), x.shape[1])
    for layer in module.layers:
        x = layer(x, jnp.zeros(x.shape[:2], jnp.int32), mask)
    return module.logits(x[:, hidden.shape[1]:])


def test_passing_prefix_outputs_on_is_detected(config, model, base_params, tokens):
    hidden = random_hidden(config, N)
    right = model.apply({"params": base_params}, tokens, prefix=hidden_entries(hidden))
    wrong = nn.apply(_rollout_bug, model)({"params": base_params}, tokens, hidden)
    assert np.max(np.abs(right - wrong)) > 1e-2


def _layer_norm(x, params, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"]


def test_literal_efficient_and_kv_prefix_agree(config, model, base_params, tokens):
    hidden = random_hidden(config, N)
    literal = model.apply(
        {"params": base_params}, tokens, prefix=hidden_entries(hidden), literal_prefix=True
    )
    efficient = model.apply({"params": base_params}, tokens, prefix=hidden_entries(hidden))
    # K/V written out by hand: K^l = LN(P^l) W_k + b_k, V^l = LN(P^l) W_v + b_v.
    kv = []
    for l, p in enumerate(np.asarray(hidden)):
        layer = jax.tree.map(np.asarray, base_params[layers.layer_name(l)])
        normed = _layer_norm(p, layer["ln_1"], config.layer_norm_epsilon)
        attn = layer["attn"]
        kv.append(
            {
                "key": np.einsum("nd,dhk->nhk", normed, attn["key"]["kernel"]) + attn["key"]["bias"],
                "value": np.einsum("nd,dhk->nhk", normed, attn["value"]["kernel"]) + attn["value"]["bias"],
            }
        )
    by_hand = model.apply({"params": base_params}, tokens, prefix=tuple(kv))
    np.testing.assert_allclose(efficient, literal, atol=2e-5)
    np.testing.assert_allclose(by_hand, literal, atol=2e-5)


def test_empty_prefix_reproduces_base_model_exactly(config, model, base_params, tokens):
    base = model.apply({"params": base_params}, tokens)
    for literal in (False, True):
        empty = model.apply(
            {"params": base_params},
            tokens,
            prefix=hidden_entries(random_hidden(config, 0)),
            literal_prefix=literal,
        )
        np.testing.assert_array_equal(empty, base)
    nones = model.apply({"params": base_params}, tokens, prefix=(None,) * config.num_layers)
    np.testing.assert_array_equal(nones, base)


def test_prompt_outputs_are_passed_on_but_prefix_outputs_are_not(config, model, base_params, tokens):
    prompt = random_hidden(config, N)[0]  # [n, d]
    same_everywhere = hidden_entries(jnp.broadcast_to(prompt, (config.num_layers, N, config.d_model)))
    prompt_inputs = _layer_inputs(model, base_params, tokens, prompt=prompt)
    prefix_inputs = _layer_inputs(
        model, base_params, tokens, prefix=same_everywhere, literal_prefix=True
    )
    # Layer 0 sees the same rows in both ...
    np.testing.assert_array_equal(prompt_inputs[0], prefix_inputs[0])
    # ... but layer 1 sees the prompt's layer-0 outputs, where prefix tuning has a fresh P^1.
    valid = jnp.ones((tokens.shape[0], N + tokens.shape[1]), bool)
    layer0_out = _layer_outputs(model, base_params, prompt_inputs[:1], valid)[0]
    np.testing.assert_allclose(prompt_inputs[1], layer0_out, atol=1e-6)
    np.testing.assert_array_equal(prefix_inputs[1][:, :N], prefix_inputs[0][:, :N])
    assert not np.allclose(prompt_inputs[1][:, :N], prefix_inputs[1][:, :N], atol=1e-3)
    logits_prompt = model.apply({"params": base_params}, tokens, prompt=prompt)
    logits_prefix = model.apply({"params": base_params}, tokens, prefix=same_everywhere)
    assert logits_prompt.shape == logits_prefix.shape == tokens.shape + (config.vocab_size,)
    assert np.max(np.abs(logits_prompt - logits_prefix)) > 1e-2


def test_right_padding_does_not_change_valid_rows(config, model, base_params, tokens):
    prefix = hidden_entries(random_hidden(config, N))
    short = tokens[:, :5]
    padded = jnp.concatenate([short, jnp.zeros((2, 3), tokens.dtype)], axis=1)
    mask = jnp.concatenate([jnp.ones((2, 5)), jnp.zeros((2, 3))], axis=1)
    want = model.apply({"params": base_params}, short, prefix=prefix)
    got = model.apply({"params": base_params}, padded, prefix=prefix, attention_mask=mask)
    np.testing.assert_allclose(got[:, :5], want, atol=1e-6)


def test_masked_prefix_slots_equal_a_shorter_prefix(config, model, base_params, tokens):
    hidden = random_hidden(config, N)
    shorter = model.apply({"params": base_params}, tokens, prefix=hidden_entries(hidden[:, :2]))
    masked = model.apply(
        {"params": base_params},
        tokens,
        prefix=hidden_entries(hidden),
        prefix_mask=jnp.array([1, 1, 0, 0]),
    )
    np.testing.assert_allclose(masked, shorter, atol=1e-6)


def test_per_row_prefixes_match_single_rows(config, model, base_params, tokens):
    per_row = jnp.stack([random_hidden(config, N, seed=5), random_hidden(config, N, seed=6)], axis=1)
    batched = model.apply({"params": base_params}, tokens, prefix=hidden_entries(per_row))
    for row in range(2):
        single = model.apply(
            {"params": base_params}, tokens[row : row + 1], prefix=hidden_entries(per_row[:, row])
        )
        np.testing.assert_allclose(batched[row], single[0], atol=1e-6)


def test_gpt2_medium_has_gpt2_medium_parameter_count():
    medium = gpt2.GPT2(
        gpt2.GPT2Config(vocab_size=50257, num_layers=24, num_heads=16, d_model=1024, d_ff=4096, max_len=1024)
    )
    shapes = jax.eval_shape(lambda key: families.init_params(medium, key), jax.random.key(0))
    assert prefix.num_params(shapes) == 354_823_168


def test_bad_inputs_fail_clearly(config, model, base_params, tokens):
    with pytest.raises(ValueError, match="divisible by num_heads"):
        gpt2.GPT2Config(vocab_size=8, num_layers=1, num_heads=3, d_model=16, d_ff=8, max_len=8)
    with pytest.raises(ValueError, match="2 entries but the model has 3 layers"):
        model.apply({"params": base_params}, tokens, prefix=hidden_entries(random_hidden(config, N)[:2]))
    with pytest.raises(ValueError, match="exceeds the model's max_len"):
        model.apply({"params": base_params}, jnp.zeros((1, 40), jnp.int32))


@pytest.mark.parametrize("groups", [1, 2])
def test_one_query_attention_equals_the_last_row_of_full_attention(groups):
    """The decoding path (one query a row, `layers._dot_keys`) against the einsum path:
    grouped-query heads (6 query, 2 key/value), a prefix per group, a masked key."""
    rows, length, n = 4, 7, 3
    q, k, v, pk, pv = (jax.random.normal(jax.random.key(i), shape) for i, shape in enumerate(
        [(rows, length, 6, 8), (rows, length, 2, 8), (rows, length, 2, 8), (groups, n, 2, 8), (groups, n, 2, 8)]))
    valid = jnp.ones((rows, length), bool).at[1, 2].set(False)
    mask = jnp.concatenate([jnp.ones((rows, 1, length, n), bool), layers.causal_mask(valid, length)], axis=-1)
    full = layers.attend(q, k, v, mask, (pk, pv))
    last = layers.attend(q[:, -1:], k, v, mask[:, :, -1:], (pk, pv))
    np.testing.assert_allclose(last, full[:, -1:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(last, layers.attend(q[:, -1:], k, v, jnp.ones_like(mask[:, :, -1:]), (pk, pv)))
