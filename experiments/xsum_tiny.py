"""Smoke setting: prefix-tune a random tiny BART (2 + 2 layers, byte-level) on XSUM-format files.

Exercises the encoder-decoder path end to end (three-sided prefix, frozen base, loss on
decoder labels, checkpoints, resume, cached decoding, ROUGE) in seconds; a random base
gives the prefix little to steer, so the scores mean nothing. The tests run it on a
handful of generated lines.

Command (from the repo root; DIR holds {train,val,test}.source/.target, one line each):
  python -m prefix_jax.main --config=experiments/xsum_tiny.py:DIR --workdir=workdir/xsum_tiny
  python -m prefix_jax.main decode --config=experiments/xsum_tiny.py:DIR --workdir=workdir/xsum_tiny \\
      --config.decode.split=test
Result: none to quote. On tests/test_seq2seq.py's generated lines dev loss falls
(5.56 -> 5.38 in a few steps) and decoding writes ROUGE files, but the random base generates
empty summaries: it checks the plumbing, not quality.
"""

from experiments import common


def get_config(arg=None):
    if not arg:
        raise ValueError("Give the XSUM directory after the config file: --config=experiments/xsum_tiny.py:DIR")
    config = common.base_config()
    config.model = common.bart_model(d_model=32, d_ff=64, max_len=256)
    config.prefix.update(kind="kv", length=5, reparam_dim=32)
    config.train.update(lr=5e-3, warmup_steps=0, num_steps=30, batch_size=4, eval_every=15, log_every=5)
    config.data.update(name="xsum", train_path=arg, dev_path=arg, test_path=arg, bucket_size=32,
                       max_source_len=128, max_target_len=32)
    config.checkpoint.every = 15
    config.decode.update(max_new_tokens=24, batch_size=4)
    return config
