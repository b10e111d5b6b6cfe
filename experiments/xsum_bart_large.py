"""Paper setting: prefix-tune BART-large on XSUM (Li & Liang 2021, Table 2).

Command (from the repo root; /path/to/bart-large, which becomes config.base_weights, is a
Hugging Face facebook/bart-large directory with config.json, model.safetensors and
tokenizer.json; data/xsum holds Li & Liang's {train,val,test}.source/.target, or use
--config.data.name=tfds:xsum):
  python -m prefix_jax.main --config=experiments/xsum_bart_large.py:/path/to/bart-large \\
      --workdir=workdir/xsum_bart_large --config.data.train_path=data/xsum \\
      --config.data.dev_path=data/xsum --config.data.test_path=data/xsum
then `decode` with the same flags and --config.decode.split=test for the test
generations and ROUGE-1/2/L (test_metrics.json / .md).
Result: not yet run (the paper reports R-1/R-2/R-L 43.80/20.93/36.05 for prefix tuning,
as recalled; check Table 2).

Where each value comes from. The official code's README (github.com/XiangLi1999/
PrefixTuning) gives the command `python train_bart.py --mode xsum --preseqlen 200
--do_train yes --fp16 yes --bsz 16 --epoch 30 --gradient_accumulation_step 3
--learning_rate 0.00005 --mid_dim 800`:
  * prefix length 200, lr 5e-5, 30 epochs, reparameterisation width 800: from it.
  * batch 48: its 16 x 3 gradient-accumulation steps as one batch (shard it over the mesh's
    data axis). With the token-mean loss this weights tokens over all 48 sequences at once
    rather than averaging three 16-sequence means: the same gradient up to target lengths.
  * BART-large dimensions: facebook/bart-large's config.json (convert.load_params refuses
    a checkpoint of another shape).
  * max source 512, max target 60 for train/dev, 100 at test, beam 6, no_repeat_ngram_size
    3: the Hugging Face seq2seq example arguments the official code inherits, as other
    XSUM prefix-tuning reproductions also pass them (e.g. --max_source_length 512
    --max_target_length 60 --test_max_target_length 100 --num_beams 6
    --no_repeat_ngram_size 3). Their 100 counts the decoder start and BOS, hence 98 new
    tokens here.
  * length normalisation 0.8, early stopping: facebook/bart-large's generation defaults for
    XSUM-style use [unverified].
  * token-mean cross-entropy, no warmup, no weight decay, linear decay, AdamW eps 1e-8,
    gradient clipping 1.0, seed 42: the Hugging Face seq2seq finetune.py /
    lightning_base defaults [unverified].
  * 204,017 training pairs (one epoch, for the step count) [unverified: the line count of
    Li & Liang's train.source; set train.num_steps yourself if yours differs].
"""

import math
import os

from experiments import common

# facebook/bart-large (406M).
BART_LARGE = dict(vocab_size=50265, encoder_layers=12, decoder_layers=12, num_heads=16, d_model=1024, d_ff=4096,
                  max_len=1024, scale_embedding=False)
TRAIN_PAIRS, BATCH, EPOCHS = 204_017, 48, 30


def get_config(arg=None):
    if not arg:
        raise ValueError(
            "Give the Hugging Face BART-large directory after the config file, e.g. "
            "--config=experiments/xsum_bart_large.py:/path/to/bart-large"
        )
    config = common.base_config()
    config.model = common.bart_model(**BART_LARGE)
    config.base_weights = arg
    config.prefix.update(kind="kv", length=200, reparam_dim=800, init="random")
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
