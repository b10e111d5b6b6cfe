"""Runs one benchmark variant in a fresh process and reports its step time and memory.

Peak memory is a per-process high-water mark, so every variant gets a process of
its own, and JAX and PyTorch variants are measured the same way:

  baseline   resident set after importing the frameworks (`preload`), before building;
  peak       high-water mark of the resident set while training, reset after the
             warm-up call so compilation's transient peak is not counted (Linux
             /proc/self/clear_refs); on an accelerator, the device's peak bytes in use;
  train      peak - baseline: parameters, optimizer state, batch, activations, and what
             building and compiling left resident (freed heap is trimmed first, but XLA's
             compiled executables and caches stay: a fixed cost, not one per token).

Child side (called by `run_isolated`, not by hand):
  python -m benchmarks.isolated '{"module": ..., "function": ..., "kwargs": {...}, ...}'
`module.function(**kwargs)` must return a callable that runs the timed work.
"""

import ctypes
import importlib
import json
import os
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(module: str, function: str, kwargs: dict, *, repetitions: int, preload: tuple = ("jax",),
                 cpus: int = 0, timeout: float = 1800) -> dict:
    """Measures `module.function(**kwargs)()` in a fresh Python process; see the module docstring.

    `cpus` > 0 pins the process to that many of this process's CPUs before any framework
    starts, so XLA's thread pool and torch's threads (`peft_torch.threads`) both see that many.
    """
    spec = dict(module=module, function=function, kwargs=kwargs, repetitions=repetitions, preload=list(preload),
                cpus=cpus)
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.isolated", json.dumps(spec)],
        cwd=_ROOT, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Isolated run of {module}.{function} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _measure(spec: dict) -> dict:
    if spec["cpus"]:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: spec["cpus"]])
    for name in spec["preload"]:
        importlib.import_module(name)
    import jax

    from benchmarks import common

    module = importlib.import_module(spec["module"])
    jax.devices()  # Start the backend (thread pools, allocator) before the baseline.
    baseline = common.read_memory()["rss_bytes"]
    run = getattr(module, spec["function"])(**spec["kwargs"])
    start = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - start
    ctypes.CDLL(None).malloc_trim(0)  # Give back what building and compiling freed (glibc).
    common.reset_peak_memory()
    seconds = common.interleaved_medians({"run": run}, spec["repetitions"])["run"]
    memory = {"baseline_bytes": baseline, **common.read_memory()}
    memory["peak_bytes"] = memory.pop("peak_rss_bytes")
    memory["train_bytes"] = memory["peak_bytes"] - baseline
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats:  # On an accelerator the device's own peak is what matters.
        memory.update(peak_bytes=stats["peak_bytes_in_use"], train_bytes=stats["peak_bytes_in_use"], source="device")
    else:
        memory["source"] = "rss"
    return {"call_seconds": seconds, "first_call_seconds": first, "memory": memory}


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
