"""How train-step time grows with prefix length, sequence length and model size.

Three sweeps of the preset model (`common.MODELS[size]`), each timed in
alternation within the sweep (fewer rounds than the headline table):

  prefix length   kv prefix, n in PREFIX_LENGTHS (n = 0: the frozen model's step), plus full FT
  sequence length kv prefix (n = 10) and full FT at each length
  model size      kv prefix (n = 10) and full FT for each model of the ladder

Every point reports step time, tokens/s, analytic FLOPs per token and the time
relative to the sweep's first point; the last two sweeps also give prefix / full.
"""

from benchmarks import common, train_step
from experiments import common as experiments_common

PREFIX_LENGTHS = {"toy": (0, 5), "small": (0, 5, 10, 50, 200), "medium": (0, 5, 10, 50, 200), "toy_llama": (0, 5),
                  "smollm2": (0, 10, 200), "llama_medium": (0, 5, 10, 50, 200)}
SEQUENCE_LENGTHS = {"toy": (16,), "small": (32, 64, 128, 256), "medium": (256, 512, 1024), "toy_llama": (16,),
                    "smollm2": (64, 256), "llama_medium": (256, 512, 1024)}


def _model(base: dict, d_model: int, num_layers: int, num_heads: int) -> dict:
    return dict(base, d_model=d_model, num_layers=num_layers, num_heads=num_heads, d_ff=4 * d_model)


LADDERS = {  # name -> model; the preset itself is one rung.
    "toy": {"toy": common.MODELS["toy"]},
    "small": {
        "d128 L2": _model(common.MODELS["small"], 128, 2, 2),
        "d256 L4 (small)": common.MODELS["small"],
        "d384 L6": _model(common.MODELS["small"], 384, 6, 6),
    },
    "medium": {  # GPT-2 small and medium dims.
        "gpt2 (d768 L12)": _model(common.MODELS["medium"], 768, 12, 12),
        "gpt2-medium (d1024 L24)": common.MODELS["medium"],
    },
    "toy_llama": {"toy_llama": common.MODELS["toy_llama"]},
    "smollm2": {"smollm2-135m": common.MODELS["smollm2"]},  # The one real model at hand.
    "llama_medium": {  # SmolLM2-135M's and -360M's dims, random weights.
        "smollm2-135m dims (d576 L30)": dict(experiments_common.smollm2_135m_model().to_dict(), dtype="bfloat16"),
        "smollm2-360m dims (d960 L32)": common.MODELS["llama_medium"],
    },
}
KV = {"prefix.kind": "kv"}
FULL = train_step.VARIANTS[train_step.FULL]


def sweep(points: dict, repetitions: int, steps: int) -> dict:
    """Times every point (name -> `train_step.build` kwargs, without steps) in alternation."""
    runners = {}
    for name, point in points.items():
        runners[name], _ = train_step.build(**point, steps=steps)
        runners[name]()  # Warm-up.
    seconds = common.interleaved_medians(runners, repetitions)
    first = seconds[next(iter(points))]
    return {
        name: {
            "step_seconds": seconds[name] / steps,
            "tokens_per_second": point["batch_size"] * point["sequence_length"] * steps / seconds[name],
            "flops_per_token": train_step.flops_per_token(
                point["model"], point["sequence_length"], point["overrides"], point.get("prefix_length", 0)
            ),
            "time_vs_first": seconds[name] / first,
        }
        for name, point in points.items()
    }


def _prefix_vs_full(rows: dict, keys: list) -> dict:
    """{key: {"prefix kv": row, "full fine-tuning": row, "prefix_speedup_vs_full": x}}."""
    return {
        key: {
            "prefix kv": rows[f"{key} | prefix kv"],
            "full fine-tuning": rows[f"{key} | full"],
            "prefix_speedup_vs_full": rows[f"{key} | full"]["step_seconds"] / rows[f"{key} | prefix kv"]["step_seconds"],
        }
        for key in keys
    }


def benchmark(size: str, repetitions: int, steps: int) -> dict:
    model, shape = common.MODELS[size], train_step.SHAPES[size]
    batch, length, n = shape["batch_size"], shape["sequence_length"], train_step.PREFIX_LENGTH
    point = lambda overrides, **kw: dict(
        dict(model=model, batch_size=batch, sequence_length=length, overrides=overrides, prefix_length=n), **kw
    )
    by_prefix = {f"n={k}": point(KV, prefix_length=k) for k in PREFIX_LENGTHS[size]}
    by_prefix["full fine-tuning"] = point(FULL)
    by_length, by_model = {}, {}
    for s in SEQUENCE_LENGTHS[size]:
        by_length[f"{s} | prefix kv"] = point(KV, sequence_length=s)
        by_length[f"{s} | full"] = point(FULL, sequence_length=s)
    for name, rung in LADDERS[size].items():
        by_model[f"{name} | prefix kv"] = point(KV, model=rung)
        by_model[f"{name} | full"] = point(FULL, model=rung)
    return {
        "benchmark": "scaling",
        "size": size,
        "model": common.as_run(model),
        "batch_size": batch,
        "sequence_length": length,
        "prefix_length": n,
        "repetitions": repetitions,
        "steps_per_repetition": steps,
        "prefix_length_sweep": sweep(by_prefix, repetitions, steps),
        "sequence_length_sweep": _prefix_vs_full(sweep(by_length, repetitions, steps), SEQUENCE_LENGTHS[size]),
        "model_size_sweep": _prefix_vs_full(sweep(by_model, repetitions, steps), list(LADDERS[size])),
        "ladder": LADDERS[size],
    }


def to_markdown(results: dict) -> str:
    prefix_rows = [
        [name, f"{1e3 * r['step_seconds']:.1f}", f"{r['tokens_per_second']:.0f}", f"{r['flops_per_token'] / 1e9:.4f}",
         f"{r['time_vs_first']:.2f}x"]
        for name, r in results["prefix_length_sweep"].items()
    ]
    pair = lambda sweep_rows, label: common.markdown_table(
        [label, "prefix kv step (ms)", "full FT step (ms)", "prefix vs full", "FLOP bound", "prefix time vs first",
         "full time vs first"],
        [
            [key, f"{1e3 * r['prefix kv']['step_seconds']:.1f}", f"{1e3 * r['full fine-tuning']['step_seconds']:.1f}",
             f"{r['prefix_speedup_vs_full']:.2f}x",
             f"{r['full fine-tuning']['flops_per_token'] / r['prefix kv']['flops_per_token']:.2f}x",
             f"{r['prefix kv']['time_vs_first']:.2f}x",
             f"{r['full fine-tuning']['time_vs_first']:.2f}x"]
            for key, r in sweep_rows.items()
        ],
    )
    return (
        f"Scaling, batch {results['batch_size']}; median of {results['repetitions']} interleaved rounds of "
        f"{results['steps_per_repetition']} steps within each sweep.\n\n"
        f"Prefix length (kv prefix, sequence {results['sequence_length']}; time relative to n=0):\n\n"
        + common.markdown_table(["point", "step (ms)", "tokens/s", "GFLOP/token", "time vs n=0"], prefix_rows)
        + "\nn=0 leaves nothing to train, so XLA drops the whole backward pass: that row is the forward and "
        "loss alone (its GFLOP/token still counts a backward).\n"
        + f"\nSequence length (prefix length {results['prefix_length']}):\n\n"
        + pair(results["sequence_length_sweep"], "sequence length")
        + f"\nModel size (sequence {results['sequence_length']}, d_ff = 4 d, dimensions in the JSON's "
        f"ladder):\n\n"
        + pair(results["model_size_sweep"], "model")
    )
