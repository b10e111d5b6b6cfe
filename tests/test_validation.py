"""Config range checks: every shipped config passes, every bad value is named before any work."""

import pytest

from experiments import (dart_gpt2_medium, e2e_gpt2_medium, methods, pretrain_base_lm, tiny, tiny_llama,
                         webnlg_gpt2_medium, webnlg_small, webnlg_small_row, webnlg_smollm2, webnlg_smollm2_row, xsum_bart_large,
                         xsum_tiny)
from prefix_jax import checkpoint, errors, loop, validation

SHIPPED = [
    tiny.get_config(), tiny_llama.get_config(), webnlg_small.get_config(), webnlg_smollm2.get_config(),
    pretrain_base_lm.get_config(), xsum_tiny.get_config("data/xsum"),
    xsum_bart_large.get_config("/models/bart-large"),
    *[module.get_config("/models/gpt2-medium") for module in (dart_gpt2_medium, e2e_gpt2_medium, webnlg_gpt2_medium)],
    *[webnlg_small_row.get_config(method) for method in sorted(methods.METHODS)],
    *[webnlg_smollm2_row.get_config(f"{method}{paper}") for method in sorted(methods.METHODS) for paper in ("", ",paper=1")],
]


@pytest.mark.parametrize("config", SHIPPED, ids=lambda c: f"{c.model.family}-{c.data.name}-{c.train.mode}")
def test_every_shipped_config_is_in_range(config):
    assert validation.problems(config, decoding=True) == []


def _tiny(**overrides):
    config = tiny.get_config()
    for path, value in overrides.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"train.batch_size": 0}, "train.batch_size is 0; it must be an integer >= 1"),
        ({"train.batch_size": -2}, "train.batch_size is -2; it must be an integer >= 1"),
        ({"checkpoint.every": 0}, "checkpoint.every is 0; it must be an integer >= 1"),
        ({"checkpoint.keep": 0}, "checkpoint.keep is 0; it must be an integer >= 1"),
        ({"data.num_train": -5}, "data.num_train is -5; it must be an integer >= 0"),
        ({"decode.max_inputs": -1}, "decode.max_inputs is -1; it must be an integer >= 0"),
        ({"train.num_steps": 0}, "train.num_steps is 0; it must be an integer >= 1"),
        ({"train.eval_every": 0}, "train.eval_every is 0"),
        ({"train.eval_sequences": -1}, "train.eval_sequences is -1; it must be an integer >= 0"),
        ({"data.pack_width": -1}, "data.pack_width is -1; it must be an integer >= 0"),
        ({"prefix.length": 0}, "prefix.length is 0 with prefix.kind='hidden'; use a length >= 1, or prefix.kind='none'"),
        ({"train.lr": float("nan")}, r"train.lr is nan; it must be a finite number in \(0, inf\)"),
        ({"train.lr": -1e-3}, r"train.lr is -0.001"),
        ({"train.adam_b2": 1.0}, r"train.adam_b2 is 1.0; it must be a finite number in \[0, 1\)"),
        ({"decode.top_p": 0.0}, r"decode.top_p is 0.0; it must be a finite number in \(0, 1\]"),
        ({"model.max_len": 100, "data.bucket_size": 128}, r"data.bucket_size is 128; it must be <= model.max_len \(100\)"),
        ({"data.pack_width": 2048}, r"data.pack_width is 2048; it must be <= model.max_len \(1024\)"),
        ({"mesh.data": 0}, "mesh.data is 0; it must be >= 1, or -1"),
        ({"serve.task_slots": 0}, "serve.task_slots is 0; it must be an integer >= 1"),
        ({"serve.grace_seconds": -1.0}, r"serve.grace_seconds is -1.0; it must be a finite number in \[0, inf\)"),
        ({"model.max_len": 96, "decode.max_new_tokens": 96, "decode.after_training": True},
         r"decode.max_new_tokens is 96; it must be < model.max_len \(96\)"),
    ],
)
def test_out_of_range_fields_are_refused_before_any_work(tmp_path, overrides, message):
    workdir = tmp_path / "run"
    with pytest.raises(errors.ConfigError, match=message) as raised:
        loop.train_and_evaluate(_tiny(**overrides), str(workdir))
    assert "\n" not in str(raised.value)
    assert not workdir.exists()  # Refused before the workdir, data or weights were touched.


def test_all_problems_are_named_at_once():
    found = validation.problems(_tiny(**{"train.batch_size": 0, "checkpoint.keep": 0}), decoding=False)
    assert [problem.split(" is ")[0] for problem in found] == ["train.batch_size", "checkpoint.keep"]


def test_decode_bound_applies_to_commands_that_decode():
    config = _tiny(**{"model.max_len": 64})  # decode.max_new_tokens is 96: fine for training only.
    assert validation.problems(config, decoding=False) == []
    assert "decode.max_new_tokens" in validation.problems(config, decoding=True)[0]


def test_serve_bound_applies_to_the_serve_command():
    config = _tiny(**{"serve.max_len": 2048})  # Beyond model.max_len (1024): fine for training only.
    assert validation.problems(config, decoding=True) == []
    assert validation.problems(config, decoding=False, serving=True) == [
        "serve.max_len is 2048; it must be <= model.max_len (1024)"]


def test_a_run_whose_targets_do_not_fit_is_refused_before_training(tmp_path):
    config = _tiny(**{"model.max_len": 32, "data.bucket_size": 32, "data.num_train": 64, "data.num_dev": 16})
    with pytest.raises(errors.ConfigError, match=r"^157 of 157 train sequences lose their whole target at "
                                                 r"model.max_len=32 .* raise model.max_len to at least 94"):
        loop.train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("command", [loop.evaluate, loop.decode])
def test_a_mistyped_workdir_is_refused_and_not_created(tmp_path, command):
    with pytest.raises(checkpoint.MissingCheckpointError, match=f"The workdir {tmp_path}/typo does not exist; "
                                                                  "check --workdir, or train there first."):
        command(tiny.get_config(), str(tmp_path / "typo"))
    assert not (tmp_path / "typo").exists()
