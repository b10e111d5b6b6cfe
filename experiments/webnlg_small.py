"""Default: prefix-tune the embedded pre-trained base LM (data/base_lm) on WebNLG 2017.

Li & Liang's table-to-text recipe at small scale: a key/value prefix of length 10
reparameterised by a 512-wide MLP, frozen 4-layer base, the vendored WebNLG 2017
train set (18,102 texts), dev loss during training and, at the end, BLEU, METEOR and TER
of the decoded dev set (generations/dev_metrics.md, the paper's WebNLG layout).

Command (from the repo root; 2 CPU cores):
  python -m prefix_jax.main --config=experiments/webnlg_small.py --workdir=workdir/webnlg_small
Full fine-tuning of the same model on the same data, for comparison:
  python -m prefix_jax.main --config=experiments/webnlg_small.py --workdir=workdir/webnlg_small_ft \
      --config.prefix.kind=none --config.train.mode=full --config.train.lr=5e-4
The learning rate, 2e-3, was the best dev loss of {5e-4, 2e-3, 8e-3} after 200 steps with
--config.train.num_steps=200 --config.data.num_dev=150 --config.decode.after_training=False
(3.934, 3.816, 4.180).
Result (2 CPU cores, one run each; greedy decoding of the 871 distinct dev inputs; BLEU
lowercased against three references, METEOR 1.5, TER in [0, 1], as the WebNLG script):
  prefix tuning: 14 min 41 s in all; dev loss 5.370 -> 4.071; BLEU 2.94, MET 0.06, TER 1.13
    (after the shared attention layer of models/layers.py, same arithmetic in another rounding
    order: dev loss 4.065, BLEU 2.94, MET 0.06, TER 1.17, in .ci/run)
  full fine-tuning: dev loss 5.288 -> 0.999; BLEU 41.44, MET 0.31, TER 0.57
  base model, untrained (lr 0, one step): dev loss 5.288; BLEU 0.05, MET 0.00, TER 1.03
"""

from experiments import common


def get_config(arg=None):
    config = common.base_config(arg)
    config.model = common.base_lm_model()
    config.base_weights = "data/base_lm"
    config.prefix.update(kind="kv", length=10, reparam_dim=512)
    config.train.update(lr=2e-3, warmup_steps=50, num_steps=1500, batch_size=16, log_every=50, eval_every=500)
    config.data.update(tokenizer="data/base_lm/tokenizer.json", bucket_size=32)
    config.checkpoint.every = 500
    config.decode.update(batch_size=32, max_new_tokens=64, after_training=True)
    return config
