"""Shared settings of the paper-setting runs: prefix-tune GPT-2 medium (Li & Liang 2021, Table 1).

Not a config file itself: `experiments/{e2e,webnlg,dart}_gpt2_medium.py` call `get_config`
with their data set and the hyper-parameters of the paper's Appendix A. Their settings
follow the official code (github.com/XiangLi1999/PrefixTuning, gpt2/train_e2e.py): the
reparameterisation MLP of width 512 (`mid_dim`), no dropout, no weight decay, no warmup,
linear decay, AdamW, gradient clipping at 1.0 (Hugging Face Trainer's defaults), seed 101,
dev evaluation every 5000 steps. The base weights are a Hugging Face GPT-2 medium
directory (config.json, model.safetensors, tokenizer.json) the user supplies: nothing is
downloaded.
"""

import math
import os

import ml_collections

from prefix_jax import sharding

# GPT-2 medium (355M); convert.load_params refuses a checkpoint of another shape.
GPT2_MEDIUM = dict(vocab_size=50257, num_layers=24, num_heads=16, d_model=1024, d_ff=4096, max_len=1024)


def get_config(
    hf_checkpoint, *, data: dict, lr: float, prefix_length: int, batch_size: int, epochs: int, train_pairs: int,
):
    """The run's config; `train_pairs` (input, reference) pairs make one epoch."""
    if not hf_checkpoint:
        raise ValueError(
            "Give the Hugging Face GPT-2 medium directory after the config file, e.g. "
            "--config=experiments/e2e_gpt2_medium.py:/path/to/gpt2-medium"
        )
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(
        dict(**GPT2_MEDIUM, dropout_rate=0.0, tie_embeddings=True, hf_checkpoint=hf_checkpoint)
    )
    config.prefix = ml_collections.ConfigDict(
        dict(kind="kv", length=prefix_length, reparam_dim=512, literal=False, init="random", init_tokens=())
    )
    config.train = ml_collections.ConfigDict(
        dict(
            mode="prefix",
            top_k=0,
            lr=lr,
            warmup_steps=0,
            num_steps=epochs * math.ceil(train_pairs / batch_size),
            batch_size=batch_size,
            weight_decay=0.0,
            adam_b1=0.9,
            adam_b2=0.999,
            adam_eps=1e-8,
            grad_clip_norm=1.0,
            seed=101,
            log_every=100,
            eval_every=5000,
        )
    )
    config.data = ml_collections.ConfigDict(
        dict(
            **data,
            tfds_data_dir="",
            tokenizer=os.path.join(hf_checkpoint, "tokenizer.json"),
            bucket_size=64,
            num_train=0,
            num_dev=0,
        )
    )
    config.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True))
    config.decode = ml_collections.ConfigDict(dict(max_new_tokens=100, batch_size=16))
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    config.sharding = ml_collections.ConfigDict(dict(rules=sharding.DEFAULT_RULES))
    return config
