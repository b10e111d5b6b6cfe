"""Timing and reporting helpers shared by the benchmarks."""

import json
import os
import platform
import statistics
import time

import jax
from absl import flags

# The flags every benchmark takes, defined once: tests import several benchmarks in one process.
OUT = flags.DEFINE_string("out", "benchmarks/results/cpu", "Directory for JSON and markdown.")
SIZE = flags.DEFINE_enum("size", "small", ["toy", "small"], "Model preset.")
REPETITIONS = flags.DEFINE_integer("repetitions", 7, "Timed rounds (median is reported).")


def environment() -> dict:
    """What a reader needs to judge the numbers: versions, devices, threads."""
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def interleaved_medians(runners: dict, repetitions: int) -> dict:
    """Median seconds per call of each runner, timed in alternation (ABAB...).

    Alternating spreads a noisy machine's slow spells over all runners, so their
    ratios stay meaningful even when absolute times drift.
    """
    times = {name: [] for name in runners}
    for _ in range(repetitions):
        for name, run in runners.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def write_results(out_dir: str, name: str, results: dict, table: str) -> None:
    """Writes `<name>.json` and `<name>.md` under `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(table)


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
