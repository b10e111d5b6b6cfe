"""Smoke setting: prefix-tune a random tiny Llama (2 layers, 4 query / 2 key-value heads) on WebNLG.

Exercises the Llama family end to end (RoPE, grouped-query K/V prefixes through Li & Liang's
reparameterisation, frozen base, checkpoints, resume, dev loss, cached decoding, export to a
PEFT adapter) in about a minute; a random base gives the prefix nothing to steer, so the
scores mean nothing.

Commands (from the repo root):
  python -m prefix_jax.main --config=experiments/tiny_llama.py --workdir=workdir/tiny_llama
  python -m prefix_jax.main eval --config=experiments/tiny_llama.py --workdir=workdir/tiny_llama
  python -m prefix_jax.main decode --config=experiments/tiny_llama.py --workdir=workdir/tiny_llama
  python -m prefix_jax.main export --config=experiments/tiny_llama.py --workdir=workdir/tiny_llama \\
      --out=workdir/tiny_llama/peft_adapter
Variants: --config.prefix.kind=hidden|prompt|infix (reparam_dim=0 for hidden and prompt),
--config.train.mode=full|top_k|adapter with --config.prefix.kind=none (and model.adapter_dim).
Result: none to quote; tests/test_llama_family.py runs these commands on a slice of the data.
"""

from experiments import common


def get_config(arg=None):
    config = common.base_config(arg)
    config.model = common.llama_model(max_len=512)
    config.prefix.update(kind="kv", length=5, reparam_dim=32)
    config.train.update(lr=5e-3, warmup_steps=0, num_steps=40, batch_size=8, eval_every=20, log_every=10)
    config.data.update(num_train=256, num_dev=32, bucket_size=64)
    config.checkpoint.every = 20
    config.decode.update(max_new_tokens=32, batch_size=8, after_training=True)
    return config
