"""Activation checkpointing (`model.remat`) changes memory and time, never the numbers:
the same loss and gradients for every prefix kind, on both decoder-only families."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny, tiny_llama
from prefix_jax import train, trainable
from prefix_jax.data import pipeline, synthetic, tokenizer
from prefix_jax.models import decoder

KINDS = {  # the kind under test -> its prefix section
    "hidden": dict(kind="hidden", reparam_dim=0),
    "hidden-literal": dict(kind="hidden", literal=True, reparam_dim=0),
    "kv-reparam": dict(kind="kv", reparam_dim=8),
    "prompt": dict(kind="prompt", reparam_dim=0),
    "infix": dict(kind="infix", reparam_dim=8),
}


def _loss_and_grads(module, prefix: dict, remat: str, dropout: bool):
    config = module.get_config()
    config.model.update(num_layers=2, max_len=64, remat=remat)
    if dropout:
        config.model.dropout_rate = 0.1
    config.prefix.update(length=3, **prefix)
    exp, state = train.create(config)
    params = jax.tree.map(lambda x: x + 0.3 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), state.params)
    sequences = pipeline.encode_pairs(synthetic.copy_examples(4, 0), tokenizer.byte_level(), 64)
    batch = next(iter(pipeline.Batches(sequences, 4, 64, seed=0, shuffle=False)))
    trained, frozen = trainable.partition(params, exp.labels)
    loss = jax.jit(jax.value_and_grad(
        lambda t: train.loss_fn(t, frozen, batch, jax.random.key(3), model=exp.model, spec=exp.spec)[0]))
    return loss(trained)


@pytest.mark.parametrize("module", [tiny, tiny_llama], ids=["gpt2", "llama"])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_remat_gives_the_same_loss_and_gradients(module, kind):
    loss, grads = _loss_and_grads(module, KINDS[kind], "none", dropout=False)
    for policy in ("full", "dots"):
        remat_loss, remat_grads = _loss_and_grads(module, KINDS[kind], policy, dropout=False)
        np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())  # Recomputation reorders sums.
        assert float(jnp.abs(jax.tree.leaves(grads)[0]).max()) > 0


def test_remat_replays_the_same_dropout_masks():
    """Recomputation must draw the forward's dropout masks again, not new ones."""
    loss, grads = _loss_and_grads(tiny, KINDS["kv-reparam"], "none", dropout=True)
    remat_loss, remat_grads = _loss_and_grads(tiny, KINDS["kv-reparam"], "full", dropout=True)
    np.testing.assert_allclose(remat_loss, loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


@pytest.mark.parametrize("remat, wrapped", [("none", 0), ("full", 3), ("dots", 3)])
def test_remat_wraps_every_layer_once(remat, wrapped):
    """Each of the 3 layers is one rematerialised call in the gradient's program (equal
    numbers alone would also hold if remat were silently ignored)."""
    config = tiny.get_config()
    config.model.update(num_layers=3, max_len=32, remat=remat)
    exp, state = train.create(config)
    batch = {"tokens": jnp.zeros((2, 32), jnp.int32), "attention_mask": jnp.ones((2, 32), jnp.int32),
             "loss_mask": jnp.ones((2, 32), jnp.float32)}
    trained, frozen = trainable.partition(state.params, exp.labels)
    grad = jax.grad(lambda t: train.loss_fn(t, frozen, batch, jax.random.key(0), model=exp.model, spec=exp.spec)[0])
    assert str(jax.make_jaxpr(grad)(trained)).count("remat2[") == wrapped


def test_unknown_remat_policy_is_refused():
    config = tiny.get_config()
    config.model.remat = "some"
    with pytest.raises(ValueError, match="Unknown model.remat 'some'; expected one of"):
        train.model_config(config)
    assert sorted(decoder.REMAT_POLICIES) == ["dots", "full", "none"]


@pytest.mark.parametrize("given, expected", [
    ("", "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
    ("--xla_force_host_platform_device_count=2", "--xla_force_host_platform_device_count=2 "
                                                 "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
    ("--xla_cpu_enable_concurrency_optimized_scheduler=true", "--xla_cpu_enable_concurrency_optimized_scheduler=true"),
])
def test_import_selects_the_memory_minimising_cpu_schedule_unless_told(given, expected):
    """Remat saves memory on CPU only under that schedule (tests/test_benchmarks.py::test_remat_schema
    measures it); a user's own setting of the flag is kept."""
    env = dict(os.environ, XLA_FLAGS=given)
    out = subprocess.run([sys.executable, "-c", "import os, prefix_jax; print(os.environ['XLA_FLAGS'])"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == expected
