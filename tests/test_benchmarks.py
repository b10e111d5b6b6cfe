"""Smoke tests of the benchmark suite at toy size: output schema and files, no timing assertions."""

import functools
import json

import pytest

from benchmarks import common, decode, default_job, isolated, peft_torch, remat, run, scaling, sizes, train_step

MEMORY_KEYS = {"baseline_bytes", "peak_bytes", "train_bytes"}


def positive(*values):
    return all(v > 0 for v in values)


def test_flops_per_token_formula():
    model = dict(num_layers=2, d_model=4, d_ff=8, vocab_size=10)
    n = 2 * (4 * 16 + 2 * 32) + 40  # L (4 d^2 + 2 d d_ff) + d V = 296
    attention = 2 * 2 * (6 + 3) * 4  # 2 L (s + context) d, s = 6, context = 3
    assert common.flops_per_token(model, 6, trains_weights=True) == 6 * n + 3 * 2 * 2 * 6 * 4
    assert common.flops_per_token(model, 6, trains_weights=False, context=3) == 4 * n + 3 * attention
    assert common.flops_per_token(model, 6, trains_weights=False, context=3, rows=3) == (4 * n + 3 * attention) * 1.5


def test_train_step_schema():
    results = train_step.benchmark("toy", repetitions=1, steps=1, peak_size=64, peak_dtype="float32", memory=False)
    assert positive(results["matmul_peak"]["flops_per_second"])
    assert set(results["results"]) == set(train_step.VARIANTS)
    for row in results["results"].values():
        assert positive(row["step_seconds"], row["tokens_per_second"], row["compile_seconds"], row["flops_per_token"],
                        row["fraction_of_matmul_peak"], row["speedup_vs_full"])
    full = results["results"][train_step.FULL]
    assert full["speedup_vs_full"] == 1.0 and full["flop_bound_speedup_vs_full"] == 1.0
    assert results["results"]["prefix kv"]["flop_bound_speedup_vs_full"] > 1.0
    assert train_step.to_markdown(results).count("\n|") == len(train_step.VARIANTS) + 2  # header, rule, rows


def test_isolated_run_reports_time_and_memory():
    kwargs = dict(model=common.MODELS["toy"], batch_size=2, sequence_length=8, overrides={"prefix.kind": "kv"}, steps=1)
    result = isolated.run_isolated("benchmarks.train_step", "run_fn", kwargs, repetitions=1, cpus=1)
    assert positive(result["call_seconds"], result["first_call_seconds"])
    assert MEMORY_KEYS <= set(result["memory"]) and positive(*(result["memory"][k] for k in MEMORY_KEYS))


def test_peft_torch_schema():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    results = peft_torch.benchmark("toy", repetitions=1, steps=1, variants=("prefix kv",), thread_counts=(1,))
    row = results["results"]["1"]["prefix kv"]
    for side in ("prefix_jax", "peft_torch"):
        assert positive(row[side]["tokens_per_second"], row[side]["step_seconds"])
        assert set(row[side]["memory"]) == MEMORY_KEYS
    assert positive(row["tokens_per_second_ratio"], row["train_memory_ratio"], row["peak_memory_ratio"])
    assert peft_torch.to_markdown(results).count("\n|") == 1 + 2


def test_scaling_schema():
    results = scaling.benchmark("toy", repetitions=1, steps=1)
    assert set(results["prefix_length_sweep"]) == {f"n={n}" for n in scaling.PREFIX_LENGTHS["toy"]} | {"full fine-tuning"}
    assert results["prefix_length_sweep"]["n=0"]["time_vs_first"] == 1.0
    for sweep in ("sequence_length_sweep", "model_size_sweep"):
        for point in results[sweep].values():
            assert positive(point["prefix_speedup_vs_full"], point["prefix kv"]["tokens_per_second"],
                            point["full fine-tuning"]["step_seconds"])
    assert scaling.to_markdown(results).count("\n|") > 10


def test_default_job_schema():
    results = default_job.benchmark("toy", repetitions=1)
    rows = results["results"]
    assert set(rows) == {default_job.TARGETED, default_job.FULL}
    assert rows[default_job.TARGETED]["logit_rows"] < rows[default_job.FULL]["logit_rows"] == results["pack_width"]
    for row in rows.values():
        assert positive(row["step_seconds"], row["real_tokens_per_second"], row["speedup_vs_full_logits"])
    assert rows[default_job.FULL]["speedup_vs_full_logits"] == 1.0
    assert default_job.to_markdown(results).count("\n|") == 2 + 2


def test_remat_schema():
    results = remat.benchmark("toy", repetitions=1, steps=1)
    assert list(results["results"]) == ["none", "full", "dots"]
    for row in results["results"].values():
        assert positive(row["temp_bytes"], row["step_seconds"], row["memory_vs_none"], row["time_vs_none"])
    assert results["results"]["none"]["memory_vs_none"] == 1.0
    assert results["sequence_length"] == remat.LENGTH_FACTOR * train_step.SHAPES["toy"]["sequence_length"]
    assert remat.to_markdown(results).count("\n|") == 3 + 2


def test_decode_schema():
    results = decode.benchmark("toy", repetitions=1)
    assert set(results["results"]) == {
        "base model, KV cache", "prefix (cached K/V)", "prefix recomputed each step", "base model, recomputed"
    }
    assert results["results"]["base model, KV cache"]["latency_vs_base"] == 1.0
    for row in results["results"].values():
        assert set(row) == {"per_token_seconds", "tokens_per_second", "latency_vs_base", "call_seconds", "compile_seconds"}
    assert set(results["multi_tenant"]) == {"one mixed batch", "sequential per task"}
    assert results["multi_tenant"]["sequential per task"]["speedup_vs_sequential"] == 1.0
    assert decode.to_markdown(results).count("\n|") == 4 + 2 + 2 + 2  # Two tables: rows, header and rule each.


def test_run_suite_writes_files_and_headline(tmp_path, monkeypatch):
    # The entry point end to end on its cheapest section (two variants): files, schema, headline.
    monkeypatch.setattr(sizes, "benchmark", functools.partial(sizes.benchmark, variants=("prefix kv",)))
    results = run.run_suite("cpu", size="toy", sections=["sizes"], repetitions=1, steps=1, out=str(tmp_path))
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert written["headline"] == results["headline"]
    assert {"jax", "backend", "cpu_count", "torch", "xla_flags"} <= set(written["environment"])
    rows = written["sections"]["sizes"]["results"]
    assert rows[train_step.FULL]["checkpoint_vs_full"] == 1.0
    assert 0 < rows["prefix kv"]["optimizer_state_vs_full"] < 0.1 and 0 < rows["prefix kv"]["checkpoint_vs_full"] < 1
    assert set(results["headline"]) == {"optimizer state, prefix kv vs full FT", "checkpoint, prefix kv vs full FT"}
    assert "## sizes" in (tmp_path / "cpu.md").read_text()
    assert (tmp_path / "cpu" / "sizes.md").exists() and (tmp_path / "cpu" / "sizes.json").exists()
    rendered = (tmp_path / "cpu.md").read_text()
    run.write(written, str(tmp_path / "again"))  # --render_only: the markdown is a function of the JSON.
    assert (tmp_path / "again" / "cpu.md").read_text() == rendered
    with pytest.raises(ValueError, match="Unknown sections"):
        run.run_suite("cpu", size="toy", sections=["speed"], repetitions=1, steps=1, out=str(tmp_path))


def test_run_suite_says_when_peft_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(peft_torch, "available", lambda: False)
    results = run.run_suite("cpu", size="toy", sections=["peft_torch"], repetitions=1, steps=1, out=str(tmp_path))
    assert "not installed" in results["sections"]["peft_torch"]["skipped"]
    assert "Skipped: torch" in (tmp_path / "cpu.md").read_text()
