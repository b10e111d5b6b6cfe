"""Ships a pre-training run (full mode) as a base-model directory the experiments load.

  python -m prefix_jax.main export_base --config=experiments/pretrain_base_lm.py \
      --workdir=workdir/base_lm --out=data/base_lm

Writes `base_model.safetensors` + `base_model.json` (models/weights.py) from the run's
best checkpoint, its `tokenizer.json`, and `heldout.txt`: the first dev-split
documents of the corpus (about `heldout_tokens` tokens), a fixed slice small
enough to ship, on which the tests check the perplexity stays as recorded.
Perplexities are measured on the stored (float16-rounded) weights.
"""

import math
import os

import ml_collections
import numpy as np
from absl import logging

from prefix_jax import loop
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.models import weights
from prefix_jax.train import evaluate_loss, make_step_fns


def perplexity(run: loop.Run, params: dict, path: str) -> float:
    """exp(mean next-token NLL) over the `block_len` blocks of a corpus file."""
    c = run.config
    blocks = pipeline.encode_text(path, tokenizer_lib.load(c.data.tokenizer), c.data.block_len)
    batches = pipeline.Batches(blocks, c.train.batch_size, c.data.bucket_size, seed=0, shuffle=False,
                               max_width=c.model.max_len)
    _, eval_fn = make_step_fns(run.exp)
    return math.exp(evaluate_loss(eval_fn, params, run.sharded(batches)))


def write_heldout(dev_path: str, tokenizer, out_path: str, num_tokens: int) -> None:
    """The first dev documents holding at least `num_tokens` tokens, in the corpus format."""
    separator = f"\n{tokenizer_lib.EOS}\n"
    with open(dev_path, encoding="utf-8") as f:
        documents = f.read().split(separator)
    lengths = np.cumsum([len(e.ids) + 1 for e in tokenizer.encode_batch(documents, add_special_tokens=False)])
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(separator.join(documents[: int(np.searchsorted(lengths, num_tokens)) + 1]))


def export_base(config: ml_collections.ConfigDict, workdir: str, out: str, heldout_tokens: int = 16384) -> dict:
    """Writes the base-model directory `out` from `workdir`'s best checkpoint; returns its base_model.json."""
    if config.train.mode != "full":
        raise ValueError(f"Only a full-training run is a base model; this config trains {config.train.mode!r}.")
    run = loop.setup(config, workdir, train_data=False, dev_data=False)
    params, meta = loop.restore_best(run)
    stored = {"base": weights.round_trip(params["base"])}
    os.makedirs(out, exist_ok=True)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    heldout = os.path.join(out, "heldout.txt")
    write_heldout(config.data.dev_path, tokenizer, heldout, heldout_tokens)
    record = {
        "step": meta["step"],
        "tokens_seen": meta["step"] * config.train.batch_size * config.data.block_len,
        "dev_perplexity": perplexity(run, stored, config.data.dev_path),
        "heldout_perplexity": perplexity(run, stored, heldout),
    }
    saved = weights.save(out, config.model.to_dict(), stored["base"], extra=record)
    weights.load(out, config.model.to_dict())  # Refuses the directory unless it reads back intact.
    logging.info("Wrote %s", out)
    return saved
