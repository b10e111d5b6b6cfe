"""Decode speed: per-token latency of prefix serving, and multi-tenant batching, in one run.

  python -m benchmarks.run --sections=decode

Greedy decoding of the preset model (`common.base_model`; EOS never ends a row, so every call runs all
steps). Per-token latency is the slope between two generation lengths,
(t(long) - t(short)) / (long - short), so the prefill drops out. Variants:

  base model, KV cache            no prefix
  prefix (cached K/V)             hidden prefix compiled once to K/V, shared by all rows
  prefix recomputed each step     the reference decoder with the literal hidden form:
                                  every step reruns the layers on [P; h] for the whole sequence
  base model, recomputed          the reference decoder without a prefix (for scale)

Multi-tenant: k tasks' prefixes (different lengths) in one bank, one batch mixing
them, against k sequential single-task batches of the same rows.
Calls are timed in alternation (median of rounds; the short cached calls in more
rounds, apart from the slow recomputing ones); the first call of each variant
(compilation) is excluded and reported separately as first call minus median.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from prefix_jax import decode, prefix


SHAPES = {  # batch, source length, the two generation lengths, tasks in the multi-tenant batch.
    "toy": dict(batch_size=4, source_length=8, new_tokens=(4, 8), tasks=2),
    "small": dict(batch_size=8, source_length=32, new_tokens=(16, 48), tasks=4),
    "medium": dict(batch_size=8, source_length=128, new_tokens=(32, 96), tasks=4),
    "toy_llama": dict(batch_size=4, source_length=8, new_tokens=(4, 8), tasks=2),
    "smollm2": dict(batch_size=4, source_length=32, new_tokens=(8, 24), tasks=2),
    "llama_medium": dict(batch_size=8, source_length=128, new_tokens=(32, 96), tasks=4),
}
PREFIX_LENGTH = 10
NEVER = -1  # An EOS id no token has: every row runs every step.
CACHED_ROUNDS = 3  # The cached variants get this many times the rounds.


def _timed(runners: dict, repetitions: int) -> tuple[dict, dict]:
    """(median seconds per call, first-call seconds minus that median) for each runner."""
    first = {}
    for name, run in runners.items():
        start = time.perf_counter()
        jax.block_until_ready(run())
        first[name] = time.perf_counter() - start
    medians = common.interleaved_medians(runners, repetitions)
    return medians, {name: max(first[name] - medians[name], 0.0) for name in runners}


def benchmark(size: str, repetitions: int) -> dict:
    shape = SHAPES[size]
    model, base = common.base_model(common.MODELS[size])
    config = model.config
    batch, source_length, tasks = shape["batch_size"], shape["source_length"], shape["tasks"]
    tokens = jax.random.randint(jax.random.key(1), (batch, source_length), 0, config.vocab_size)
    mask = jnp.ones_like(tokens)
    spec = prefix.PrefixSpec(kind="hidden", length=PREFIX_LENGTH)
    literal = prefix.PrefixSpec(kind="hidden", length=PREFIX_LENGTH, literal=True)
    hidden = prefix.init_random(spec, config.prefix_geometry, jax.random.key(2))
    served = decode.serve(spec, hidden, model, base)

    cached_runners, reference_runners = {}, {}
    for steps in shape["new_tokens"]:
        options = decode.Options(max_new_tokens=steps)
        cached = lambda s, o=options: decode.generate(base, s, tokens, mask, model=model, options=o, eos_id=NEVER)
        reference = lambda sp, p, n=steps: decode.greedy(
            {"base": base, "prefix": p}, tokens, mask, model=model, spec=sp, max_new_tokens=n, eos_id=NEVER
        )
        cached_runners[("base model, KV cache", steps)] = lambda c=cached: c({})
        cached_runners[("prefix (cached K/V)", steps)] = lambda c=cached: c(served)
        reference_runners[("prefix recomputed each step", steps)] = lambda r=reference: r(literal, hidden)
        reference_runners[("base model, recomputed", steps)] = lambda r=reference: r(None, {})
    # The cached calls are short and their ratio is the headline: time them apart from the
    # slow reference calls, in more rounds, so that a busy machine's swings average out.
    seconds, compile_seconds = _timed(cached_runners, CACHED_ROUNDS * repetitions)
    more_seconds, more_compile = _timed(reference_runners, repetitions)
    seconds.update(more_seconds)
    compile_seconds.update(more_compile)
    short, long = shape["new_tokens"]
    names = dict.fromkeys(name for name, _ in [*cached_runners, *reference_runners])
    latency = {name: (seconds[(name, long)] - seconds[(name, short)]) / (long - short) for name in names}
    base_latency = latency["base model, KV cache"]
    rows = {
        name: {
            "per_token_seconds": latency[name],
            "tokens_per_second": batch / latency[name],
            "latency_vs_base": latency[name] / base_latency,
            "call_seconds": {str(n): seconds[(name, n)] for n in shape["new_tokens"]},
            "compile_seconds": compile_seconds[(name, long)],
        }
        for name in latency
    }

    # Multi-tenant: tasks of different prefix lengths, rows assigned round-robin.
    lengths = [PREFIX_LENGTH * (1 + t % 2) for t in range(tasks)]
    task_prefixes = [
        decode.serve(
            prefix.PrefixSpec(kind="hidden", length=n), prefix.init_random(
                prefix.PrefixSpec(kind="hidden", length=n), config.prefix_geometry, jax.random.key(10 + t)),
            model, base,
        )
        for t, n in enumerate(lengths)
    ]
    bank = decode.prefix_bank(task_prefixes)
    task_ids = np.arange(batch) % tasks
    options = decode.Options(max_new_tokens=long)
    per_task = [np.flatnonzero(task_ids == t) for t in range(tasks)]
    serving = {
        "one mixed batch": lambda: decode.generate(
            base, bank, tokens, mask, model=model, options=options, eos_id=NEVER, task_ids=task_ids
        ),
        "sequential per task": lambda: [
            decode.generate(base, task_prefixes[t], tokens[rows], mask[rows], model=model, options=options, eos_id=NEVER)
            for t, rows in enumerate(per_task)
        ],
    }
    serving_seconds, serving_compile = _timed(serving, repetitions)
    tenants = {
        name: {
            "call_seconds": serving_seconds[name],
            "tokens_per_second": batch * long / serving_seconds[name],
            "speedup_vs_sequential": serving_seconds["sequential per task"] / serving_seconds[name],
            "compile_seconds": serving_compile[name],
        }
        for name in serving
    }
    return {
        "benchmark": "decode",
        "size": size,
        "model": common.as_run(common.MODELS[size]),
        "batch_size": batch,
        "source_length": source_length,
        "new_tokens": list(shape["new_tokens"]),
        "prefix_length": PREFIX_LENGTH,
        "tasks": tasks,
        "task_prefix_lengths": lengths,
        "repetitions": repetitions,
        "cached_repetitions": CACHED_ROUNDS * repetitions,
        "results": rows,
        "multi_tenant": tenants,
    }


def to_markdown(results: dict) -> str:
    short, long = results["new_tokens"]
    intro = (
        f"Greedy decoding, model {results['model']}, batch {results['batch_size']}, source "
        f"{results['source_length']} tokens, prefix length {results['prefix_length']}; per-token latency is "
        f"the slope between {short} and {long} new tokens; median of interleaved rounds ({results['cached_repetitions']} "
        f"for the cached variants, {results['repetitions']} for the recomputing ones and multi-tenant serving).\n\n"
    )
    latency = common.markdown_table(
        ["variant", "per token (ms)", "tokens/s (batch)", "latency vs base", "compile (s)"],
        [
            [name, f"{1e3 * r['per_token_seconds']:.2f}", f"{r['tokens_per_second']:.0f}",
             f"{r['latency_vs_base']:.2f}x", f"{r['compile_seconds']:.1f}"]
            for name, r in results["results"].items()
        ],
    )
    tenants = common.markdown_table(
        ["serving", f"call ({long} tokens, s)", "tokens/s", "speedup vs sequential", "compile (s)"],
        [
            [name, f"{r['call_seconds']:.3f}", f"{r['tokens_per_second']:.0f}",
             f"{r['speedup_vs_sequential']:.2f}x", f"{r['compile_seconds']:.1f}"]
            for name, r in results["multi_tenant"].items()
        ],
    )
    lengths = ", ".join(map(str, results["task_prefix_lengths"]))
    return (
        intro + latency + f"\nMulti-tenant: {results['tasks']} tasks (prefix lengths {lengths}), "
        f"{results['batch_size']} rows, {long} new tokens.\n\n" + tenants
    )
