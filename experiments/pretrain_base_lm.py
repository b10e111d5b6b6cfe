"""Pre-trains the embedded base model (data/base_lm) from scratch, full training mode.

A 4-layer GPT-2-style causal LM on freely licensed English (prefix_jax/data/corpus.py:
Shakespeare, Milton, WordNet glosses, FOLDOC, the Jargon File, fortunes) with its own
4096-token byte-level BPE. Rebuild (2 CPU cores):
  python -m prefix_jax.data.corpus --out=corpus
  python -m prefix_jax.main --config=experiments/pretrain_base_lm.py --workdir=workdir/base_lm
  python -m prefix_jax.main export_base --config=experiments/pretrain_base_lm.py --workdir=workdir/base_lm --out=data/base_lm
Result (2 CPU cores, shared part of the time): 800 steps, 6.55 M tokens, 3,081 s of training at
2.1 k tokens/s; dev loss 8.376 -> 4.153, dev perplexity 63.6 (float16 weights as shipped).
Model card: data/base_lm/README.md.
"""

from experiments import common


def get_config(arg=None):
    config = common.base_config(arg)
    config.model = common.base_lm_model()
    config.prefix.kind = "none"
    config.train.update(
        mode="full", lr=1.5e-3, warmup_steps=80, num_steps=800, batch_size=32, weight_decay=0.1,
        adam_b2=0.98, log_every=50, eval_every=200,
    )
    config.data.update(
        name="text", train_path="corpus/train.txt", dev_path="corpus/dev.txt",
        tokenizer="corpus/tokenizer.json", block_len=256, bucket_size=256,
    )
    config.checkpoint.every = 200
    return config
