"""The prefix server under load: many tasks mixed in one stream against one task, and
against serving one task at a time; batch-1 latency against Hugging Face + PEFT.

The server (`python -m prefix_jax.main serve`) runs the default job's model
(`experiments/webnlg_smollm2.py`, SmolLM2-135M; preset toy: experiments/tiny_llama.py) in
its own process with T random kv prefixes of the job's length (PEFT adapters; speed does not
depend on what a prefix learned). A closed loop of `rows` concurrent clients (aiohttp) sends
the job's first dev inputs as prompts, greedy, `ignore_eos` so every request generates the
same number of tokens:

  mixed, T tasks       requests of T tasks interleaved in one stream (continuous batching)
  one task at a time   the same requests grouped by task, a group at a time (what a server
                       without per-row prefixes must do: one task's requests per batch)

Throughput: generated tokens / wall time of the whole load, the median of interleaved
rounds. Latency: each request's end-to-end time, p50 and p99 over every round. Batch 1: one streamed request alone, the median gap between
its tokens, against the per-token slope of Hugging Face `generate` with a PEFT prefix
(hf_decode.py's measurement, batch 1, same process). A warm-up load compiles every shape first.
"""

import asyncio
import os
import tempfile
import time

import aiohttp
import jax
import numpy as np

from benchmarks import common, default_job, hf_decode, peft_torch
from prefix_jax import loop, peft_adapter, server, train
from prefix_jax import prefix as prefix_lib
from prefix_jax.models import families

TASK_COUNTS = (1, 4, 16)
SETTINGS = {  # preset -> requests in a load, new tokens each, concurrent clients (= server rows)
    "toy": dict(requests=16, max_tokens=8, rows=4),
    "smollm2": dict(requests=48, max_tokens=32, rows=16),
}
CONFIG_FILES = {"toy": "experiments/tiny_llama.py", "smollm2": "experiments/webnlg_smollm2.py"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _preset(size: str) -> str:
    return "toy" if common.is_toy(size) else "smollm2"


def write_adapters(config, count: int, directory: str) -> dict:
    """`count` random kv prefixes of the job's length, as PEFT adapters; {name: path}."""
    model = families.get(config.model.family).make(train.model_config(config))
    spec = prefix_lib.PrefixSpec("kv", config.prefix.length)
    paths = {}
    for i in range(count):
        paths[f"task{i}"] = os.path.join(directory, f"task{i}")
        kv = prefix_lib.init_random(spec, model.config.prefix_geometry, jax.random.key(i))
        peft_adapter.save(paths[f"task{i}"], spec, kv, model)
    return paths


async def _complete(session, url: str, body: dict) -> tuple[float, int]:
    start = time.perf_counter()
    async with session.post(url + "/v1/completions", json=body) as response:
        answer = await response.json()
    if response.status != 200:
        raise RuntimeError(f"The server answered {response.status}: {answer}")
    return time.perf_counter() - start, answer["usage"]["completion_tokens"]


async def _load(url: str, bodies: list, concurrency: int) -> tuple[list, float]:
    """A closed loop of `concurrency` clients working through `bodies` in order: each
    request's (seconds, tokens), and the wall time."""
    queue, results = list(reversed(bodies)), []

    async def client(session):
        while queue:
            results.append(await _complete(session, url, queue.pop()))

    start = time.perf_counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return results, time.perf_counter() - start


def _summary(rounds: list) -> dict:
    """rounds: [(every request's (seconds, tokens), wall)] of one load; the median round's
    throughput, latency percentiles over every round's requests."""
    latencies = np.array([seconds for results, _ in rounds for seconds, _ in results])
    speeds = [sum(n for _, n in results) / wall for results, wall in rounds]
    return {"requests": len(rounds[0][0]), "tokens": sum(n for _, n in rounds[0][0]), "rounds": len(rounds),
            "tokens_per_second": float(np.median(speeds)), "tokens_per_second_rounds": speeds,
            "p50_seconds": float(np.percentile(latencies, 50)), "p99_seconds": float(np.percentile(latencies, 99))}


def _run_load(url: str, groups: list, concurrency: int) -> tuple[list, float]:
    """Groups one after another (one task at a time), or one group (a mixed stream)."""
    runs = [asyncio.run(_load(url, group, concurrency)) for group in groups]
    return [r for results, _ in runs for r in results], sum(wall for _, wall in runs)


async def _token_gaps(url: str, body: dict) -> list:
    """The seconds between consecutive streamed events of one request alone."""
    times = []
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/completions", json={**body, "stream": True}) as response:
            async for line in response.content:
                if line.startswith(b"data: {"):
                    times.append(time.perf_counter())
    return list(np.diff(times))


def _hf_peft_batch1(config, preset: str, repetitions: int) -> float:
    """Hugging Face generate + PEFT prefix, batch 1: per-token seconds (slope between two lengths)."""
    short, long = hf_decode.NEW_TOKENS[preset]
    tokens, mask = hf_decode.sources(config, 1)
    runners, _ = hf_decode._torch_runners(hf_decode._hf_peft_model(config), tokens, mask, (short, long))
    # At least 5 rounds: a single round's slope can come out negative on the toy model (seen in CI).
    seconds = common.interleaved_medians({n: runners[(hf_decode.HF, n)] for n in (short, long)}, max(5, repetitions))
    return common.per_token_seconds(seconds[short], seconds[long], short, long)


def benchmark(size: str, repetitions: int, task_counts: tuple = TASK_COUNTS) -> dict:
    preset = _preset(size)
    s = SETTINGS[preset]
    config = default_job.job_config(size)
    prompts = [e.source for e in loop.distinct_inputs(config.data, "dev")[: s["requests"]]]
    prompts = (prompts * s["requests"])[: s["requests"]]
    body = lambda task, prompt: {"model": task, "prompt": prompt, "max_tokens": s["max_tokens"], "temperature": 0,
                                 "ignore_eos": True}
    with tempfile.TemporaryDirectory() as directory:
        adapters = write_adapters(config, max(task_counts), directory)
        process, url = server.launch(CONFIG_FILES[preset], adapters, {"serve.rows": s["rows"], "serve.max_queue": 4096},
                                     os.path.join(directory, "server.log"), cwd=ROOT)
        try:
            names = sorted(adapters, key=lambda n: int(n[4:]))
            warm = [body(names[i % len(names)], p) for i, p in enumerate(prompts)]
            asyncio.run(_load(url, warm, s["rows"]))  # Compiles every prefill width and step size.
            plans = {}
            for count in task_counts:
                mixed = [body(names[i % count], p) for i, p in enumerate(prompts)]
                plans[f"mixed, {count} task(s)"] = [mixed]
                if count > 1:  # A group per task, one after another, each as concurrent as it can be.
                    plans[f"one task at a time, {count} tasks"] = [
                        [b for b in mixed if b["model"] == names[t]] for t in range(count)]
            rounds = {name: [] for name in plans}
            for _ in range(repetitions):  # Interleaved rounds: a load change hits every plan alike.
                for name, groups in plans.items():
                    rounds[name].append(_run_load(url, groups, s["rows"]))
            loads = {name: _summary(runs) for name, runs in rounds.items()}
            gaps = asyncio.run(_token_gaps(url, body(names[0], prompts[0]) | {"max_tokens": 48}))
        finally:
            process.terminate()
            process.wait(120)
    single = loads["mixed, 1 task(s)"]["tokens_per_second"]
    for row in loads.values():
        row["throughput_vs_single_task"] = row["tokens_per_second"] / single
    batch1 = {"server_per_token_seconds": float(np.median(gaps))}
    if peft_torch.available():
        batch1["hf_peft_per_token_seconds"] = _hf_peft_batch1(config, preset, repetitions)
        batch1["latency_vs_hf_peft"] = batch1["server_per_token_seconds"] / batch1["hf_peft_per_token_seconds"]
    return {"benchmark": "serve", "size": size, "base_weights": config.base_weights or "random",
            "prefix_length": config.prefix.length, **s, "threads": os.cpu_count(), "loads": loads, "batch1": batch1}


def to_markdown(results: dict) -> str:
    header = ["load", "requests", "tokens/s", "vs one task", "p50 latency (s)", "p99 latency (s)"]
    rows = [[name, r["requests"], f"{r['tokens_per_second']:.1f}", f"{r['throughput_vs_single_task']:.3f}x",
             f"{r['p50_seconds']:.2f}", f"{r['p99_seconds']:.2f}"] for name, r in results["loads"].items()]
    b = results["batch1"]
    intro = (
        f"The server on base {results['base_weights']}, kv prefixes of length {results['prefix_length']}, "
        f"{results['rows']} rows; {results['requests']} requests of {results['max_tokens']} greedy tokens each "
        f"(ignore_eos), {results['rows']} concurrent clients over HTTP, {results['threads']} CPUs shared by server "
        f"and clients; tokens/s: median of {next(iter(results['loads'].values()))['rounds']} interleaved rounds.\n\n"
        f"Batch 1, one streamed request alone: {1000 * b['server_per_token_seconds']:.1f} ms per token"
    )
    if "hf_peft_per_token_seconds" in b:
        intro += (f"; Hugging Face generate + PEFT prefix: {1000 * b['hf_peft_per_token_seconds']:.1f} ms "
                  f"({b['latency_vs_hf_peft']:.2f}x)")
    return intro + ".\n\n" + common.markdown_table(header, rows)
