"""Li & Liang's baselines in the trainable-mode machinery: adapters, FT-top2, EMB-n, infix."""

import dataclasses
import math
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from experiments import table, webnlg_small_row, webnlg_small_table, webnlg_smollm2_row, webnlg_smollm2_table
from prefix_jax import decode, peft_adapter, train, trainable
from prefix_jax.data import sources
from prefix_jax import prefix as prefix_lib
from prefix_jax.models import gpt2, families, layers, adapters
from test_train import _batch, _config, _leaves_with_labels, _sharp_base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ADAPTER_DIM = 4


def _keys(path) -> tuple:
    return tuple(k.key for k in path)


@pytest.mark.parametrize(
    "overrides, trains",
    [
        (
            {"prefix.kind": "none", "train.mode": "adapter", "model.adapter_dim": ADAPTER_DIM},
            lambda keys: len(keys) > 2 and keys[2] in adapters.NAMES,
        ),
        ({"prefix.kind": "none", "train.mode": "top_k", "train.top_k": 2}, lambda keys: keys[1] in ("layers_1", "layers_2")),
        ({"prefix.kind": "prompt", "prefix.length": 1}, lambda keys: keys[0] == "prefix"),  # EMB-1
        ({"prefix.kind": "infix"}, lambda keys: keys[0] == "prefix"),
        ({"prefix.kind": "infix", "prefix.reparam_dim": 16}, lambda keys: keys[0] == "prefix"),
    ],
    ids=["adapter", "ft-top2", "emb-1", "infix", "infix-reparam"],
)
def test_only_the_intended_leaves_train(overrides, trains):
    """Two steps (an adapter's down-projection gets no gradient while its up-projection is 0)."""
    config = _config(**overrides)
    exp, state = train.create(config, base_params=_sharp_base(config))
    before = jax.tree.map(np.array, state.params)
    train_fn, _ = train.make_step_fns(exp)
    for _ in range(2):
        state, _ = train_fn(state, _batch(config), jax.random.key(0))
    for (path, old), new, label in _leaves_with_labels(before, state.params, exp.labels):
        if trains(_keys(path)):
            assert label == trainable.TRAINABLE, path
            assert not np.array_equal(new, old), f"{path} did not train"
        else:
            assert label == trainable.FROZEN, path
            np.testing.assert_array_equal(new, old, err_msg=str(path))


def _adapter_model(config):
    return gpt2.GPT2(dataclasses.replace(config, adapter_dim=ADAPTER_DIM))


def test_untrained_adapters_leave_the_base_model_exactly(config, model, base_params, tokens):
    with_adapters = adapters.add(_adapter_model(config).config, base_params, jax.random.key(5))
    assert adapters.split(with_adapters)[0] == base_params  # The base weights are the same objects.
    np.testing.assert_array_equal(
        _adapter_model(config).apply({"params": with_adapters}, tokens),
        model.apply({"params": base_params}, tokens),
    )


def test_trained_adapters_reach_the_decoder(config, base_params, tokens):
    """The cached decoder (prefill) runs the adapters exactly as the training forward does."""
    adapter_model = _adapter_model(config)
    base, trained = adapters.split(adapters.add(adapter_model.config, base_params, jax.random.key(5)))
    leaves, tree = jax.tree.flatten(trained)  # As if trained: every weight off its initial value.
    keys = jax.random.split(jax.random.key(8), len(leaves))
    trained = tree.unflatten([jax.random.normal(key, x.shape) for key, x in zip(keys, leaves)])
    params = {name: {**sub, **trained.get(name, {})} for name, sub in base.items()}
    logits = adapter_model.apply({"params": params}, tokens)
    assert np.abs(logits - gpt2.GPT2(config).apply({"params": base_params}, tokens)).min() > 1e-3
    served = decode.forward(params, {}, tokens, jnp.ones_like(tokens), model=adapter_model)
    np.testing.assert_allclose(served, logits, atol=1e-5)


def test_adapter_sizes_of_the_embedded_model():
    """2 adapters a layer of 2*d*r + r + d numbers: r = 1 and 32 are ~0.1% and ~3% of 4.34 M."""
    from experiments import common

    sizes = {}
    for r in (1, 32):
        config = common.base_config()
        config.model = common.base_lm_model()
        config.model.adapter_dim = r
        model = gpt2.GPT2(train.model_config(config))
        abstract = jax.eval_shape(lambda key: families.init_params(model, key), jax.random.key(0))
        base, added = adapters.split(abstract)
        sizes[r] = (prefix_lib.num_params(added), prefix_lib.num_params(base))
    assert sizes == {1: (6152, 4339200), 32: (133376, 4339200)}
    assert sizes[1][0] == 4 * 2 * (2 * 256 * 1 + 1 + 256)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"prefix.kind": "none", "train.mode": "adapters"}, "Unknown training mode"),
        ({"prefix.kind": "none", "train.mode": "adapter"}, r"needs adapters; set model.adapter_dim > 0"),
        ({"prefix.kind": "none", "train.mode": "full", "model.adapter_dim": 4}, "use mode='adapter' or adapter_dim=0"),
        ({"train.mode": "adapter", "model.adapter_dim": 4}, "remove the prefix"),
        ({"prefix.kind": "none", "train.mode": "adapter", "model.adapter_dim": -1}, "adapter_dim must be >= 0"),
        ({"prefix.kind": "prompt", "prefix.reparam_dim": 8}, r"only applies to kinds \('kv', 'infix'\)"),
    ],
)
def test_bad_baseline_setups_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        train.create(_config(**overrides))


# ---------------------------------------------------------------------------------------
# Infix.


def test_rows_after_the_source_start_at_its_closing_token():
    loss_mask = jnp.array([[0, 0, 0, 1, 1, 0], [0, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0]], jnp.float32)
    np.testing.assert_array_equal(
        prefix_lib.after_source(loss_mask),
        [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]],
    )


def _layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p["scale"] + p["bias"]


def _literal_infix_logits(config, params, tokens, start, infix_key, infix_value):
    """[x; INFIX; y] written out: one sequence of m + n slots, the infix's K/V inserted at
    slots start..start+n-1 of every layer (no queries, no outputs there), causal order over
    the slots, y's positions after the infix. tokens: [m]; returns logits [m, vocab]."""
    m, n = tokens.shape[0], infix_key.shape[1]
    slot = jnp.where(jnp.arange(m) < start, jnp.arange(m), jnp.arange(m) + n)  # Slots of the input rows.
    key_slots = jnp.concatenate([slot[:start], start + jnp.arange(n), slot[start:]])
    x = params["token_embed"]["embedding"][tokens] + params["position_embed"]["embedding"][slot]
    dense = lambda h, p: jnp.einsum("md,dhk->mhk", h, p["kernel"]) + p["bias"]
    eps = config.layer_norm_epsilon
    for index in range(config.num_layers):
        p = params[layers.layer_name(index)]
        h = _layer_norm(x, p["ln_1"], eps)
        q, k, v = (dense(h, p["attn"][name]) for name in ("query", "key", "value"))
        k = jnp.concatenate([k[:start], infix_key[index], k[start:]])
        v = jnp.concatenate([v[:start], infix_value[index], v[start:]])
        scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(config.head_dim)
        scores = jnp.where(key_slots[None, None, :] <= slot[None, :, None], scores, -jnp.inf)
        attended = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, axis=-1), v)
        x = x + jnp.einsum("qhd,hde->qe", attended, p["attn"]["out"]["kernel"]) + p["attn"]["out"]["bias"]
        h = _layer_norm(x, p["ln_2"], eps)
        h = jax.nn.gelu(h @ p["mlp"]["fc"]["kernel"] + p["mlp"]["fc"]["bias"], approximate=True)
        x = x + h @ p["mlp"]["proj"]["kernel"] + p["mlp"]["proj"]["bias"]
    return _layer_norm(x, params["final_norm"], eps) @ params["token_embed"]["embedding"].T


def test_infix_matches_its_literal_definition(config, model, base_params):
    n = 3
    spec = prefix_lib.PrefixSpec(kind="infix", length=n)
    params = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(6))
    params = jax.tree.map(lambda x: 50 * x, params)  # K/V that visibly matter.
    tokens = jax.random.randint(jax.random.key(7), (2, 9), 0, config.vocab_size)
    targets_from = [4, 6]  # First target token of each row; the infix precedes the row before it.
    loss_mask = (jnp.arange(9)[None] >= jnp.array(targets_from)[:, None]).astype(jnp.float32)
    inputs = prefix_lib.model_inputs(spec, params, config.prefix_geometry, loss_mask=loss_mask)
    logits = model.apply({"params": base_params}, tokens, **inputs)
    plain = model.apply({"params": base_params}, tokens)
    for row, first_target in enumerate(targets_from):
        start = first_target - 1
        want = _literal_infix_logits(config, base_params, tokens[row], start, params["key"], params["value"])
        np.testing.assert_allclose(logits[row], want, atol=2e-5)
        # Source rows never see the infix; the rows after it do.
        np.testing.assert_allclose(logits[row, :start], plain[row, :start], atol=1e-6)
        assert np.abs(logits[row, start:] - plain[row, start:]).min() > 1e-3


def test_infix_needs_the_loss_mask_room_for_itself_and_no_peft(config, model, base_params):
    spec = prefix_lib.PrefixSpec(kind="infix", length=2)
    params = prefix_lib.init_random(spec, config.prefix_geometry, jax.random.key(6))
    with pytest.raises(ValueError, match="needs the batch's loss_mask"):
        prefix_lib.model_inputs(spec, params, config.prefix_geometry)
    with pytest.raises(peft_adapter.AdapterFormatError, match="PEFT prefix tuning cannot express that"):
        peft_adapter.as_kv(spec, params, model)
    tokens = np.ones((1, config.max_len - 4), np.int32)
    served = decode.serve(spec, params, model, base_params)
    with pytest.raises(ValueError, match=r"4 new tokens \+ an infix of 2 exceeds max_len"):
        decode.generate(base_params, served, tokens, tokens, model=model, options=decode.Options(max_new_tokens=4), eos_id=0)


def trained_params(config) -> int:
    """How many numbers a run of `config` trains, from shapes alone (model, prefix and mode must fit)."""
    family = families.get(config.model.family)
    model = family.make(train.model_config(config))
    spec = train.prefix_spec(config)
    params = {"base": jax.eval_shape(lambda key: families.init_params(model, key), jax.random.key(0))}
    if spec is not None:
        params["prefix"] = jax.eval_shape(lambda key: prefix_lib.init_random(spec, model.config.prefix_geometry, key), jax.random.key(0))
    labels = trainable.label_params(params, config.train.mode,
                                    top_layers=train.top_layers(family, model.config, config.train))
    return prefix_lib.num_params(trainable.partition(params, labels)[0])


@pytest.mark.parametrize("method", sorted(webnlg_small_row.METHODS))
def test_every_row_of_the_small_table_is_a_valid_setup(method):
    """Each row's model, prefix and mode fit together; trainable shares as documented."""
    share = trained_params(webnlg_small_row.get_config(method)) / 4_339_200
    want = {"adapter-0.1": 0.0014, "adapter-3": 0.0307, "ft": 1.0, "emb-1": 0.00006, "emb-10": 0.0006}
    if method in want:
        assert share == pytest.approx(want[method], rel=0.05)


@pytest.mark.parametrize("method", sorted(webnlg_smollm2_row.METHODS))
def test_every_row_of_the_smollm2_table_is_a_valid_setup(method):
    """SmolLM2 rows: each fits its model, and trains the share its docstring states."""
    config = webnlg_smollm2_row.get_config(method)
    trained = trained_params(config)
    want = {"ft": 134_515_008, "ft-top2": 7_080_192, "adapter-0.1": 103_740, "adapter-3": 4_047_000,
            "prefix-hidden": 172_800, "emb-1": 576, "emb-10": 5_760}
    if method in want:
        assert trained == want[method]
    assert config.data.heldout_categories == webnlg_smollm2_row.HELDOUT_CATEGORIES


def test_smollm2_table_budget_stays_the_one_its_runs_used():
    """The committed runs' budget and decoding, whatever the default job's: 160 steps of 2
    packed rows, 20 warmup (low data 100 steps, 10 warmup); greedy, 200 inputs."""
    budget = lambda arg: tuple(webnlg_smollm2_row.get_config(arg).train[k] for k in ("batch_size", "num_steps", "warmup_steps"))
    assert budget("prefix-kv") == budget("ft") == (2, 160, 20)
    assert budget("prefix-kv,size=50,seed=1") == (2, 100, 10)
    d = webnlg_smollm2_row.get_config("prefix-kv").decode
    assert (d.strategy, d.max_new_tokens, d.max_inputs, d.batch_size) == ("greedy", 64, 200, 100)


def test_smollm2_paper_protocol_is_appendix_a_on_the_texts_kept():
    config = webnlg_smollm2_row.get_config("prefix-kv,paper=1")
    texts = sum(len(e.references) for e in sources.read(config.data, "train"))
    assert texts == webnlg_smollm2_row.TRAIN_TEXTS
    assert (config.train.lr, config.train.batch_size, config.train.num_steps) == (5e-5, 5, 5 * math.ceil(texts / 5))
    d = config.decode
    assert (config.prefix.length, config.train.loss_per, d.strategy, d.min_new_tokens, d.ban_newlines, d.max_inputs) == (
        5, "sequence", "beam", 5, True, 0)
    assert config.train.eval_every == config.train.num_steps  # No checkpoint chosen on the unseen inputs.
    ft = webnlg_smollm2_row.get_config("ft,paper=1").train
    assert (ft.lr, ft.batch_size, ft.num_steps) == (1e-5, 6, 10 * math.ceil(texts / 6))
    with pytest.raises(ValueError, match="Bad option 'paper=1'"):
        webnlg_small_row.get_config("ft,paper=1")


def test_smollm2_low_data_rows_and_real_word_initialisation():
    config = webnlg_smollm2_row.get_config("prefix-kv,size=50,seed=1")
    assert (config.data.num_train, config.train.seed, config.prefix.init, config.prefix.reparam_dim) == (50, 1, "random", 512)
    words = webnlg_smollm2_row.get_config("prefix-kv,size=50,seed=1,words=1").prefix
    assert (words.init, words.reparam_dim, tuple(words.init_tokens)) == ("words", 512, webnlg_smollm2_row.TABLE_TO_TEXT)
    assert words.length == len(webnlg_smollm2_row.TABLE_TO_TEXT)
    with pytest.raises(ValueError, match="has no prefix; words= does not apply"):
        webnlg_smollm2_row.get_config("ft,size=50,words=1")


def test_the_smollm2_table_lists_every_row_and_runs_by_name(capsys):
    runs = webnlg_smollm2_table.runs()
    assert list(runs)[:9] == list(webnlg_smollm2_table.ORDER) and len(runs) == 9 + 4 + 16 + 8
    for arg in runs.values():
        webnlg_smollm2_row.get_config(arg)
    table.main(["--names=ft,emb-10", "--root=R", "--", "--config.train.num_steps=2"], doc="", runs=runs,
               config_file=webnlg_smollm2_table.CONFIG, root="unused")
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[3:] for line in printed] == [
        [f"--config={webnlg_smollm2_table.CONFIG}:{name}", f"--workdir=R/{name}", "--config.train.num_steps=2"]
        for name in ("ft", "emb-10")]
    with pytest.raises(SystemExit):
        table.main(["--names=lora"], doc="", runs=runs, config_file="", root="")
    assert "--names: no run called ['lora']" in capsys.readouterr().err


def test_the_gpu_script_runs_every_method_at_the_paper_protocol(tmp_path, capsys):
    """launch/webnlg_smollm2_gpu.sh with a `python` that records its arguments: the table runner
    accepts them and prints each method's paper=1 command with the overrides."""
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ARGS_FILE": str(tmp_path / "args")}
    script = os.path.join(ROOT, "launch", "webnlg_smollm2_gpu.sh")
    subprocess.run(["bash", script, str(tmp_path / "results"), "", "--config.train.num_steps=1"], env=env, check=True)
    args = (tmp_path / "args").read_text().splitlines()
    assert args[:3] == ["-m", "experiments.webnlg_smollm2_table", "--run"]
    assert f"--collect={tmp_path / 'results'}/runs" in args and f"--export={tmp_path / 'results'}/prefixes" in args
    table.main(args[3:], doc="", config_file=webnlg_smollm2_table.CONFIG, runs=webnlg_smollm2_table.runs(),
               root="")  # Without --run: prints the commands.
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == len(webnlg_smollm2_row.METHODS)
    for method, command in zip(webnlg_smollm2_table.ORDER, commands):
        assert f"webnlg_smollm2_row.py:{method},paper=1 " in command and "workdir/webnlg_smollm2_paper/" in command
        assert command.endswith("--config.train.num_steps=1")


def test_the_table_runner_runs_exports_prefixes_and_collects_report_files(tmp_path, monkeypatch, capsys):
    """As launch/webnlg_smollm2_gpu.sh uses it, on two tiny rows of the small table."""
    monkeypatch.chdir(ROOT)
    tiny = ["--config.data.num_train=8", "--config.data.num_dev=4", "--config.train.num_steps=2",
            "--config.train.eval_every=2", "--config.checkpoint.every=2", "--config.decode.max_new_tokens=4"]
    argv = ["--run", "--names=ft,emb-1", f"--root={tmp_path / 'runs'}", f"--export={tmp_path / 'prefixes'}",
            f"--collect={tmp_path / 'results'}", "--", *tiny]
    runs = webnlg_small_table.runs()
    table.main(argv, doc="", runs=runs, config_file=webnlg_small_table.CONFIG, root="")
    assert sorted(os.listdir(tmp_path / "prefixes")) == ["emb-1"]  # FT has no prefix.
    assert sorted(os.listdir(tmp_path / "prefixes" / "emb-1")) == ["prefix.safetensors", "prefix_config.json"]
    for name in ("ft", "emb-1"):
        collected = tmp_path / "results" / name
        assert sorted(os.listdir(collected)) == sorted(table.REPORT_FILES)
        assert (collected / "generations" / "dev_metrics.json").is_file()
    # Verified against the collected copies (a run's generations are enough); finished runs are skipped.
    summary = (tmp_path / "results" / "ft" / "summary.json").stat().st_mtime
    capsys.readouterr()
    verified = [*argv[:2], f"--root={tmp_path / 'results'}", f"--verify={tmp_path / 'prefixes'}", *argv[5:]]
    table.main(verified, doc="", runs=runs, config_file=webnlg_small_table.CONFIG, root="")
    assert (tmp_path / "results" / "ft" / "summary.json").stat().st_mtime == summary
    out = capsys.readouterr().out
    assert "ft: finished, skipped." in out and "emb-1: finished, skipped." in out
    assert f"emb-1: {tmp_path / 'prefixes' / 'emb-1'} reproduces the run's generations and scores" in out  # ft has no prefix.
    assert table._scores(tmp_path / "results" / "emb-1") == table._scores(tmp_path / "runs" / "emb-1")
    # A prefix that is not the run's is caught.
    other = tmp_path / "other"
    shutil.copytree(tmp_path / "prefixes", other)
    weights = other / "emb-1" / "prefix.safetensors"
    safetensors.numpy.save_file({"prompt": np.full((1, 256), 0.5, np.float32)}, str(weights))
    with pytest.raises(SystemExit, match="emb-1: the prefix in .* decodes otherwise than the run did"):
        table.verify(webnlg_small_table.CONFIG, "emb-1", "emb-1", str(tmp_path / "runs"), tiny, str(other / "emb-1"))


def test_row_arguments():
    config = webnlg_small_row.get_config("emb-1,size=50,seed=2")
    assert (config.prefix.kind, config.prefix.length, config.data.num_train, config.train.seed) == ("prompt", 1, 50, 2)
    assert webnlg_small_row.get_config("prefix-kv,length=40").prefix.length == 40
    for arg, message in (("lora", "Unknown method"), ("ft,length=5", "has no prefix"), ("ft,epochs=3", "Bad option")):
        with pytest.raises(ValueError, match=message):
            webnlg_small_row.get_config(arg)
