"""Packed rows (several sequences per row, `data.pack_width`) train exactly as padded ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny, tiny_llama
from prefix_jax import loop, train, trainable
from prefix_jax.data import pipeline, synthetic, tokenizer


def test_pack_places_every_sequence_once_within_the_width():
    lengths = list(np.random.default_rng(0).integers(5, 60, size=200))
    rows = pipeline.pack(lengths, 256, seed=3)
    assert sorted(i for row in rows for i in row) == list(range(200))
    assert all(sum(lengths[i] for i in row) <= 256 for row in rows)
    assert sum(lengths) / (256 * len(rows)) > 0.95  # Rows nearly full.
    assert rows == pipeline.pack(lengths, 256, seed=3) != pipeline.pack(lengths, 256, seed=4)
    with pytest.raises(ValueError, match=r"data.pack_width \(50\) is below the longest sequence \(59 tokens\)"):
        pipeline.pack(lengths, 50, seed=0)


def _config(module, kind, **prefix):
    config = module.get_config()
    config.model.update(num_layers=2, max_len=64)
    config.prefix.update(kind=kind, length=3, **prefix)
    config.train.batch_size = 6
    return config


@pytest.mark.parametrize("module,kind,prefix,per", [
    (tiny, "kv", {"reparam_dim": 8}, "token"),
    (tiny, "hidden", {"reparam_dim": 0}, "sequence"),
    (tiny_llama, "kv", {"reparam_dim": 8}, "sequence"),
    (tiny_llama, "hidden", {"reparam_dim": 0}, "token"),
], ids=["gpt2-kv-token", "gpt2-hidden-sequence", "llama-kv-sequence", "llama-hidden-token"])
def test_packed_rows_give_the_padded_loss_and_gradients(module, kind, prefix, per):
    """Six sequences padded one per row, and the same six packed into two or three rows:
    the same loss and prefix gradients (positions restart and attention stays inside each
    sequence; a leak between packed sequences would change both)."""
    config = _config(module, kind, **prefix)
    exp, state = train.create(config)
    state = state.replace(params=jax.tree.map(lambda x: x + 0.3 * jnp.sin(jnp.arange(x.size).reshape(x.shape)),
                                              state.params))  # A prefix that matters.
    sequences = pipeline.encode_pairs(synthetic.copy_examples(6, 0), tokenizer.byte_level(), 64)
    padded = next(iter(pipeline.Batches(sequences, 6, 64, seed=0, shuffle=False)))
    packed = next(iter(pipeline.Batches(sequences, 6, 64, seed=0, shuffle=False, pack_width=64)))
    assert packed["segment_ids"].max() >= 2 and packed["attention_mask"][:, 0].sum() < 6  # Really packed.
    trainable_params, frozen_params = trainable.partition(state.params, exp.labels)
    results = [
        jax.value_and_grad(train.loss_fn, has_aux=True)(
            trainable_params, frozen_params, jax.tree.map(jnp.asarray, batch), None,
            model=exp.model, spec=exp.spec, per=per)
        for batch in (padded, packed)
    ]
    (loss_padded, (_, tokens_padded)), grads_padded = results[0]
    (loss_packed, (_, tokens_packed)), grads_packed = results[1]
    assert float(tokens_packed) == float(tokens_padded) > 0
    np.testing.assert_allclose(loss_packed, loss_padded, rtol=1e-5)
    for g_packed, g_padded in zip(jax.tree.leaves(grads_packed), jax.tree.leaves(grads_padded)):
        np.testing.assert_allclose(g_packed, g_padded, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("change,named", [
    ({"prefix.kind": "prompt"}, "prefix.kind='prompt'"),
    ({"prefix.kind": "infix"}, "prefix.kind='infix'"),
])
def test_packing_refuses_what_its_mask_cannot_express(change, named):
    config = _config(tiny, "kv")
    config.data.pack_width = 64
    for path, value in change.items():
        section, key = path.split(".")
        config[section][key] = value
    with pytest.raises(ValueError, match=rf"data.pack_width=\d+ cannot be used with {named}"):
        loop._check_packing(config)


@pytest.mark.parametrize("module,per", [(tiny, "token"), (tiny, "sequence"), (tiny_llama, "token"),
                                        (tiny_llama, "sequence")],
                         ids=["gpt2-token", "gpt2-sequence", "llama-token", "llama-sequence"])
def test_logits_at_target_positions_only_give_the_full_loss_and_gradients(module, per):
    """A packed batch names its loss positions and the model's head runs on those alone:
    the loss and prefix gradients of full-width logits, from fewer logit rows."""
    config = _config(module, "kv", reparam_dim=8)
    exp, state = train.create(config)
    sequences = pipeline.encode_pairs(synthetic.copy_examples(12, 0), tokenizer.byte_level(), 64)
    targeted = next(iter(pipeline.Batches(sequences, 6, 16, seed=0, shuffle=False, pack_width=64)))
    full = {key: value for key, value in targeted.items() if not key.startswith("target_")}
    slots = targeted["target_positions"].shape[1]
    assert slots % 16 == 0 and slots < 64  # Fewer rows through the head than the width.
    np.testing.assert_array_equal(targeted["target_weights"].sum(axis=1),
                                  (targeted["loss_mask"][:, 1:] * targeted["attention_mask"][:, 1:]).sum(axis=1))
    logits = train.forward(state.params, jax.tree.map(jnp.asarray, targeted), None, model=exp.model, spec=exp.spec,
                           deterministic=True)
    assert logits.shape == (6, slots, config.model.vocab_size)
    trainable_params, frozen_params = trainable.partition(state.params, exp.labels)
    (loss_full, (_, tokens_full)), grads_full, (loss_targeted, (_, tokens_targeted)), grads_targeted = (
        value for batch in (full, targeted)
        for value in jax.value_and_grad(train.loss_fn, has_aux=True)(
            trainable_params, frozen_params, jax.tree.map(jnp.asarray, batch), None,
            model=exp.model, spec=exp.spec, per=per))
    assert float(tokens_targeted) == float(tokens_full) > 0
    np.testing.assert_allclose(loss_targeted, loss_full, rtol=1e-6)
    for g_targeted, g_full in zip(jax.tree.leaves(grads_targeted), jax.tree.leaves(grads_full)):
        np.testing.assert_allclose(g_targeted, g_full, rtol=1e-5, atol=1e-7)


def test_a_packed_row_with_more_targets_than_its_slots_is_refused():
    sequences = pipeline.encode_pairs(synthetic.copy_examples(4, 0), tokenizer.byte_level(), 64)
    rows = [sequences[:2], sequences[2:]]
    with pytest.raises(ValueError, match=r"A packed row has \d+ targets, over its 2 target slots"):
        pipeline.pack_lm(rows, 2, 128, target_slots=2)
