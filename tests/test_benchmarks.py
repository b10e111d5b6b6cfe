"""Smoke tests of the benchmark suite at toy size: output schema and files, no timing assertions."""

import functools
import json

import jax
import pytest

from benchmarks import common, decode, default_job, hf_decode, isolated, peft_torch, remat, run, scaling, serve, sizes, train_step
from prefix_jax import prefix, train
from prefix_jax.models import families

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


def test_flops_per_token_of_a_llama():
    model = dict(family="llama", num_layers=2, d_model=4, d_ff=8, vocab_size=10, num_heads=2, num_kv_heads=1, head_dim=3)
    # L (2 d h + 2 d h_kv + 3 d d_ff) + d V with h = 6, h_kv = 3: 2 (48 + 24 + 96) + 40 = 376.
    attention = 2 * 2 * (6 + 3) * 6  # 2 L (s + context) h
    assert common.flops_per_token(model, 6, trains_weights=False, context=3) == 4 * 376 + 3 * attention


def test_presets_build_their_family():
    from experiments import webnlg_smollm2

    assert common.model_section(common.MODELS["smollm2"]) == webnlg_smollm2.get_config().model
    assert train_step.variant_config(common.MODELS["toy"], 2, {}).model.family == "gpt2"
    assert train_step.variant_config(common.MODELS["toy_llama"], 2, {}).model.num_kv_heads == 2
    assert common.base_weights(common.MODELS["toy"]) is None


@pytest.mark.parametrize("size", list(common.MODELS))
def test_every_preset_has_each_sections_shapes(size):
    # A preset missing from one section's table would stop a long run (the GPU suite's, on a lent device) midway.
    for table in (train_step.SHAPES, decode.SHAPES, remat.SHAPES, scaling.PREFIX_LENGTHS, scaling.SEQUENCE_LENGTHS,
                  scaling.LADDERS):
        assert size in table


def test_the_gpu_suite_measures_a_llama_of_gpt2_medium_size_or_larger():
    def parameters(size):
        config = train.model_config(train_step.variant_config(common.MODELS[size], 1, {}))
        family = families.of(config)
        return prefix.num_params(jax.eval_shape(functools.partial(family.init_params, family.make(config)), jax.random.key(0)))

    gpu = run.SUITES["gpu"]["size"]
    assert common.MODELS[gpu]["family"] == "llama" and common.MODELS[gpu]["dtype"] == "bfloat16"
    assert parameters(gpu) == 361_821_120  # SmolLM2-360M's count: 49152 x 960 + 32 x 9,832,320 + 960.
    assert parameters(gpu) > parameters("medium") == 354_823_168  # GPT-2 medium's.


def test_results_say_which_weights_were_read(monkeypatch):
    from prefix_jax import gguf_file

    monkeypatch.setattr(gguf_file, "installed", lambda name: False)
    assert common.as_run(common.MODELS["smollm2"])["weights"] == "random"
    assert train_step.variant_config(common.MODELS["smollm2"], 2, {}).base_weights == ""
    monkeypatch.setattr(gguf_file, "installed", lambda name: name == "smollm2-135m")
    assert common.as_run(common.MODELS["smollm2"])["weights"] == "smollm2-135m"
    assert train_step.variant_config(common.MODELS["smollm2"], 2, {}).base_weights == "smollm2-135m"


@pytest.mark.parametrize("size", ["toy", "toy_llama"])
def test_train_step_schema(size):
    results = train_step.benchmark(size, repetitions=1, steps=1, peak_size=64, peak_dtype="float32", memory=False)
    assert positive(results["matmul_peak"]["flops_per_second"])
    assert set(results["results"]) == set(train_step.VARIANTS)
    for row in results["results"].values():
        assert positive(row["step_seconds"], row["tokens_per_second"], row["compile_seconds"], row["flops_per_token"],
                        row["fraction_of_matmul_peak"], row["speedup_vs_full"])
    full = results["results"][train_step.FULL]
    assert full["speedup_vs_full"] == 1.0 and full["flop_bound_speedup_vs_full"] == 1.0
    assert results["results"]["prefix kv"]["flop_bound_speedup_vs_full"] > 1.0
    model = common.MODELS[size]  # A kv prefix holds 2 L n (key/value width) numbers: the preset's family ran.
    kv_width = model.get("num_kv_heads", model["num_heads"]) * model.get("head_dim", model["d_model"] // model["num_heads"])
    assert results["results"]["prefix kv"]["trainable_params"] == 2 * model["num_layers"] * train_step.PREFIX_LENGTH * kv_width
    assert train_step.to_markdown(results).count("\n|") == len(train_step.VARIANTS) + 2  # header, rule, rows


def test_isolated_run_reports_time_and_memory():
    kwargs = dict(model=common.MODELS["toy"], batch_size=2, sequence_length=8, overrides={"prefix.kind": "kv"}, steps=1)
    result = isolated.run_isolated("benchmarks.train_step", "run_fn", kwargs, repetitions=1, cpus=1)
    assert positive(result["call_seconds"], result["first_call_seconds"])
    assert MEMORY_KEYS <= set(result["memory"]) and positive(*(result["memory"][k] for k in MEMORY_KEYS))


@pytest.mark.parametrize("size", ["toy", "toy_llama"])
def test_peft_torch_schema(size):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    results = peft_torch.benchmark(size, repetitions=1, steps=1, variants=("prefix kv",), thread_counts=(1,))
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
    pytest.importorskip("peft")
    results = default_job.benchmark("toy", repetitions=1, thread_counts=(1,))
    rows = results["results"]["1"]
    assert set(rows) == {default_job.TARGETED, default_job.FULL, default_job.BF16, default_job.PEFT}
    targeted, full, peft = rows[default_job.TARGETED], rows[default_job.FULL], rows[default_job.PEFT]
    assert targeted["logit_rows_per_step"] < full["logit_rows_per_step"] == results["batch_size"] * results["pack_width"]
    assert rows[default_job.BF16]["logit_rows_per_step"] == targeted["logit_rows_per_step"]
    assert targeted["tokens_computed_per_step"] == full["tokens_computed_per_step"]
    # PEFT pads each step's texts to the longest; packing computes fewer tokens than that.
    assert peft["tokens_computed_per_step"] >= results["real_tokens_per_step"]
    for row in rows.values():
        assert positive(row["step_seconds"], row["real_tokens_per_second"], row["speed_vs_peft"], row["train_bytes"])
    assert peft["speed_vs_peft"] == 1.0
    assert default_job.to_markdown(results).count("\n|") == 4 + 2
    headline = run.headline({"sections": {"default_job": results}})
    assert any(key.startswith("default job: prefix_jax vs PEFT") for key in headline)
    assert any(key.startswith("default job: bfloat16 vs float32 activations") for key in headline)


def test_unpacked_batch_holds_the_packed_texts_and_their_targets():
    config = default_job.job_config("toy")
    batch = default_job.job_batches(config)[0]
    ids, mask, labels = default_job.unpacked(batch)
    assert mask.sum() == batch["attention_mask"].sum()
    assert (labels != -100).sum() == batch["target_weights"].sum()
    # Hugging Face shifts labels inside the loss: a label at t is predicted by position t - 1.
    real = [tokens[m > 0] for tokens, m in zip(ids, mask)]
    assert sorted(map(tuple, real)) == sorted(
        tuple(batch["tokens"][r][batch["segment_ids"][r] == s])
        for r in range(len(batch["tokens"])) for s in set(batch["segment_ids"][r].tolist()) - {0})


def test_per_token_seconds_is_the_slope_and_refuses_noise():
    assert common.per_token_seconds(1.0, 1.5, 4, 12) == pytest.approx(0.0625)
    with pytest.raises(RuntimeError, match="12 new tokens took no longer than 4"):
        common.per_token_seconds(1.0, 0.98, 4, 12)


def test_hf_decode_schema():
    pytest.importorskip("peft")
    # A toy model decodes 36 tokens in milliseconds: on shared CI cores a round's slope can be
    # noise, which the benchmark refuses (an error, not a figure). Up to three runs.
    for attempt in range(3):
        try:
            results = hf_decode.benchmark("toy", repetitions=3, batch_sizes=(2,))
            break
        except RuntimeError as error:
            if "the timings are noise" not in str(error) or attempt == 2:
                raise
    rows = results["results"]["2"]
    assert {hf_decode.OURS, hf_decode.OURS_BASE, hf_decode.HF, hf_decode.HF_BASE} < set(rows)
    assert rows[hf_decode.HF]["latency_vs_hf_peft"] == 1.0
    assert rows["source_width"] > 0 and isinstance(rows["peft_generate_applies_prefix"], bool)
    assert positive(rows["weights_read_seconds"])
    for name in (hf_decode.OURS, hf_decode.OURS_BASE, hf_decode.HF, hf_decode.HF_BASE):
        assert positive(*rows[name]["call_seconds"].values())
    assert hf_decode.to_markdown(results).count("\n|") == 4 + 2
    assert "decode batch 2: prefix_jax vs HF + PEFT per-token speed" in run.headline({"sections": {"hf_decode": results}})


def test_serve_schema():
    """The server in a subprocess under a mixed load and a grouped one; batch-1 latency against
    Hugging Face + PEFT where torch is installed."""
    results = serve.benchmark("toy", repetitions=1, task_counts=(1, 2))
    loads = results["loads"]
    assert set(loads) == {"mixed, 1 task(s)", "mixed, 2 task(s)", "one task at a time, 2 tasks"}
    for row in loads.values():
        assert row["requests"] == 16 and row["tokens"] == 16 * 8  # ignore_eos: every request its max_tokens.
        assert row["rounds"] == 1 and row["tokens_per_second_rounds"] == [row["tokens_per_second"]]
        assert positive(row["tokens_per_second"], row["p50_seconds"]) and row["p99_seconds"] >= row["p50_seconds"]
    assert loads["mixed, 1 task(s)"]["throughput_vs_single_task"] == 1.0
    assert positive(results["batch1"]["server_per_token_seconds"])
    ratios = run.headline({"sections": {"serve": results}})
    assert set(ratios) >= {"serve: mixed, 2 task(s) vs one task, tokens/s", "serve: one task at a time, 2 tasks vs one task, tokens/s"}
    if peft_torch.available():
        assert positive(results["batch1"]["latency_vs_hf_peft"])
        assert "serve batch 1: server vs HF + PEFT per-token speed" in ratios
    assert serve.to_markdown(results).count("\n|") == 3 + 2


@pytest.mark.parametrize("size", ["toy", "toy_llama"])
def test_remat_schema(size):
    results = remat.benchmark(size, repetitions=1, steps=1)
    assert list(results["results"]) == ["none", "full", "dots"]
    for row in results["results"].values():
        assert positive(row["temp_bytes"], row["step_seconds"], row["memory_vs_none"], row["time_vs_none"])
    assert results["results"]["none"]["memory_vs_none"] == 1.0
    assert results["sequence_length"] == remat.SHAPES[size]["sequence_length"] > train_step.SHAPES[size]["sequence_length"]
    # Under XLA's memory-minimising CPU schedule (prefix_jax/__init__.py) remat saves memory even at toy
    # size (0.85x, 0.81x); under its concurrency-optimised default it kept 1.01x, 1.10x.
    assert results["results"]["full"]["memory_vs_none"] < 0.9
    assert remat.to_markdown(results).count("\n|") == 3 + 2


@pytest.mark.parametrize("size", ["toy", "toy_llama"])
def test_decode_schema(size):
    results = decode.benchmark(size, repetitions=1)
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


def test_a_run_of_some_sections_keeps_the_others_with_their_environment(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "benchmark", functools.partial(sizes.benchmark, variants=("prefix kv",)))
    monkeypatch.setattr(peft_torch, "available", lambda: False)
    environment = common.environment()
    monkeypatch.setattr(common, "environment", lambda: dict(environment, commit="aaaaaaa"))
    first = run.run_suite("cpu", size="toy", sections=["sizes"], repetitions=1, steps=1, out=str(tmp_path))
    monkeypatch.setattr(common, "environment", lambda: dict(environment, commit="bbbbbbb"))
    second = run.run_suite("cpu", size="toy", sections=["peft_torch"], repetitions=1, steps=1, out=str(tmp_path))
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert list(written["sections"]) == ["peft_torch", "sizes"]  # The suite's order.
    assert written["sections"]["sizes"]["results"] == first["sections"]["sizes"]["results"]
    assert written["sections"]["sizes"]["environment"]["commit"] == "aaaaaaa"
    assert written["sections"]["peft_torch"]["environment"]["commit"] == written["environment"]["commit"] == "bbbbbbb"
    assert second["headline"] == first["headline"]  # The kept section's ratios still head the table.
    assert "Kept from an earlier run: commit aaaaaaa" in (tmp_path / "cpu.md").read_text()
    third = run.run_suite("cpu", size="toy_llama", sections=["peft_torch"], repetitions=1, steps=1, out=str(tmp_path))
    assert list(third["sections"]) == ["peft_torch"]  # Another preset's sections are not mixed in.


def test_a_section_that_fails_keeps_the_sections_before_it_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(sizes, "benchmark", functools.partial(sizes.benchmark, variants=("prefix kv",)))

    def out_of_memory(*args):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")

    monkeypatch.setattr(scaling, "benchmark", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        run.run_suite("cpu", size="toy", sections=["sizes", "scaling"], repetitions=1, steps=1, out=str(tmp_path))
    written = json.loads((tmp_path / "cpu.json").read_text())
    assert list(written["sections"]) == ["sizes"] and written["headline"]
    assert (tmp_path / "cpu" / "sizes.json").exists() and not (tmp_path / "cpu" / "scaling.json").exists()


def test_run_suite_says_when_peft_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(peft_torch, "available", lambda: False)
    results = run.run_suite("cpu", size="toy", sections=["peft_torch"], repetitions=1, steps=1, out=str(tmp_path))
    assert "not installed" in results["sections"]["peft_torch"]["skipped"]
    assert "Skipped: torch" in (tmp_path / "cpu.md").read_text()
