"""Sharded training on 8 fake CPU devices (run through tests/test_sharding.py)."""

import functools

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from experiments import common, tiny
from prefix_jax import loop, sharding, train, trainable
from prefix_jax.data import pipeline, synthetic, tokenizer

assert jax.device_count() == 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"

MESHES = {
    "1x1": dict(data=1, fsdp=1, tensor=1),
    "data8": dict(data=8, fsdp=1, tensor=1),
    "data2_tensor4": dict(data=2, fsdp=1, tensor=4),
    "fsdp8": dict(data=1, fsdp=8, tensor=1),
    "fsdp2_tensor4": dict(data=1, fsdp=2, tensor=4),
}


def _config(family="gpt2", **overrides):
    config = tiny.get_config()
    # Every sharded dimension divisible by 8: vocab 264 >= the byte tokenizer's 257.
    config.model.update(vocab_size=264, num_layers=2, num_heads=8, d_model=32, d_ff=64, max_len=64)
    if family == "llama":  # Grouped-query: 4 key/value heads, still divisible by tensor=4.
        config.model = common.llama_model(vocab_size=264, num_heads=8, num_kv_heads=4, head_dim=8, d_model=32,
                                          d_ff=64, max_len=64)
    config.train.update(batch_size=8, lr=3e-2, warmup_steps=0, num_steps=4, log_every=1, eval_every=2)
    config.data.update(name="copy", num_train=64, num_dev=16)
    config.checkpoint.update(every=2, async_save=False)
    for path, value in overrides.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


def _mesh(name):
    sizes = MESHES[name]
    devices = jax.devices()[: sizes["data"] * sizes["fsdp"] * sizes["tensor"]]
    return sharding.make_mesh(sizes, devices)


def _batch():
    examples = synthetic.copy_examples(8, seed=0)
    sequences = pipeline.encode_pairs(examples, tokenizer.byte_level(), 64)
    return next(iter(pipeline.Batches(sequences, 8, 64, seed=0, shuffle=False)))


def _train(mesh_name, mode="prefix", kind="kv", steps=3, family="gpt2"):
    config = _config(family, **{"train.mode": mode, "prefix.kind": kind})
    exp, state = train.create(config, mesh=_mesh(mesh_name))
    train_fn, _ = train.make_step_fns(exp)
    batch = sharding.global_batch(_batch(), sharding.batch_sharding(exp.mesh))
    history = []
    for _ in range(steps):
        state, metrics = train_fn(state, batch, jax.random.key(0))
        history.append((float(metrics["loss"]), float(metrics["grad_norm"])))
    return exp, state, history


SHARDED = [(mesh, *setup) for mesh in MESHES if mesh != "1x1"
           for setup in (("prefix", "kv", "gpt2"), ("prefix", "hidden", "gpt2"), ("full", "none", "gpt2"))]
# Llama (grouped-query heads over the tensor axis) on the meshes that split heads.
SHARDED += [(mesh, "prefix", kind, "llama") for mesh in ("data2_tensor4", "fsdp2_tensor4") for kind in ("kv", "hidden")]


@functools.cache
def _one_device(mode, kind, family):
    """The single-device reference, trained once for all the meshes it is compared with."""
    return _train("1x1", mode, kind, family=family)


@pytest.mark.parametrize("mesh_name, mode, kind, family", SHARDED)
def test_sharded_steps_match_one_device(mesh_name, mode, kind, family):
    exp, reference, ref_history = _one_device(mode, kind, family)
    _, state, history = _train(mesh_name, mode, kind, family=family)
    np.testing.assert_allclose(history, ref_history, rtol=1e-5)
    trained, _ = trainable.partition(state.params, exp.labels)
    ref_trained, _ = trainable.partition(reference.params, exp.labels)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(trained), jax.tree.leaves(ref_trained)):
        if "['key']['bias']" in jax.tree_util.keystr(path):
            # dL/d(key bias) is exactly 0 (softmax ignores a shift shared by all keys), so
            # its computed gradient is rounding noise that Adam scales up to ~lr: no
            # two reduction orders agree on it.
            continue
        # Adam normalises each gradient, so reduction-order noise in a small one moves its weight
        # by a few 1e-5 after 3 steps at lr 3e-2 (0.1% of one step); anything real is far larger.
        np.testing.assert_allclose(got, want, atol=5e-5, err_msg=jax.tree_util.keystr(path))


def test_shardings_are_what_the_rules_say():
    exp, state, _ = _train("fsdp2_tensor4", mode="full", kind="none", steps=1)
    base = state.params["base"]["layers_0"]
    assert base["mlp"]["fc"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert base["mlp"]["fc"]["kernel"].addressable_shards[0].data.shape == (32 // 2, 64 // 4)
    assert base["attn"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert base["attn"]["out"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
    assert state.params["base"]["token_embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
    # Adam's moments follow their parameters.
    adam = state.opt_state.inner_states["trainable"].inner_state[1][0]
    assert adam.mu["base"]["layers_0"]["mlp"]["fc"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert state.step.sharding.spec == P()


def test_prefix_and_its_optimizer_state_are_replicated():
    _, state, _ = _train("fsdp2_tensor4", kind="kv", steps=1)
    assert state.params["prefix"]["key"].sharding.is_fully_replicated
    adam = state.opt_state.inner_states["trainable"].inner_state[1][0]
    assert adam.mu["prefix"]["key"].sharding.is_fully_replicated
    assert state.params["base"]["layers_1"]["mlp"]["proj"]["kernel"].sharding.spec == P("tensor", "fsdp")


def test_checkpoint_saved_on_one_mesh_restores_on_another(tmp_path):
    saving = _config(**{"mesh.data": 8})
    summary = loop.train_and_evaluate(saving, str(tmp_path))
    restoring = _config(**{"mesh.data": 1, "mesh.fsdp": 2, "mesh.tensor": 4})
    runs = [loop.setup(config, str(tmp_path)) for config in (saving, restoring)]
    restored = []
    for run in runs:
        target, _ = trainable.partition(run.state.params, run.exp.labels)
        params, _ = run.checkpointer.restore_best(target, run.fingerprint)
        run.checkpointer.close()
        restored.append(params)
    assert restored[1]["prefix"]["hidden"].sharding.mesh.shape["tensor"] == 4
    for a, b in zip(jax.tree.leaves(restored[0]), jax.tree.leaves(restored[1])):
        np.testing.assert_array_equal(a, b)
    result = loop.evaluate(restoring, str(tmp_path))
    assert result["dev_loss"] == pytest.approx(summary["best_dev_loss"], rel=1e-5)


def test_batch_size_must_fit_the_mesh(tmp_path):
    with pytest.raises(ValueError, match=r"Batch size \(4\) must be divisible by the data x fsdp mesh size \(8\)"):
        loop.train_and_evaluate(_config(**{"train.batch_size": 4}), str(tmp_path))
