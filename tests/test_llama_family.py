"""The Llama family end to end on a random tiny GQA model: every prefix kind under RoPE,
cached decoding against the recomputation oracle, prefix banks, init from words, every
training mode, and the train / eval / decode / export / import commands."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import tiny_llama
from prefix_jax import decode, interop, loop, peft_adapter, prefix_file, train, trainable
from prefix_jax import prefix as prefix_lib
from prefix_jax.models import families, llama

EOS = 36
CONFIG = llama.LlamaConfig(vocab_size=37, num_layers=3, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64,
                           max_len=32, head_dim=8, rope_theta=100.0)
MODEL = llama.Llama(CONFIG)
GEOMETRY = CONFIG.prefix_geometry
SOURCES = [[3, 9, 4, 1, 5], [7, 2], [11, 30, 8]]


@pytest.fixture(scope="module")
def base():
    # Scaled up so that attention is far from uniform and a prefix moves the logits by O(1).
    return jax.tree.map(lambda x: 3.0 * x, families.init_params(MODEL, jax.random.key(0)))


def _logits(base, tokens, spec, prefix, **kwargs):
    inputs = prefix_lib.model_inputs(spec, prefix, GEOMETRY, loss_mask=kwargs.pop("loss_mask", None))
    return np.asarray(MODEL.apply({"params": base}, tokens, **inputs, **kwargs))


def test_literal_efficient_and_kv_prefix_agree_under_rope(base):
    """H^l = [P^l; h^l] with prefix rows at position 0 (RoPE's identity) is the unrotated K/V prefix."""
    tokens = jax.random.randint(jax.random.key(1), (2, 7), 0, CONFIG.vocab_size)
    hidden = {"hidden": jax.random.normal(jax.random.key(2), (CONFIG.num_layers, 4, CONFIG.d_model))}
    spec = prefix_lib.PrefixSpec(kind="hidden", length=4)
    literal = _logits(base, tokens, dataclasses.replace(spec, literal=True), hidden)
    efficient = _logits(base, tokens, spec, hidden)
    kv_spec, kv = prefix_lib.hidden_to_kv(spec, hidden, MODEL, base)
    assert kv["key"].shape == (3, 4, 2, 8)  # [layers, n, kv_heads, head_dim]
    np.testing.assert_allclose(efficient, literal, atol=1e-5)
    np.testing.assert_allclose(_logits(base, tokens, kv_spec, kv), literal, atol=1e-5)
    assert np.abs(literal - _logits(base, tokens, None, {})).max() > 0.1
    empty = prefix_lib.init_random(prefix_lib.PrefixSpec(kind="kv", length=0), GEOMETRY, jax.random.key(3))
    np.testing.assert_array_equal(_logits(base, tokens, kv_spec, empty), _logits(base, tokens, None, {}))


PREFIXES = {
    "none": (None, 1.0),
    "hidden": (prefix_lib.PrefixSpec(kind="hidden", length=3), 1.0),
    "kv_reparam": (prefix_lib.PrefixSpec(kind="kv", length=3, reparam_dim=8), 1.0),
    "prompt": (prefix_lib.PrefixSpec(kind="prompt", length=3), 40.0),
    "infix": (prefix_lib.PrefixSpec(kind="infix", length=3), 40.0),
}


def _task(name, seed=7):
    spec, scale = PREFIXES[name]
    if spec is None:
        return None, {}
    prefix = prefix_lib.init_random(spec, GEOMETRY, jax.random.key(seed))
    return spec, {k: scale * v if k in ("key", "value", "prompt") else v for k, v in prefix.items()}


@pytest.mark.parametrize("name", list(PREFIXES))
def test_cached_decoders_match_the_recomputation_oracle(base, name):
    spec, prefix = _task(name)
    tokens, mask = decode.left_pad([np.array(s) for s in SOURCES])
    want = decode.greedy({"base": base, "prefix": prefix}, tokens, mask, model=MODEL, spec=spec,
                         max_new_tokens=8, eos_id=EOS)
    served = decode.serve(spec, prefix, MODEL, base)
    run = lambda options: decode.generate(base, served, tokens, mask, model=MODEL, options=options, eos_id=EOS)
    greedy = run(decode.Options(max_new_tokens=8))
    np.testing.assert_array_equal(greedy, want)
    np.testing.assert_array_equal(run(decode.Options(strategy="beam", beam_size=1, max_new_tokens=8)), greedy)
    sampled = decode.generate(base, served, tokens, mask, model=MODEL, eos_id=EOS, rng=jax.random.key(0),
                              options=decode.Options(strategy="sample", top_k=1, max_new_tokens=8))
    np.testing.assert_array_equal(sampled, greedy)
    if name != "none":  # The prefix must matter, or the test could not see it ignored.
        plain = decode.generate(base, {}, tokens, mask, model=MODEL, options=decode.Options(max_new_tokens=8),
                                eos_id=EOS)
        assert not np.array_equal(greedy, plain)


def test_prefix_bank_rows_equal_single_task_runs(base):
    """K/V prefixes of two lengths and an infix in one bank: each row decodes as its task alone."""
    tasks = [decode.serve(*_task(name, seed), MODEL, base) for name, seed in (("kv_reparam", 1), ("infix", 2))]
    longer = prefix_lib.PrefixSpec(kind="kv", length=5)
    tasks.append(decode.serve(longer, jax.tree.map(lambda x: 40 * x, prefix_lib.init_random(
        longer, GEOMETRY, jax.random.key(3))), MODEL, base))
    bank = decode.prefix_bank(tasks)
    tokens, mask = decode.left_pad([np.array(s) for s in SOURCES * 2])
    task_ids = np.array([0, 1, 2, 2, 1, 0])
    for options in (decode.Options(max_new_tokens=6), decode.Options(strategy="beam", beam_size=3, max_new_tokens=6)):
        mixed = decode.generate(base, bank, tokens, mask, model=MODEL, options=options, eos_id=EOS, task_ids=task_ids)
        for row, task in enumerate(task_ids):
            alone = decode.generate(base, tasks[task], tokens, mask, model=MODEL, options=options, eos_id=EOS)
            np.testing.assert_array_equal(mixed[row], alone[row])
    assert len({tuple(np.asarray(mixed[row])) for row in (0, 1, 2)}) == 3, "the tasks should differ"


def test_init_from_words_reads_the_frozen_models_activations(base):
    words = [5, 6, 7]
    hidden = prefix_lib.init_from_tokens(prefix_lib.PrefixSpec(kind="hidden", length=3), MODEL, base, words)
    kv = prefix_lib.init_from_tokens(prefix_lib.PrefixSpec(kind="kv", length=3), MODEL, base, words)
    np.testing.assert_array_equal(hidden["hidden"][0], base["token_embed"]["embedding"][np.array(words)])
    _, compiled = prefix_lib.hidden_to_kv(prefix_lib.PrefixSpec(kind="hidden", length=3), hidden, MODEL, base)
    np.testing.assert_allclose(kv["key"], compiled["key"], atol=1e-6)


def _config(**overrides):
    config = tiny_llama.get_config()
    config.data.update(num_train=32, num_dev=8)
    config.train.update(batch_size=4, num_steps=4, eval_every=2, log_every=1)
    config.checkpoint.every = 2
    config.decode.update(max_new_tokens=8, batch_size=4, after_training=False)
    for key, value in overrides.items():
        section, field = key.split(".")
        setattr(getattr(config, section), field, value)
    return config


@pytest.mark.parametrize("mode, overrides", [
    ("prefix", {}),
    ("full", {"prefix.kind": "none"}),
    ("top_k", {"prefix.kind": "none", "train.top_k": 1}),
    ("adapter", {"prefix.kind": "none", "model.adapter_dim": 4}),
])
def test_every_training_mode_changes_only_what_it_trains(mode, overrides):
    config = _config(**{"train.mode": mode, **overrides})
    exp, state = train.create(config)
    before = jax.tree.map(np.asarray, state.params)
    train_fn, _ = train.make_step_fns(exp)
    batch = {"tokens": jnp.tile(jnp.arange(1, 17, dtype=jnp.int32), (4, 1)), "attention_mask": jnp.ones((4, 16), jnp.int32),
             "loss_mask": jnp.ones((4, 16), jnp.float32)}
    state, _ = train_fn(state, batch, jax.random.key(0))
    flat = lambda tree: jax.tree_util.tree_flatten_with_path(tree)[0]
    labels = dict(flat(exp.labels))
    changed = {path for path, leaf in flat(state.params) if not np.array_equal(leaf, dict(flat(before))[path])}
    trainable_paths = {path for path, label in labels.items() if label == trainable.TRAINABLE}
    assert changed and changed <= trainable_paths
    names = {"/".join(str(k.key) for k in path) for path in trainable_paths}
    if mode == "top_k":
        assert all(name.startswith("base/layers_1/") for name in names), names
    if mode == "adapter":
        assert all("/adapter_" in name for name in names), names


def test_train_eval_decode_export_and_import_commands(tmp_path):
    """Trained on packed rows, as the SmolLM2 default is; the import scores dev unpacked."""
    config = _config(**{"data.pack_width": 512})
    workdir = str(tmp_path / "run")
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["steps"] == 4 and summary["prefix_params"]["served"] == 2 * 2 * 5 * 2 * 16
    assert loop.evaluate(config, workdir)["dev_loss"] == pytest.approx(summary["best_dev_loss"], rel=1e-6)
    decoded = loop.decode(config, workdir)
    assert decoded["inputs"] > 0 and set(decoded["metrics"]["all"]) == {"bleu", "meteor", "ter"}
    adapter = str(tmp_path / "adapter")
    interop.export_best(config, workdir, adapter)
    spec, kv = peft_adapter.load(adapter, train.model_config(config))
    assert kv["key"].shape == (2, 5, 2, 16)  # GQA-sized: [layers, n, kv_heads, head_dim]
    imported = dict(config.prefix.to_dict(), kind="kv", length=spec.length, reparam_dim=0)
    config_kv = _config(**{f"prefix.{k}": v for k, v in imported.items()})
    result = interop.import_adapter(config_kv, str(tmp_path / "imported"), adapter)
    assert result["dev_loss"] == pytest.approx(summary["best_dev_loss"], rel=1e-5)


def test_an_infix_exports_to_the_own_format_and_decodes_the_same_after_import(tmp_path):
    """PEFT cannot hold it; prefix_file.py can, folded, and an import reproduces the run's
    generations (EMB-n prompts: the table runner's test, tests/test_baselines.py)."""
    kind = "infix"
    config = _config(**{"prefix.kind": kind, "prefix.reparam_dim": 32, "train.lr": 5e-2})
    workdir, out = str(tmp_path / "run"), str(tmp_path / "exported")
    summary = loop.train_and_evaluate(config, workdir)
    decoded = loop.decode(config, workdir)
    assert interop.export_best(config, workdir, out)["format"] == "prefix_jax"
    assert not os.path.exists(os.path.join(out, peft_adapter.CONFIG))
    plain = _config(**{"prefix.kind": kind, "prefix.reparam_dim": 0, "train.lr": 5e-2})
    result = interop.import_adapter(plain, str(tmp_path / "imported"), out)
    assert result["dev_loss"] == pytest.approx(summary["best_dev_loss"], rel=1e-5)
    again = loop.decode(plain, str(tmp_path / "imported"))
    read = lambda d: open(os.path.join(d["generations"], "dev.txt")).read()
    assert read(again) == read(decoded) and again["metrics"] == decoded["metrics"]
    with pytest.raises(ValueError, match=f"--config.prefix.kind={kind} --config.prefix.length=5 --config.prefix.reparam_dim=0"):
        interop.import_adapter(_config(**{"prefix.kind": kind, "prefix.length": 4, "prefix.reparam_dim": 0}),
                               str(tmp_path / "other"), out)


def test_the_own_format_refuses_another_model_or_a_damaged_file(tmp_path):
    spec = prefix_lib.PrefixSpec(kind="prompt", length=2)
    out = prefix_file.save(str(tmp_path / "p"), spec, prefix_lib.init_random(spec, GEOMETRY, jax.random.key(0)), CONFIG)
    loaded_spec, loaded = prefix_file.load(out, CONFIG)
    assert loaded_spec == spec and loaded["prompt"].shape == (2, CONFIG.d_model)
    with pytest.raises(prefix_file.PrefixFormatError, match=r"made for another model: num_layers=3 \(the model has 4\)"):
        prefix_file.load(out, dataclasses.replace(CONFIG, num_layers=4))
    config_path = os.path.join(out, prefix_file.CONFIG)
    fields = json.load(open(config_path))
    json.dump(dict(fields, length=3), open(config_path, "w"))
    with pytest.raises(prefix_file.PrefixFormatError, match=r"prefix\.safetensors holds .* length 3 needs"):
        prefix_file.load(out, CONFIG)
    os.remove(os.path.join(out, prefix_file.WEIGHTS))
    with pytest.raises(prefix_file.PrefixFormatError, match="prefix.safetensors does not exist"):
        prefix_file.load(out, CONFIG)
