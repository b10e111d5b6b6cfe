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
Result: not yet run.
"""

from experiments import gpt2_medium_common


def get_config(arg=None):
    return gpt2_medium_common.get_config(
        arg,
        data=dict(
            name="webnlg",
            train_path="data/webnlg2017_train_dev.tar.xz",
            dev_path="data/webnlg2017_train_dev.tar.xz",
        ),
        lr=5e-5,
        prefix_length=5,
        batch_size=5,
        epochs=5,
        train_pairs=18025,
    )
