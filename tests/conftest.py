"""Shared tiny model fixtures (float32, 3 layers so 'every layer' means something)."""

import os
import shutil
import tempfile

import jax
import pytest

from prefix_jax.models import gpt2, families

jax.config.update("jax_default_matmul_precision", "highest")

# One persistent compilation cache for the whole run, shared by the xdist workers and every
# process a test starts (they inherit the environment): tests build fresh jitted functions for
# the same tiny programs again and again, and XLA's compiling dominates them. Fresh each run
# (the process that makes it removes it), so nothing carries over between runs.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="prefix_jax_tests_xla_cache_")
os.environ.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

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
