"""Prefix kinds, their parameterisations, initialisation and sizes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from prefix_jax import prefix as prefix_lib
from prefix_jax.models import gpt2

N = 5


def _logits(model, base_params, spec, params, tokens, **kwargs):
    inputs = prefix_lib.model_inputs(spec, params, model.config.prefix_geometry)
    return model.apply({"params": base_params}, tokens, **inputs, **kwargs)


def test_reparameterised_kv_folds_into_the_same_prefix(config, model, base_params, tokens):
    spec = prefix_lib.PrefixSpec(kind="kv", length=N, reparam_dim=24)
    params = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(3))
    folded_spec, folded = prefix_lib.fold(spec, params, config.prefix_geometry)
    assert folded_spec == prefix_lib.PrefixSpec(kind="kv", length=N)
    shape = (config.num_layers, N, config.num_heads, config.head_dim)
    assert folded["key"].shape == folded["value"].shape == shape
    np.testing.assert_allclose(
        _logits(model, base_params, folded_spec, folded, tokens),
        _logits(model, base_params, spec, params, tokens),
        atol=1e-5,
    )


def test_reparameterisation_uses_peft_layout(config):
    """The MLP output's last axis is [L0 K | L0 V | L1 K | ...] (PEFT's layout)."""
    spec = prefix_lib.PrefixSpec(kind="kv", length=N, reparam_dim=8)
    params = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(3))
    hidden = np.tanh(params["embedding"] @ params["hidden_kernel"] + params["hidden_bias"])
    out = hidden @ params["out_kernel"] + params["out_bias"]
    _, folded = prefix_lib.fold(spec, params, config.prefix_geometry)
    d = config.d_model
    layer, which = 1, "value"
    start = (2 * layer + 1) * d
    np.testing.assert_allclose(
        folded[which][layer].reshape(N, d), out[:, start : start + d], atol=1e-5
    )


def test_hidden_prefix_compiles_to_an_equal_kv_prefix(config, model, base_params, tokens):
    spec = prefix_lib.PrefixSpec(kind="hidden", length=N)
    params = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(4))
    params = {"hidden": params["hidden"] * 50}  # Away from 0, so LayerNorm sees real vectors.
    kv_spec, kv = prefix_lib.hidden_to_kv(spec, params, model, base_params)
    literal = dataclasses.replace(spec, literal=True)
    np.testing.assert_allclose(
        _logits(model, base_params, kv_spec, kv, tokens),
        _logits(model, base_params, literal, params, tokens),
        atol=2e-5,
    )


@pytest.mark.parametrize("kind", ["hidden", "kv"])
def test_init_from_words_equals_reading_the_words_first(kind, config, model, base_params, tokens):
    """A prefix made from the activations of words w acts exactly as if the model had
    read w before the input (with the input at positions n.., as w took 0..n-1)."""
    words = [5, 9, 2, 30, 11]
    spec = prefix_lib.PrefixSpec(kind=kind, length=len(words))
    params = prefix_lib.init_from_tokens(spec, model, base_params, words)
    m = tokens.shape[1]
    positions = jnp.broadcast_to(len(words) + jnp.arange(m), tokens.shape)
    with_prefix = _logits(model, base_params, spec, params, tokens, positions=positions)
    read_first = model.apply(
        {"params": base_params}, jnp.concatenate([jnp.array([words] * 2), tokens], axis=1)
    )
    np.testing.assert_allclose(with_prefix, read_first[:, len(words) :], atol=2e-5)


def test_init_from_words_cycles_tokens_and_prompt_uses_embeddings(config, model, base_params):
    spec = prefix_lib.PrefixSpec(kind="prompt", length=5)
    params = prefix_lib.init_from_tokens(spec, model, base_params, [7, 8])
    embedded = model.apply(
        {"params": base_params}, jnp.array([[7, 8, 7, 8, 7]]), jnp.arange(5)[None],
        method=gpt2.GPT2.embed,
    )
    np.testing.assert_array_equal(params["prompt"], embedded[0])


def test_init_from_words_fits_a_reparameterised_prefix_to_the_words(config, model, base_params, tokens):
    """The MLP has no inverse: it is fitted to the words' K/V, and then acts nearly as they do."""
    words = [5, 9, 2, 30, 11]
    spec = prefix_lib.PrefixSpec(kind="kv", length=len(words), reparam_dim=32)
    plain = dataclasses.replace(spec, reparam_dim=0)
    target = prefix_lib.init_from_tokens(plain, model, base_params, words)
    fitted = prefix_lib.init_from_tokens(spec, model, base_params, words, rng=jax.random.key(0), fit_lr=1e-3)
    start = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(0))
    error = lambda params: max(
        float(jnp.linalg.norm(params[n] - target[n]) / jnp.linalg.norm(target[n])) for n in ("key", "value")
    )
    assert error(prefix_lib.fold(spec, start, config.prefix_geometry)[1]) > 0.5
    folded_spec, folded = prefix_lib.fold(spec, fitted, config.prefix_geometry)
    assert error(folded) < 1e-2
    np.testing.assert_allclose(
        _logits(model, base_params, folded_spec, folded, tokens),
        _logits(model, base_params, plain, target, tokens),
        atol=5e-3,
    )
    with pytest.raises(ValueError, match="needs an rng"):
        prefix_lib.init_from_tokens(spec, model, base_params, words)


@pytest.mark.parametrize(
    "spec, served, trained",
    [
        (prefix_lib.PrefixSpec("hidden", N), "L*n*d", "L*n*d"),
        (prefix_lib.PrefixSpec("kv", N), "2*L*n*d", "2*L*n*d"),
        (prefix_lib.PrefixSpec("prompt", N), "n*d", "n*d"),
        (prefix_lib.PrefixSpec("kv", N, reparam_dim=32), "2*L*n*d", "n*d + d*k + k + k*2*L*d + 2*L*d"),
    ],
)
def test_parameter_counts_follow_the_formulas(spec, served, trained, config, base_params):
    L, n, d, k = config.num_layers, N, config.d_model, spec.reparam_dim
    counts = prefix_lib.count_params(spec, config.prefix_geometry, base_params)
    assert counts["served"] == eval(served)
    assert counts["trained"] == eval(trained)
    base = sum(x.size for x in jax.tree.leaves(base_params))
    assert counts["base"] == base
    assert counts["served_share_of_base"] == pytest.approx(eval(served) / base)


def test_gpt2_medium_prefix_sizes():
    medium = gpt2.GPT2Config(
        vocab_size=50257, num_layers=24, num_heads=16, d_model=1024, d_ff=4096, max_len=1024
    )
    sizes = {
        (kind, n): prefix_lib.served_size(prefix_lib.PrefixSpec(kind, n), medium.prefix_geometry)
        for kind in ("hidden", "kv", "prompt")
        for n in (5, 10)
    }
    assert sizes == {
        ("hidden", 5): 122_880, ("hidden", 10): 245_760,
        ("kv", 5): 245_760, ("kv", 10): 491_520,
        ("prompt", 5): 5_120, ("prompt", 10): 10_240,
    }


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="deep", length=1), "Unknown prefix kind"),
        (dict(kind="hidden", length=-1), "length must be >= 0"),
        (dict(kind="hidden", length=2, reparam_dim=8), r"only applies to kinds \('kv', 'infix'\)"),
        (dict(kind="kv", length=2, literal=True), "only applies to kind 'hidden'"),
    ],
)
def test_bad_specs_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prefix_lib.PrefixSpec(**kwargs)
