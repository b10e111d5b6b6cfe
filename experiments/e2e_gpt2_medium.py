"""Paper setting: prefix-tune GPT-2 medium on E2E NLG (Li & Liang 2021, Table 1).

Hyper-parameters (Appendix A): prefix length 5, lr 8e-5, batch 10, 5 epochs of the
42,061 training pairs (4,207 steps an epoch), reparameterisation width 512.

The training set is not shipped: pass Li & Liang's src1_train.txt or the official
trainset.csv with --config.data.train_path. Dev is the vendored original dev set.

Command (from the repo root; /path/to/gpt2-medium is a Hugging Face GPT-2 medium
directory with config.json, model.safetensors and tokenizer.json):
  python -m prefix_jax.main --config=experiments/e2e_gpt2_medium.py:/path/to/gpt2-medium \
      --workdir=workdir/e2e_gpt2_medium --config.data.train_path=/path/to/e2e/trainset.csv
then `decode` (same flags) for generations and BLEU/NIST/METEOR/ROUGE-L/CIDEr, `export --out=DIR` for a
PEFT adapter.
Baseline rows (`,METHOD` after the directory; ft, ft-top2, adapter-0.1, adapter-3 with
the numbers below, the ablations prefix-hidden, emb-1, emb-10, infix with the prefix's):
the baselines' learning rates, epochs and batch sizes are Appendix A's as we recall it
(no copy of the paper here to check against);
none of them is in the official code; check them against the paper before quoting a row.
Result: not yet run.
"""

from experiments import gpt2_medium_common


def get_config(arg=None):
    return gpt2_medium_common.get_config(
        arg,
        data=dict(name="e2e", train_path="", dev_path="data/e2e_original_valid.txt.xz"),
        prefix=dict(lr=8e-5, epochs=5, batch_size=10, length=5),
        baselines={
            "ft": dict(lr=5e-5, epochs=5, batch_size=10),
            "ft-top2": dict(lr=5e-5, epochs=5, batch_size=10),
            "adapter-0.1": dict(lr=8e-5, epochs=10, batch_size=5),
            "adapter-3": dict(lr=5e-5, epochs=5, batch_size=5),
        },
        train_pairs=42061,
    )
