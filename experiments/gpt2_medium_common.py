"""Shared settings of the paper-setting runs: prefix-tune GPT-2 medium (Li & Liang 2021, Table 1).

Not a config file itself: `experiments/{e2e,webnlg,dart}_gpt2_medium.py` call `get_config`
with their data set and the hyper-parameters of the paper's Appendix A. Their settings
follow the official code (github.com/XiangLi1999/PrefixTuning, gpt2/train_e2e.py): the
reparameterisation MLP of width 512 (`mid_dim`), no dropout, no weight decay, no warmup,
linear decay, AdamW, gradient clipping at 1.0 (Hugging Face Trainer's defaults), seed 101,
dev evaluation every 5000 steps, and the loss summed over each sequence's target tokens
(train_e2e.py's default `--objective_mode 1`; `train.loss_per="sequence"`). The base weights are a Hugging Face GPT-2 medium
directory (config.json, model.safetensors, tokenizer.json) the user supplies: nothing is
downloaded.
"""

import math
import os

from experiments import common

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
    config = common.base_config()
    config.model.update(GPT2_MEDIUM)
    config.hf_checkpoint = hf_checkpoint
    config.prefix.update(kind="kv", length=prefix_length, reparam_dim=512, init="random")
    config.train.update(
        lr=lr,
        warmup_steps=0,
        num_steps=epochs * math.ceil(train_pairs / batch_size),
        batch_size=batch_size,
        seed=101,
        loss_per="sequence",
        log_every=100,
        eval_every=5000,
    )
    config.data.update(**data, tokenizer=os.path.join(hf_checkpoint, "tokenizer.json"))
    config.checkpoint.every = 1000
    # Li & Liang decode table-to-text with beam search (beam 5).
    config.decode.update(max_new_tokens=100, strategy="beam", beam_size=5)
    return config
