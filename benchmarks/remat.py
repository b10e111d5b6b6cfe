"""Activation checkpointing (`model.remat`): the memory it saves and the time it costs.

A prefix kv step at a sequence length where activations dominate memory (SHAPES: 4x the
train step section's on CPU; on the GPU presets 2 x 2048 against its 8 x 1024, so that the
step without remat, attention's scores materialised, still fits one 80 GB device: compiled
for CPU, llama_medium's keeps 29.7 GiB, 3.4 with remat full), for each policy in
`decoder.REMAT_POLICIES`. Memory is XLA's own count of the compiled step's
temporary buffers (`memory_analysis().temp_size_in_bytes`: activations kept for the
backward pass and scratch), exact and free of allocator noise;
step times are interleaved medians. PEFT refuses gradient checkpointing with prefix
tuning (peft issue 869); here every prefix kind takes it (tests/test_remat.py). On CPU
the saving needs XLA's memory-minimising schedule, which `import prefix_jax` selects
(prefix_jax/__init__.py); under XLA's default there, the concurrency-optimised schedule,
recomputation runs early and remat saves little: run with
XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true to see it.
"""

from benchmarks import common, train_step
from prefix_jax.models import decoder

GPU_PRESETS, GPU_SHAPE = ("medium", "llama_medium"), dict(batch_size=2, sequence_length=2048)
SHAPES = {size: GPU_SHAPE if size in GPU_PRESETS else dict(shape, sequence_length=4 * shape["sequence_length"])
          for size, shape in train_step.SHAPES.items()}


def benchmark(size: str, repetitions: int, steps: int) -> dict:
    model, shape = common.MODELS[size], SHAPES[size]
    batch_size, length = shape["batch_size"], shape["sequence_length"]
    runners, rows = {}, {}
    for policy in decoder.REMAT_POLICIES:
        dims = {**model, "max_len": max(model["max_len"], length), "remat": policy}
        runners[policy], rows[policy] = train_step.build(dims, batch_size, length, {"prefix.kind": "kv"}, steps)
        runners[policy]()  # Warm-up.
    times = common.interleaved_medians(runners, repetitions)
    for policy, row in rows.items():
        row["step_seconds"] = times[policy] / steps
        row["memory_vs_none"] = row["temp_bytes"] / rows["none"]["temp_bytes"]
        row["time_vs_none"] = row["step_seconds"] / (times["none"] / steps)
    return {"benchmark": "remat", "size": size, "model": common.as_run(model), "batch_size": batch_size,
            "sequence_length": length, "prefix_length": train_step.PREFIX_LENGTH, "results": rows}


def to_markdown(results: dict) -> str:
    header = ["model.remat", "activation + scratch memory (MiB)", "vs none", "step (s)", "vs none"]
    rows = [[policy, common.mib(r["temp_bytes"]), f"{r['memory_vs_none']:.3f}", f"{r['step_seconds']:.4f}",
             f"{r['time_vs_none']:.3f}"] for policy, r in results["results"].items()]
    intro = (
        f"Prefix kv train step, batch {results['batch_size']} x {results['sequence_length']} tokens, model "
        f"{results['model']} (max_len raised to the sequence length where shorter). Memory: XLA's temporary buffers of the "
        f"compiled step (what the backward pass keeps, plus scratch).\n\n"
    )
    return intro + common.markdown_table(header, rows)
