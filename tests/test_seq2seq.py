"""Encoder-decoder prefix tuning (BART, XSUM format) end to end: data, three-sided prefix,
training that leaves the base bitwise unchanged, cached decoding against recomputation,
and the command line writing ROUGE for dev and test."""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import common, xsum_tiny
from prefix_jax import convert, decode, train
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import pipeline, sources, xsum
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.data.records import DataError
from prefix_jax.models import bart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EOS = 256


def write_xsum(directory, sizes=(("train", 48), ("val", 8), ("test", 6))):
    """Li & Liang's layout; each summary names the document's animal and number."""
    animals = ["cat", "dog", "owl", "fox"]
    for name, size in sizes:
        docs = [f"Today the {animals[i % 4]} number {i} sat on the mat and looked at the sea." for i in range(size)]
        sums = [f"The {animals[i % 4]} sat." for i in range(size)]
        (directory / f"{name}.source").write_text("\n".join(docs) + "\n")
        (directory / f"{name}.target").write_text("\n".join(sums) + "\n")
    return str(directory)


def test_reader_pairs_lines_and_names_file_and_line_of_bad_input(tmp_path):
    directory = write_xsum(tmp_path)
    examples = xsum.read(directory, "dev")
    assert len(examples) == 8 and examples[1].references == ("The dog sat.",)
    assert examples[1].source.startswith("Today the dog number 1")
    with open(tmp_path / "test.target", "a") as f:
        f.write("An extra summary.\n")
    with pytest.raises(DataError, match=r"test\.target:7: has a line here but .*test\.source ended after 6 lines"):
        xsum.read(directory, "test")
    (tmp_path / "train.source").write_text("doc one\n\ndoc three\n")
    (tmp_path / "train.target").write_text("a\nb\nc\n")
    with pytest.raises(DataError, match=r"train\.source:2: empty line"):
        xsum.read(directory, "train")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        xsum.read(str(tmp_path / "missing"), "train")


def test_encoder_decoder_encoding_and_batches():
    tok = tokenizer_lib.byte_level()
    [(source, decoder, labels)] = pipeline.encode_seq2seq(
        [sources.Example("abcdef", ("xyz",))], tok, max_source_len=4, max_target_len=8)
    assert source.tolist() == [97, 98, 99, EOS]  # Cut, EOS kept.
    assert labels.tolist() == [120, 121, 122, EOS] and decoder.tolist() == [EOS, 120, 121, 122]
    assert pipeline.decoder_prompt(tok) == [EOS]
    batch = pipeline.seq2seq_padder(8)([(source, decoder, labels)], 2, 4)
    assert batch["decoder_attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0, 0, 0], [0] * 8]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0] * 4]


def test_model_fields_must_fit_the_family():
    config = common.base_config()
    config.model.family = "bart"
    with pytest.raises(ValueError, match=r"fields \['adapter_dim', 'dropout_rate', 'num_layers', 'remat', 'tie_embeddings'\] that a bart"):
        train.model_config(config)
    config.model = common.bart_model()
    config.train.mode = "top_k"
    with pytest.raises(ValueError, match="mode 'prefix' or 'full'"):
        train.create(config)


def tiny_config(directory):
    config = xsum_tiny.get_config(directory)
    config.train.update(lr=2e-2, num_steps=40)
    return config


def scaled(state):
    """Weights x3: the 0.02 initialisers give near-uniform attention, which a wrong mask or
    cache slot would pass unnoticed."""
    return state.replace(params={**state.params, "base": jax.tree.map(lambda x: 3 * x, state.params["base"])})


def test_prefix_training_lowers_dev_loss_and_changes_only_the_prefix(tmp_path):
    config = tiny_config(write_xsum(tmp_path))
    exp, state = train.create(config)
    assert set(state.params["prefix"]) == set(bart.SIDES)
    tok = tokenizer_lib.byte_level()
    encode = lambda split: pipeline.encode_seq2seq(sources.read(config.data, split), tok, 128, 32)
    make = lambda split, shuffle: pipeline.Batches(encode(split), 4, 32, seed=0, shuffle=shuffle,
                                                  pad=pipeline.seq2seq_padder(32))
    train_batches, dev = make("train", True), make("dev", False)
    train_fn, eval_fn = train.make_step_fns(exp)
    before = jax.tree.map(np.array, state.params)
    dev_before = train.evaluate_loss(eval_fn, state.params, map(lambda b: jax.tree.map(jnp.asarray, b), dev))
    batches = train_batches.from_step(0)
    for _ in range(config.train.num_steps):
        state, metrics = train_fn(state, jax.tree.map(jnp.asarray, next(batches)), jax.random.key(0))
    dev_after = train.evaluate_loss(eval_fn, state.params, map(lambda b: jax.tree.map(jnp.asarray, b), dev))
    print(f"dev loss {dev_before:.3f} -> {dev_after:.3f}")
    assert dev_after < dev_before - 0.1
    for a, b in zip(jax.tree.leaves(before["base"]), jax.tree.leaves(state.params["base"])):
        np.testing.assert_array_equal(a, np.asarray(b))
    for side in bart.SIDES:  # Every side's MLP trained.
        assert not np.array_equal(before["prefix"][side]["out_kernel"], state.params["prefix"][side]["out_kernel"])
    counts = prefix_lib.count_params(exp.spec, exp.model.config.prefix_geometry, state.params["base"])
    assert counts["served"] == (2 + 2 * 2) * 2 * 5 * 32  # (enc + 2 * dec layers) * 2 * n * d
    assert counts["trained"] == 3 * (5 * 32 + 32 * 32 + 32 + 32 * 2 * 2 * 32 + 2 * 2 * 32)


@functools.partial(jax.jit, static_argnames=("model", "steps"))
def recompute_greedy(base, prefix, tokens, mask, prompt, *, model, steps):
    """The oracle: rerun the whole model on the growing decoder input at every step."""
    rows = tokens.shape[0]
    buffer = jnp.concatenate([jnp.broadcast_to(prompt, (rows, len(prompt))), jnp.zeros((rows, steps), jnp.int32)], 1)
    for t in range(steps):
        logits = model.apply({"params": base}, tokens, buffer[:, : len(prompt) + t], prefix=prefix,
                             attention_mask=mask)
        buffer = buffer.at[:, len(prompt) + t].set(jnp.argmax(logits[:, -1], axis=-1))
    return buffer[:, len(prompt):]


def test_cached_decoding_matches_recomputation_and_beam_one_is_greedy(tmp_path):
    config = tiny_config(write_xsum(tmp_path))
    exp, state = train.create(config)
    state = scaled(state)
    served = decode.serve(exp.spec, jax.tree.map(lambda x: 3 * x, state.params["prefix"]), exp.model, state.params["base"])
    prefix = served["prefix"]
    tokens = jax.random.randint(jax.random.key(3), (3, 12), 0, 256)
    mask = jnp.ones((3, 12), jnp.int32).at[1, 8:].set(0).at[2, 5:].set(0)
    prompt, steps, eos = [EOS, 65], 10, 9999  # An EOS never produced: all steps compared.
    expected = recompute_greedy(state.params["base"], prefix, tokens, mask, jnp.array(prompt),
                                model=exp.model, steps=steps)
    run = lambda **kw: decode.generate(
        state.params["base"], served, tokens, mask, model=exp.model, eos_id=eos, start_tokens=prompt,
        options=decode.Options(max_new_tokens=steps, **kw))
    greedy = run()
    np.testing.assert_array_equal(greedy, expected)
    assert len({tuple(row) for row in np.asarray(greedy).tolist()}) > 1  # The source reaches the decoder.
    np.testing.assert_array_equal(run(strategy="beam", beam_size=1), greedy)
    beam = run(strategy="beam", beam_size=3, length_penalty=0.8, no_repeat_ngram_size=2)
    assert beam.shape == (3, steps)


def test_cache_logits_equal_full_forward_token_by_token(tmp_path):
    """Teacher-forced: a random decoder sequence fed one token at a time through the cache
    gives the full forward's logits at every position (prefix on all three sides)."""
    config = tiny_config(write_xsum(tmp_path))
    exp, state = train.create(config)
    base = scaled(state).params["base"]
    served = decode.serve(exp.spec, jax.tree.map(lambda x: 3 * x, state.params["prefix"]), exp.model, state.params["base"])
    prefix = served["prefix"]
    model = exp.model
    tokens = jax.random.randint(jax.random.key(4), (2, 9), 0, 256)
    mask = jnp.ones((2, 9), jnp.int32).at[1, 6:].set(0)
    decoder = jax.random.randint(jax.random.key(5), (2, 7), 0, 256)
    full = model.apply({"params": base}, tokens, decoder, prefix=prefix, attention_mask=mask)
    memory = model.apply({"params": base}, tokens, mask, prefix, method=bart.Bart.encode)
    cache = model.apply({"params": base}, memory, 7, method=bart.Bart.init_cache)
    logits, cache = model.apply({"params": base}, decoder[:, :3], cache, 0, mask, prefix=prefix,
                                method=bart.Bart.decode_step)  # A 3-token prefill, then one at a time.
    steps = [logits]
    for t in range(3, 7):
        logits, cache = model.apply({"params": base}, decoder[:, t : t + 1], cache, t, mask, prefix=prefix,
                                    method=bart.Bart.decode_step)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-4)
    assert float(jnp.abs(full).max()) > 1.0


def test_main_trains_and_decodes_dev_and_test_with_rouge(tmp_path):
    (tmp_path / "data_dir").mkdir()
    directory = write_xsum(tmp_path / "data_dir")
    workdir = tmp_path / "work"
    main = lambda *args: subprocess.run(
        [sys.executable, "-m", "prefix_jax.main", args[0], f"--config=experiments/xsum_tiny.py:{directory}",
         f"--workdir={workdir}", "--config.train.num_steps=20", "--config.train.eval_every=10", *args[1:]],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=900,
    )
    main("train", "--config.decode.after_training=True")
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["dev_loss_after"] < summary["dev_loss_before"]
    assert summary["trainable_params"] == summary["prefix_params"]["trained"]
    main("decode", "--config.decode.split=test", "--config.decode.strategy=beam", "--config.decode.beam_size=2")
    for split, inputs in (("dev", 8), ("test", 6)):
        result = json.loads((workdir / "generations" / f"{split}_metrics.json").read_text())
        assert result["layout"] == "xsum" and result["inputs"] == inputs
        assert set(result["scores"]) == {"rouge1", "rouge2", "rougeL"}
        assert "R-1" in (workdir / "generations" / f"{split}_metrics.md").read_text()
        assert len((workdir / "generations" / f"{split}.txt").read_text().splitlines()) == inputs


def test_base_weights_loads_a_hugging_face_bart_directory(tmp_path):
    """config.base_weights reads a Hugging Face BART directory through convert.py (parity extra)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import hf_tiny

    hf_tiny.bart().save_pretrained(tmp_path)
    config = common.base_config()
    config.model = common.bart_model(vocab_size=97, d_model=32, d_ff=64, max_len=64)
    config.prefix.update(kind="kv", length=3, reparam_dim=8)
    config.base_weights = str(tmp_path)
    _, state = train.create(config)
    _, expected = convert.load(str(tmp_path))
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(state.params["base"])):
        np.testing.assert_array_equal(a, np.asarray(b))
    config.model.d_ff = 128
    with pytest.raises(convert.CheckpointFormatError, match="d_ff: checkpoint 64, config 128"):
        train.create(config)
