"""Shared settings of the paper-setting runs on GPT-2 medium (Li & Liang 2021, Tables 1 and 4).

Not a config file itself: `experiments/{e2e,webnlg,dart}_gpt2_medium.py` call `get_config`
with their data set and the hyper-parameters of the paper's Appendix A, for prefix-tuning
and for each baseline row. The config argument is the GPT-2 medium directory (it becomes
config.base_weights) and, optionally, a method of experiments/methods.py (one config per
table row):
  --config=experiments/webnlg_gpt2_medium.py:/path/to/gpt2-medium            # prefix-kv
  --config=experiments/webnlg_gpt2_medium.py:/path/to/gpt2-medium,adapter-3  # a baseline

Settings follow the official code (github.com/XiangLi1999/PrefixTuning, gpt2/train_e2e.py):
the reparameterisation MLP of width 512 (`mid_dim`), no dropout, no weight decay, no
warmup, linear decay, AdamW, gradient clipping at 1.0 (Hugging Face Trainer's defaults),
seed 101, dev evaluation every 5000 steps, and the loss summed over each sequence's target
tokens (train_e2e.py's default `--objective_mode 1`; `train.loss_per="sequence"`). The base
weights are a Hugging Face GPT-2 medium directory (config.json, model.safetensors,
tokenizer.json) the user supplies: nothing is downloaded.
"""

import math
import os

from experiments import common, methods

# GPT-2 medium (355M); convert.load_params refuses a checkpoint of another shape.
GPT2_MEDIUM = dict(vocab_size=50257, num_layers=24, num_heads=16, d_model=1024, d_ff=4096, max_len=1024)
# Adapter widths for the paper's 0.1% and 3%: 2 adapters a layer of 2*1024*r + r + 1024 numbers
# give 344,208 (0.097%) and 10,671,168 (3.01%) of GPT-2 medium's 354,823,168 parameters.
ADAPTER_DIMS = {"adapter-0.1": 3, "adapter-3": 108}


def parse_arg(arg) -> tuple[str, str]:
    """"PATH[,METHOD]" -> (Hugging Face directory, method of experiments/methods.py; default prefix-kv)."""
    path, _, method = (arg or "").partition(",")
    if not path:
        raise ValueError(
            "Give the Hugging Face GPT-2 medium directory after the config file, e.g. "
            "--config=experiments/e2e_gpt2_medium.py:/path/to/gpt2-medium (then ,METHOD for a baseline row)"
        )
    return path, methods.check(method or "prefix-kv")


def get_config(arg, *, data: dict, prefix: dict, baselines: dict, train_pairs: int):
    """The run's config for the method named in `arg` ("PATH[,METHOD]").

    prefix: the prefix's hyper-parameters, dict(lr, epochs, batch_size, length); the
    ablations (prefix-hidden, emb-n, infix) use them too. baselines: {method: dict(lr,
    epochs, batch_size)} for ft, ft-top2 and the adapters. `train_pairs` (input,
    reference) pairs make one epoch.
    """
    base_weights, method = parse_arg(arg)
    hparams = baselines[method] if method in baselines else prefix
    config = common.base_config()
    config.model.update(GPT2_MEDIUM)
    config.base_weights = base_weights
    config.prefix.update(kind="kv", length=prefix["length"], reparam_dim=512, init="random")
    methods.apply(config, method, ADAPTER_DIMS)
    config.train.update(
        lr=hparams["lr"],
        warmup_steps=0,
        num_steps=hparams["epochs"] * math.ceil(train_pairs / hparams["batch_size"]),
        batch_size=hparams["batch_size"],
        seed=101,
        loss_per="sequence",
        log_every=100,
        eval_every=5000,
    )
    config.data.update(**data, tokenizer=os.path.join(base_weights, "tokenizer.json"))
    config.checkpoint.every = 1000
    # Li & Liang decode table-to-text with beam search (beam 5), at least 5 tokens, no newlines.
    config.decode.update(max_new_tokens=100, strategy="beam", beam_size=5, min_new_tokens=5, ban_newlines=True)
    return config
