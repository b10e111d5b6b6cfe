"""One row of Li & Liang's WebNLG comparison (Table 1; sections 6.3, 7.1-7.3) on the embedded base model.

The argument names the method and, optionally, the sweep point:
  --config=experiments/webnlg_small_row.py:METHOD[,length=N][,size=N][,seed=N]
length is the prefix / EMB / infix length, size the number of WebNLG training inputs
(low-data runs: 0 = all), seed the training seed (prefix init, adapter init, batch
order; the low-data subset is the first `size` inputs whatever the seed).

Methods (experiments/methods.py; the embedded 4-layer model has 4,339,200 base parameters):
  ft           full fine-tuning                                   lr 5e-4
  ft-top2      fine-tune the top 2 layers (FT-top2)               lr 5e-4
  adapter-0.1  Houlsby adapters r=1:  6,152 params (0.14%)        lr 2e-3
  adapter-3    Houlsby adapters r=32: 133,376 params (3.07%)      lr 2e-3
  prefix-kv    K/V prefix, reparameterised (512), n=10 (default)  lr 2e-3
  prefix-hidden  hidden-state prefix, n=10                        lr 2e-3
  emb-1, emb-10  EMB-n: n soft tokens at the embedding layer only (= prompt tuning)  lr 2e-3
  infix        [x; INFIX; y], K/V reparameterised (512), n=10     lr 2e-3
r = 1 is the smallest adapter; 0.1% of this model would be r = 0.7. The learning rates of
prefix-kv (2e-3, best of {5e-4, 2e-3, 8e-3}) and ft (5e-4) come from webnlg_small.py; the
others reuse them by kind (parameter-efficient 2e-3, whole-layer fine-tuning 5e-4) and
are not tuned. Low-data runs (size > 0) train 200 steps (a few hundred pairs make an
epoch of a handful of batches; 200 steps are 6 epochs of 500 inputs, 64 of 50) and take
dev loss before and after only: on 2 CPU cores a dev pass costs as much as the training.

Every run decodes dev greedily at the end (an infix too: prefix_jax/decode.py).
Command (2 CPU cores, ~15 min each for full data):
  python -m prefix_jax.main --config=experiments/webnlg_small_row.py:adapter-3 \
      --workdir=workdir/webnlg_small_table/adapter-3
Every run of the table and sweeps: python -m experiments.webnlg_small_table.
Result (reports/webnlg_small: every run, 2 CPU cores; dev, greedy; best dev loss, BLEU):
  ft 0.999, 41.44; ft-top2 2.040, 25.67; adapter-3 3.445, 7.11; adapter-0.1 4.477, 2.40;
  prefix-kv 4.071, 2.94 (length 1/5/20/40: 4.573/4.253/3.864/3.689); prefix-hidden 4.637,
  1.83; emb-1 5.054, 0.05; emb-10 4.756, 1.72; infix 4.142, 3.27. Unlike the paper, FT
  and adapters (3%) beat prefix-tuning by far on this 4 M-parameter base model; the report
  says where the ordering agrees, where not, and why that may be.
"""

from experiments import methods, webnlg_small

EFFICIENT_LR, FT_LR = 2e-3, 5e-4
ADAPTER_DIMS = {"adapter-0.1": 1, "adapter-3": 32}
METHODS = methods.METHODS


def get_config(arg=None):
    method, options = methods.parse_row(arg)
    config = webnlg_small.get_config()
    methods.apply(config, method, ADAPTER_DIMS)
    config.train.lr = FT_LR if method in methods.WHOLE_LAYERS else EFFICIENT_LR
    if "length" in options:
        config.prefix.length = options["length"]
    if options.get("size"):
        config.data.num_train = options["size"]
        config.train.update(num_steps=200, eval_every=200, warmup_steps=20)
        config.checkpoint.every = 200
    if "seed" in options:
        config.train.seed = options["seed"]
    return config
