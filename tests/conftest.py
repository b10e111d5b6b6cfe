"""Shared tiny model fixtures (float32, 3 layers so 'every layer' means something)."""

import os

import jax
import pytest

from prefix_jax.models import gpt2, families

jax.config.update("jax_default_matmul_precision", "highest")

# tests/multidevice needs 8 (fake) devices, set before JAX starts: tests/test_sharding.py
# runs it in a subprocess with XLA_FLAGS and this variable set.
collect_ignore = [] if os.environ.get("PREFIX_JAX_MULTIDEVICE") else ["multidevice"]


@pytest.fixture(scope="session")
def config():
    return gpt2.GPT2Config(
        vocab_size=37, num_layers=3, num_heads=2, d_model=16, d_ff=32, max_len=32
    )


@pytest.fixture(scope="session")
def model(config):
    return gpt2.GPT2(config)


@pytest.fixture(scope="session")
def base_params(model):
    # GPT-2's 0.02 initialiser gives near-uniform attention in a model this small;
    # scaled up, a prefix moves the logits by O(1), far above float32 noise.
    return jax.tree.map(lambda x: 3.0 * x, families.init_params(model, jax.random.key(0)))


@pytest.fixture(scope="session")
def tokens(config):
    return jax.random.randint(jax.random.key(1), (2, 7), 0, config.vocab_size)


def random_hidden(config, n, seed=2):
    """A hidden-state prefix [L, n, d] with a distinct P^l per layer."""
    return jax.random.normal(jax.random.key(seed), (config.num_layers, n, config.d_model))


def hidden_entries(hidden):
    return tuple({"hidden": p} for p in hidden)
