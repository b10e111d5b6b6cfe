"""Paper setting: prefix-tune BART-large on XSUM (Li & Liang 2021, Table 2).

Command (from the repo root; /path/to/bart-large is a Hugging Face facebook/bart-large
directory with config.json, model.safetensors and tokenizer.json; data/xsum holds
Li & Liang's {train,val,test}.source/.target, or use --config.data.name=tfds:xsum):
  python -m prefix_jax.main --config=experiments/xsum_bart_large.py:/path/to/bart-large \\
      --workdir=workdir/xsum_bart_large --config.data.train_path=data/xsum \\
      --config.data.dev_path=data/xsum --config.data.test_path=data/xsum
then `decode` with the same flags and --config.decode.split=test for the test
generations and ROUGE-1/2/L (test_metrics.json / .md).
Result: not yet run (the paper reports R-1/R-2/R-L 43.80/20.93/36.05 for prefix tuning,
as recalled; check Table 2).

Where each value comes from. The stored copy of the official code
(github.com/XiangLi1999/PrefixTuning, seq2seq/) could not be read for this file, so
values marked [unverified] are recollections of it or of the paper, to check before
quoting results:
  * BART-large dimensions: facebook/bart-large's config.json (convert.load_params refuses
    a checkpoint of another shape, so a wrong value cannot go unnoticed).
  * prefix length 100 [unverified: Appendix A as read for the brief; the official README's
    xsum command is recalled as --preseqlen 200, and Fig. 4 peaks at 200 for summarisation].
  * learning rate 5e-5, 30 epochs [unverified: Appendix A / README --learning_rate 0.00005
    --epoch 30].
  * batch 16 [unverified: README --bsz 16, recalled with --gradient_accumulation_step 3,
    which this code does not implement: the effective batch may have been 48].
  * reparameterisation width 800 [unverified: README --mid_dim 800; 512 for table-to-text].
  * max source 512, max target 60 for train/dev, 100 at test: the Hugging Face seq2seq
    example arguments the official seq2seq code inherits (max_source_length,
    max/val_max/test_max_target_length) [unverified]. Their 100 counts the decoder start and
    BOS, hence 98 new tokens here.
  * token-mean cross-entropy, no warmup, no weight decay, linear decay, AdamW eps 1e-8,
    gradient clipping 1.0: the Hugging Face seq2seq finetune.py / lightning_base defaults
    [unverified]; their seed default 42 [unverified].
  * beam 6, length normalisation 0.8: the paper's decoding section for summarisation
    [unverified]; no_repeat_ngram_size 3 and early stopping: facebook/bart-large's generation
    defaults, which a generate() call without them inherits [unverified].
  * 204,017 training pairs (one epoch, for the step count) [unverified: the line count of
    Li & Liang's train.source; set train.num_steps yourself if yours differs].
"""

import math
import os

from experiments import common

# facebook/bart-large (406M).
BART_LARGE = dict(vocab_size=50265, encoder_layers=12, decoder_layers=12, num_heads=16, d_model=1024, d_ff=4096,
                  max_len=1024, scale_embedding=False)
TRAIN_PAIRS, BATCH, EPOCHS = 204_017, 16, 30


def get_config(arg=None):
    if not arg:
        raise ValueError(
            "Give the Hugging Face BART-large directory after the config file, e.g. "
            "--config=experiments/xsum_bart_large.py:/path/to/bart-large"
        )
    config = common.base_config()
    config.model = common.bart_model(**BART_LARGE)
    config.hf_checkpoint = arg
    config.prefix.update(kind="kv", length=100, reparam_dim=800, init="random")
    config.train.update(
        lr=5e-5, warmup_steps=0, num_steps=EPOCHS * math.ceil(TRAIN_PAIRS / BATCH), batch_size=BATCH,
        seed=42, loss_per="token", log_every=100, eval_every=5000,
    )
    config.data.update(
        name="xsum", train_path="data/xsum", dev_path="data/xsum", test_path="data/xsum",
        tokenizer=os.path.join(arg, "tokenizer.json"), bucket_size=64, max_source_len=512, max_target_len=60,
    )
    config.checkpoint.every = 1000
    config.decode.update(strategy="beam", beam_size=6, length_penalty=0.8, no_repeat_ngram_size=3,
                         early_stopping=True, max_new_tokens=98, batch_size=10)
    return config
