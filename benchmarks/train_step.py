"""Train-step throughput, FLOP efficiency and memory of each prefix kind against full fine-tuning.

Every variant trains the same model on the same batch; steps are timed in
alternation in one process, compilation is timed separately. Analytic FLOPs
(`common.flops_per_token`) over the step time, divided by the matmul peak measured
in alternation with the steps (a busy machine slows both alike), give the achieved
fraction. The FLOP bound for prefix vs full is
about 1.5x: prefix training skips the weight-gradient matmuls (1/3 of a full step).
Peak memory is measured per variant in a fresh process (`isolated.py`).
"""

import time

import jax
import jax.numpy as jnp

from benchmarks import common, isolated
from experiments import tiny
from prefix_jax import prefix, train, trainable

SHAPES = {
    "toy": dict(batch_size=4, sequence_length=16),
    "small": dict(batch_size=16, sequence_length=128),
    "medium": dict(batch_size=8, sequence_length=1024),
    "toy_llama": dict(batch_size=4, sequence_length=16),
    "smollm2": dict(batch_size=4, sequence_length=128),
    "llama_medium": dict(batch_size=8, sequence_length=1024),
}
FULL = "full fine-tuning"
VARIANTS = {  # name -> config overrides
    FULL: {"prefix.kind": "none", "train.mode": "full"},
    "prefix hidden (efficient)": {"prefix.kind": "hidden"},
    "prefix hidden (literal)": {"prefix.kind": "hidden", "prefix.literal": True},
    "prefix kv": {"prefix.kind": "kv"},
    "prefix kv + reparam (512)": {"prefix.kind": "kv", "prefix.reparam_dim": 512},
    "prompt tuning": {"prefix.kind": "prompt"},
}
PREFIX_LENGTH = 10
PEAK = "matmul peak"


def random_batch(batch_size: int, length: int, vocab_size: int) -> dict:
    """Random tokens, no padding, loss on the second half (a source/target split)."""
    tokens = jax.random.randint(jax.random.key(0), (batch_size, length), 0, vocab_size)
    loss_mask = jnp.broadcast_to(jnp.arange(length) >= length // 2, (batch_size, length))
    return {
        "tokens": tokens,
        "attention_mask": jnp.ones((batch_size, length), jnp.int32),
        "loss_mask": loss_mask.astype(jnp.float32),
    }


def variant_config(model: dict, batch_size: int, overrides: dict, prefix_length: int = PREFIX_LENGTH):
    config = tiny.get_config()
    config.model = common.model_section(model)
    config.base_weights = common.base_weights(model) or ""
    config.prefix.length = prefix_length
    config.train.batch_size = batch_size
    for path, value in overrides.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


def flops_per_token(model: dict, sequence_length: int, overrides: dict, prefix_length: int = PREFIX_LENGTH) -> float:
    """`common.flops_per_token` for a variant: what trains, how many keys, how many extra rows."""
    kind = overrides.get("prefix.kind", "hidden")
    n = 0 if kind == "none" else prefix_length
    extra_rows = n if kind == "prompt" or overrides.get("prefix.literal") else 0
    return common.flops_per_token(
        model, sequence_length, trains_weights=overrides.get("train.mode") == "full", context=n, rows=extra_rows
    )


def build(model: dict, batch_size: int, sequence_length: int, overrides: dict, steps: int,
          prefix_length: int = PREFIX_LENGTH) -> tuple:
    """(run, info): run() does `steps` jitted train steps on one fixed batch, state donated.

    info holds the compile seconds (lower + compile, excluded from timings), the
    trainable parameter count and XLA's temporary buffers of the compiled step (bytes;
    None where the backend does not say). JSON-able arguments, so `isolated` can call it too.
    """
    exp, state = train.create(variant_config(model, batch_size, overrides, prefix_length))
    batch = random_batch(batch_size, sequence_length, model["vocab_size"])
    rng = jax.random.key(0)
    train_fn, _ = train.make_step_fns(exp)
    start = time.perf_counter()
    compiled = train_fn.lower(state, batch, rng).compile()
    analysis = compiled.memory_analysis()
    info = {
        "compile_seconds": time.perf_counter() - start,
        "trainable_params": prefix.num_params(trainable.partition(state.params, exp.labels)[0]),
        "temp_bytes": analysis.temp_size_in_bytes if analysis else None,
    }
    holder = {"state": state}

    def run():
        for _ in range(steps):
            holder["state"], metrics = compiled(holder["state"], batch, rng)
        return metrics["loss"]

    return run, info


def run_fn(**kwargs):
    """`build`'s run alone: the entry `isolated` calls in a fresh process."""
    return build(**kwargs)[0]


def benchmark(size: str, repetitions: int, steps: int, peak_size: int, peak_dtype: str, memory: bool = True) -> dict:
    """Every variant timed in alternation, with a [peak_size, peak_size] matmul for the peak.

    `memory` adds one fresh process per variant for its peak memory (slow at any size).
    """
    model, shape = common.MODELS[size], SHAPES[size]
    batch_size, length = shape["batch_size"], shape["sequence_length"]
    tokens_per_step = batch_size * length
    runners, infos = {}, {}
    for name, overrides in VARIANTS.items():
        runners[name], infos[name] = build(model, batch_size, length, overrides, steps)
        runners[name]()  # Warm-up.
    runners[PEAK], peak_flops = common.matmul(peak_size, getattr(jnp, peak_dtype))
    seconds = common.interleaved_medians(runners, repetitions)
    peak = {"size": peak_size, "dtype": peak_dtype, "seconds": seconds[PEAK], "flops_per_second": peak_flops / seconds[PEAK]}
    del runners  # Free the states before the memory subprocesses start.
    rows = {}
    for name, overrides in VARIANTS.items():
        tokens_per_second = tokens_per_step * steps / seconds[name]
        flops = flops_per_token(model, length, overrides)
        rows[name] = {
            "step_seconds": seconds[name] / steps,
            "tokens_per_second": tokens_per_second,
            "speedup_vs_full": seconds[FULL] / seconds[name],
            "flops_per_token": flops,
            "flop_bound_speedup_vs_full": flops_per_token(model, length, VARIANTS[FULL]) / flops,
            "achieved_flops_per_second": flops * tokens_per_second,
            "fraction_of_matmul_peak": flops * tokens_per_second / peak["flops_per_second"],
            **infos[name],
        }
        if memory:
            kwargs = dict(model=model, batch_size=batch_size, sequence_length=length, overrides=overrides, steps=1)
            rows[name]["memory"] = isolated.run_isolated(__name__, "run_fn", kwargs, repetitions=2)["memory"]
    if memory:
        for row in rows.values():
            row["memory_vs_full"] = row["memory"]["train_bytes"] / rows[FULL]["memory"]["train_bytes"]
    return {
        "benchmark": "train_step",
        "size": size,
        "model": common.as_run(model),
        "batch_size": batch_size,
        "sequence_length": length,
        "prefix_length": PREFIX_LENGTH,
        "repetitions": repetitions,
        "steps_per_repetition": steps,
        "matmul_peak": peak,
        "results": rows,
    }


def to_markdown(results: dict) -> str:
    memory = all("memory" in r for r in results["results"].values())
    header = ["variant", "trainable params", "step (ms)", "tokens/s", "vs full FT", "FLOP bound",
              "GFLOP/token", "of matmul peak", "compile (s)"]
    header += ["train memory (MiB)", "peak RSS (MiB)", "memory vs full"] if memory else []
    rows = []
    for name, r in results["results"].items():
        row = [name, f"{r['trainable_params']:,}", f"{1e3 * r['step_seconds']:.1f}", f"{r['tokens_per_second']:.0f}",
               f"{r['speedup_vs_full']:.2f}x", f"{r['flop_bound_speedup_vs_full']:.2f}x",
               f"{r['flops_per_token'] / 1e9:.4f}", f"{100 * r['fraction_of_matmul_peak']:.1f}%",
               f"{r['compile_seconds']:.1f}"]
        if memory:
            row += [common.mib(r["memory"]["train_bytes"]), common.mib(r["memory"]["peak_bytes"]),
                    f"{r['memory_vs_full']:.2f}x"]
        rows.append(row)
    peak = results["matmul_peak"]
    intro = (
        f"Train step, model {results['model']}, batch {results['batch_size']} x {results['sequence_length']} tokens, "
        f"prefix length {results['prefix_length']}; median of {results['repetitions']} interleaved rounds of "
        f"{results['steps_per_repetition']} steps. Matmul peak: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s "
        f"({peak['dtype']} {peak['size']}x{peak['size']} dot, timed in the same rounds).\n\n"
    )
    return intro + common.markdown_table(header, rows)
