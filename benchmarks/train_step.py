"""Train-step throughput of each prefix kind against full fine-tuning, in one run.

  python -m benchmarks.train_step --out=benchmarks/results/cpu

Every variant trains the same model on the same batch; steps are timed in
alternation, compilation is timed separately, and the table reports tokens/s
and the ratio to full fine-tuning. The FLOP bound for prefix vs full is about
1.5x: prefix training skips the weight-gradient matmuls (1/3 of a full step).
"""

import time

import jax
import jax.numpy as jnp
from absl import app, flags

from benchmarks import common
from experiments import tiny
from prefix_jax import prefix, train, trainable

_STEPS = flags.DEFINE_integer("steps", 5, "Train steps per timed call.")

MODELS = {
    "toy": dict(vocab_size=64, num_layers=2, num_heads=2, d_model=32, d_ff=64, max_len=32),
    "small": dict(vocab_size=8192, num_layers=4, num_heads=4, d_model=256, d_ff=1024, max_len=256),
}
SHAPES = {"toy": dict(batch_size=4, sequence_length=16), "small": dict(batch_size=16, sequence_length=128)}
VARIANTS = {  # name -> config overrides
    "full fine-tuning": {"prefix.kind": "none", "train.mode": "full"},
    "prefix hidden (efficient)": {"prefix.kind": "hidden"},
    "prefix hidden (literal)": {"prefix.kind": "hidden", "prefix.literal": True},
    "prefix kv": {"prefix.kind": "kv"},
    "prefix kv + reparam (512)": {"prefix.kind": "kv", "prefix.reparam_dim": 512},
    "prompt tuning": {"prefix.kind": "prompt"},
}
PREFIX_LENGTH = 10


def random_batch(batch_size: int, length: int, vocab_size: int) -> dict:
    """Random tokens, no padding, loss on the second half (a source/target split)."""
    tokens = jax.random.randint(jax.random.key(0), (batch_size, length), 0, vocab_size)
    loss_mask = jnp.broadcast_to(jnp.arange(length) >= length // 2, (batch_size, length))
    return {
        "tokens": tokens,
        "attention_mask": jnp.ones((batch_size, length), jnp.int32),
        "loss_mask": loss_mask.astype(jnp.float32),
    }


def variant_config(size: str, overrides: dict):
    config = tiny.get_config()
    config.model.update(MODELS[size])
    config.prefix.length = PREFIX_LENGTH
    config.train.batch_size = SHAPES[size]["batch_size"]
    for path, value in overrides.items():
        section, key = path.split(".")
        config[section][key] = value
    return config


def benchmark(size: str, repetitions: int, steps: int) -> dict:
    shape = SHAPES[size]
    batch = random_batch(shape["batch_size"], shape["sequence_length"], MODELS[size]["vocab_size"])
    tokens_per_step = int(batch["tokens"].size)
    rng = jax.random.key(0)
    runners, compile_seconds, trainable_params = {}, {}, {}
    for name, overrides in VARIANTS.items():
        exp, state = train.create(variant_config(size, overrides))
        train_fn, _ = train.make_step_fns(exp)
        start = time.perf_counter()
        compiled = train_fn.lower(state, batch, rng).compile()
        compile_seconds[name] = time.perf_counter() - start
        trainable_params[name] = prefix.num_params(trainable.partition(state.params, exp.labels)[0])
        holder = {"state": state}

        def run(compiled=compiled, holder=holder):
            for _ in range(steps):
                holder["state"], metrics = compiled(holder["state"], batch, rng)
            return metrics["loss"]

        run()  # Warm-up.
        runners[name] = run
    seconds = common.interleaved_medians(runners, repetitions)
    full = seconds["full fine-tuning"]
    rows = {
        name: {
            "step_seconds": seconds[name] / steps,
            "tokens_per_second": tokens_per_step * steps / seconds[name],
            "speedup_vs_full": full / seconds[name],
            "compile_seconds": compile_seconds[name],
            "trainable_params": trainable_params[name],
        }
        for name in VARIANTS
    }
    return {
        "benchmark": "train_step",
        "size": size,
        "model": MODELS[size],
        "batch_size": shape["batch_size"],
        "sequence_length": batch["tokens"].shape[1],
        "prefix_length": PREFIX_LENGTH,
        "repetitions": repetitions,
        "steps_per_repetition": steps,
        "environment": common.environment(),
        "results": rows,
    }


def to_markdown(results: dict) -> str:
    header = ["variant", "trainable params", "step (ms)", "tokens/s", "vs full FT", "compile (s)"]
    rows = [
        [name, f"{r['trainable_params']:,}", f"{1e3 * r['step_seconds']:.1f}",
         f"{r['tokens_per_second']:.0f}", f"{r['speedup_vs_full']:.2f}x", f"{r['compile_seconds']:.1f}"]
        for name, r in results["results"].items()
    ]
    env = results["environment"]
    intro = (
        f"Train step, model {results['model']}, batch {results['batch_size']} x "
        f"{results['sequence_length']} tokens, prefix length {results['prefix_length']}; "
        f"median of {results['repetitions']} interleaved rounds of {results['steps_per_repetition']} "
        f"steps. jax {env['jax']} on {env['backend']} ({env['cpu_count']} CPUs).\n\n"
    )
    return intro + common.markdown_table(header, rows)


def main(argv):
    del argv
    results = benchmark(common.SIZE.value, common.REPETITIONS.value, _STEPS.value)
    table = to_markdown(results)
    common.write_results(common.OUT.value, "train_step", results, table)
    print(table)


if __name__ == "__main__":
    app.run(main)
