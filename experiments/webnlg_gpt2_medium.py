"""Paper setting: prefix-tune GPT-2 medium on WebNLG 2017 (Li & Liang 2021, Table 1).

Hyper-parameters (Appendix A; the official code's README gives the same command,
`--preseqlen 5 --epoch 5 --learning_rate 0.00005 --mode webnlg --bsz 5`): prefix
length 5, lr 5e-5, batch 5, 5 epochs of the 18,025 training pairs marked "good"
(3,605 steps an epoch), reparameterisation width 512.

Command (from the repo root; /path/to/gpt2-medium is a Hugging Face GPT-2 medium
directory with config.json, model.safetensors and tokenizer.json):
  python -m prefix_jax.main --config=experiments/webnlg_gpt2_medium.py:/path/to/gpt2-medium \
      --workdir=workdir/webnlg_gpt2_medium
then `decode` (same flags) for generations and BLEU/METEOR/TER (seen/unseen/all), `export --out=DIR` for a
PEFT adapter.
Baseline rows (`,METHOD` after the directory; ft, ft-top2, adapter-0.1, adapter-3 with
the numbers below, the ablations prefix-hidden, emb-1, emb-10, infix with the prefix's):
the baselines' learning rates, epochs and batch sizes are Appendix A's as we recall it
(no copy of the paper here to check against);
ft's (lr 1e-5, 10 epochs, batch 6) is also the official code's (train_e2e.py's
default finetuned_model_path); check the others against the paper before quoting a row.
Result: not yet run.
"""

from experiments import gpt2_medium_common

# Appendix A's settings: the prefix's (also the ablations') and each baseline's.
PREFIX = dict(lr=5e-5, epochs=5, batch_size=5, length=5)
BASELINES = {
    "ft": dict(lr=1e-5, epochs=10, batch_size=6),
    "ft-top2": dict(lr=5e-5, epochs=10, batch_size=9),
    "adapter-0.1": dict(lr=5e-5, epochs=10, batch_size=5),
    "adapter-3": dict(lr=5e-5, epochs=5, batch_size=5),
}


def get_config(arg=None):
    return gpt2_medium_common.get_config(
        arg,
        data=dict(
            name="webnlg",
            train_path="data/webnlg2017_train_dev.tar.xz",
            dev_path="data/webnlg2017_train_dev.tar.xz",
        ),
        prefix=PREFIX,
        baselines=BASELINES,
        train_pairs=18025,
    )
