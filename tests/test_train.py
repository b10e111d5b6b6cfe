"""What trains, what stays frozen, and the train/eval steps."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny
from prefix_jax import train, trainable
from prefix_jax.data import pipeline, synthetic, tokenizer
from prefix_jax.models import gpt2, families


def _config(**overrides):
    config = tiny.get_config()
    config.model.update(num_layers=3, num_heads=2, d_model=16, d_ff=32, max_len=64)
    config.prefix.length = 4
    config.train.update(lr=3e-2, warmup_steps=0, num_steps=100, batch_size=8)
    config.data.update(name="copy", num_train=64, num_dev=16)
    for path, value in overrides.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


def _batch(config, seed=0):
    examples = synthetic.copy_examples(config.train.batch_size, seed)
    sequences = pipeline.encode_pairs(examples, tokenizer.byte_level(), config.model.max_len)
    batches = pipeline.Batches(sequences, config.train.batch_size, 64, seed=seed, shuffle=False)
    return jax.tree.map(jnp.asarray, next(iter(batches)))


def _sharp_base(config):
    """Random base weights scaled x3, so that a prefix visibly matters (see conftest)."""
    model = gpt2.GPT2(train.model_config(config))
    return jax.tree.map(lambda x: 3.0 * x, families.init_params(model, jax.random.key(0)))


def _run(config, steps=10):
    exp, state = train.create(config, base_params=_sharp_base(config))
    before = jax.tree.map(np.array, state.params)
    train_fn, eval_fn = train.make_step_fns(exp)
    batch = _batch(config)
    losses = []
    for _ in range(steps):
        state, metrics = train_fn(state, batch, jax.random.key(0))
        losses.append(float(metrics["loss"]))
    return exp, state, before, losses


def _leaves_with_labels(before, after, labels):
    flat = lambda tree: jax.tree_util.tree_leaves_with_path(tree)
    return zip(flat(before), jax.tree.leaves(after), jax.tree.leaves(labels))


@pytest.mark.parametrize(
    "overrides",
    [
        {"prefix.kind": "hidden"},
        {"prefix.kind": "hidden", "prefix.literal": True},
        {"prefix.kind": "kv"},
        {"prefix.kind": "kv", "prefix.reparam_dim": 16},
        {"prefix.kind": "prompt"},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_prefix_training_changes_only_the_prefix(overrides):
    exp, state, before, losses = _run(_config(**overrides))
    assert losses[-1] < losses[0] - 0.05
    for (path, old), new, label in _leaves_with_labels(before, state.params, exp.labels):
        if path[0].key == "base":
            assert label == trainable.FROZEN
            np.testing.assert_array_equal(new, old, err_msg=str(path))
        else:
            assert label == trainable.TRAINABLE
            assert not np.array_equal(new, old), f"{path} did not train"
    # Adam's moments exist for the prefix only: as many numbers as it has, twice.
    prefix_size = sum(x.size for x in jax.tree.leaves(state.params["prefix"]))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sum(x.size for x in moments) == 2 * prefix_size


def test_top_k_trains_only_the_top_layers():
    config = _config(**{"prefix.kind": "none", "train.mode": "top_k", "train.top_k": 2})
    exp, state, before, losses = _run(config)
    assert losses[-1] < losses[0]
    for (path, old), new, label in _leaves_with_labels(before, state.params, exp.labels):
        top = path[1].key in ("layers_1", "layers_2")
        assert label == (trainable.TRAINABLE if top else trainable.FROZEN)
        if top:
            assert not np.array_equal(new, old), f"{path} did not train"
        else:
            np.testing.assert_array_equal(new, old, err_msg=str(path))


def test_full_fine_tuning_trains_everything():
    config = _config(**{"prefix.kind": "none", "train.mode": "full"})
    exp, state, before, losses = _run(config)
    assert losses[-1] < losses[0] - 0.05
    for (path, old), new, label in _leaves_with_labels(before, state.params, exp.labels):
        assert label == trainable.TRAINABLE
        assert not np.array_equal(new, old), f"{path} did not train"


def _count_dot_generals(jaxpr) -> int:
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name == "dot_general"
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count_dot_generals(sub)
    return count


def test_no_base_weight_gradients_in_prefix_mode():
    """Prefix mode must not compute dL/dW for frozen weights: its train step does
    exactly the forward and input-gradient matmuls, one weight-gradient matmul
    fewer per base matmul than full fine-tuning."""
    counts = {}
    for mode, kind in (("prefix", "kv"), ("full", "none")):
        config = _config(**{"prefix.kind": kind, "train.mode": mode})
        exp, state = train.create(config)
        step = lambda s, b: train.train_step(
            s, b, jax.random.key(0), model=exp.model, spec=exp.spec, tx=exp.tx, labels=exp.labels
        )
        counts[mode] = _count_dot_generals(jax.make_jaxpr(step)(state, _batch(config)).jaxpr)
    # Forward: per layer q, k, v, out, fc, proj and 2 attention einsums (scores, values),
    # 2 more with a prefix (its scores and values, read grouped); plus the tied head.
    forward = 8 * 3 + 1
    # Prefix backward: input gradients only. The head and layers 1-2 pass gradients
    # through all 14 input-gradient matmuls; in layer 0 the input rows' q, k, v do not
    # depend on the prefix, so only out, fc, proj, the prefix keys' scores, the weights of
    # the values and both operands of the prefix values remain (7).
    assert counts["prefix"] == forward + 2 * 3 + 1 + 14 * 2 + 7, counts
    # Full fine-tuning adds a weight gradient per projection (6 per layer) and for the
    # tied embedding, and the 4 layer-0 input gradients prefix mode skips.
    assert counts["full"] == forward + 2 + 16 * 3, counts


def test_learning_rate_warms_up_then_decays_linearly():
    schedule = train.learning_rate_schedule(1.0, warmup_steps=4, num_steps=12)
    got = [float(schedule(step)) for step in (0, 2, 4, 8, 12)]
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_loss_counts_only_target_tokens():
    logits = jax.random.normal(jax.random.key(0), (1, 5, 7))
    batch = {
        "tokens": jnp.array([[3, 4, 1, 5, 2]]),
        "attention_mask": jnp.array([[1, 1, 1, 1, 0]]),
        "loss_mask": jnp.array([[0, 0, 0, 1, 1]], jnp.float32),
    }
    loss_sum, count = train.token_nll(logits, batch)
    # Only token 5 (predicted at position 2) counts: token 2 is padding.
    want = -jax.nn.log_softmax(logits[0, 2])[5]
    assert float(count) == 1.0
    np.testing.assert_allclose(loss_sum, want, rtol=1e-6)


def test_sequence_loss_is_the_token_loss_scaled_by_targets_per_sequence():
    """Li & Liang's objective (NLL summed per sequence, mean over sequences) vs per-token mean."""
    config = _config()
    exp, state = train.create(config, base_params=_sharp_base(config))
    batch = _batch(config)
    batch["attention_mask"] = batch["attention_mask"].at[-1].set(0)  # A padding row has no targets.
    trainable_params, frozen_params = trainable.partition(state.params, exp.labels)
    grads = {}
    for per in train.LOSS_PER:
        grad_fn = jax.grad(train.loss_fn, has_aux=True)
        grads[per], (token_loss, weight) = grad_fn(
            trainable_params, frozen_params, batch, None, model=exp.model, spec=exp.spec, per=per
        )
        assert float(token_loss) > 0  # The logged loss is the token mean either way.
    rows = config.train.batch_size - 1
    scale = float(weight) / rows
    assert scale > 2  # Several target tokens per sequence: the two objectives really differ.
    for g_seq, g_tok in zip(jax.tree.leaves(grads["sequence"]), jax.tree.leaves(grads["token"])):
        np.testing.assert_allclose(g_seq, scale * g_tok, rtol=1e-4, atol=1e-5)  # float32 sums.
    with pytest.raises(ValueError, match="Unknown train.loss_per 'sentence'"):
        train.create(_config(**{"train.loss_per": "sentence"}))


def test_eval_step_aggregates_exactly():
    config = _config()
    exp, state = train.create(config)
    _, eval_fn = train.make_step_fns(exp)
    batch = _batch(config)
    whole = train.evaluate_loss(eval_fn, state.params, [batch])
    halves = [jax.tree.map(lambda x: x[:3], batch), jax.tree.map(lambda x: x[3:], batch)]
    np.testing.assert_allclose(train.evaluate_loss(eval_fn, state.params, halves), whole, rtol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.mode": "lora"}, "Unknown training mode"),
        ({"prefix.kind": "none", "train.mode": "prefix"}, "needs a prefix"),
        ({"train.mode": "full"}, "remove the prefix"),
        ({"prefix.kind": "none", "train.mode": "top_k", "train.top_k": 4}, r"top_k must be in \[1, 3\]"),
        ({"prefix.init": "vocab"}, "Unknown prefix.init"),
    ],
)
def test_bad_training_setups_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.create(_config(**overrides))


def test_partition_refuses_unlabelled_leaves():
    labels = {"base": {"w": trainable.FROZEN}}
    with pytest.raises(ValueError, match="unlabelled"):
        trainable.partition({"base": {"w": 1, "v": 2}}, labels)


def test_model_dtype_is_the_activation_dtype_and_checked():
    assert train.model_config(_config()).dtype is jnp.float32  # As GPT2Config's default: same fingerprint.
    assert train.model_config(_config(**{"model.dtype": "bfloat16"})).dtype is jnp.bfloat16
    with pytest.raises(ValueError, match="Unknown model.dtype 'float64'"):
        train.model_config(_config(**{"model.dtype": "float64"}))
