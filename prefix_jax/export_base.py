"""Ships a pre-training run (full mode) as a base-model directory the experiments load.

  python -m prefix_jax.export_base --config=experiments/pretrain_base_lm.py \
      --workdir=workdir/base_lm --out=data/base_lm

Writes `model.safetensors` + `config.json` (models/weights.py) from the run's
best checkpoint, its `tokenizer.json`, and `heldout.txt`: the first dev-split
documents of the corpus (about `--heldout_tokens` tokens), a fixed slice small
enough to ship, on which the tests check the perplexity stays as recorded.
Perplexities are measured on the stored (float16-rounded) weights.
"""

import json
import math
import os

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from prefix_jax import loop
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.models import weights
from prefix_jax.train import evaluate_loss, make_step_fns

_CONFIG = config_flags.DEFINE_config_file("config", None, "The pre-training experiment config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The pre-training run's workdir.")
_OUT = flags.DEFINE_string("out", None, "The base-model directory to write.")
_HELDOUT_TOKENS = flags.DEFINE_integer("heldout_tokens", 16384, "Size of the shipped held-out slice.")
flags.mark_flags_as_required(["config", "workdir", "out"])


def perplexity(run: loop.Run, params: dict, path: str) -> float:
    """exp(mean next-token NLL) over the `block_len` blocks of a corpus file."""
    c = run.config
    blocks = pipeline.encode_text(path, tokenizer_lib.load(c.data.tokenizer), c.data.block_len)
    batches = pipeline.Batches(blocks, c.train.batch_size, c.data.bucket_size, seed=0, shuffle=False)
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


def main(argv):
    del argv
    config, out = _CONFIG.value, _OUT.value
    if config.train.mode != "full":
        raise app.UsageError(f"Only a full-training run is a base model; this config trains {config.train.mode!r}.")
    run = loop.setup(config, _WORKDIR.value, train_data=False, dev_data=False)
    params, meta = loop.restore_best(run)
    stored = {"base": weights.round_trip(params["base"])}
    os.makedirs(out, exist_ok=True)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    tokenizer.save(os.path.join(out, "tokenizer.json"))
    heldout = os.path.join(out, "heldout.txt")
    write_heldout(config.data.dev_path, tokenizer, heldout, _HELDOUT_TOKENS.value)
    record = {
        "step": meta["step"],
        "tokens_seen": meta["step"] * config.train.batch_size * config.data.block_len,
        "dev_perplexity": perplexity(run, stored, config.data.dev_path),
        "heldout_perplexity": perplexity(run, stored, heldout),
    }
    saved = weights.save(out, config.model.to_dict(), stored["base"], extra=record)
    weights.load(out, config.model.to_dict())  # Refuses the directory unless it reads back intact.
    logging.info("Wrote %s", out)
    print(json.dumps(saved, indent=2))


if __name__ == "__main__":
    app.run(main)
