"""Paper setting: prefix-tune GPT-2 medium on DART (Li & Liang 2021, Table 1).

Hyper-parameters (Appendix A as we read it; not checked against the official code,
whose README only gives the WebNLG command): prefix length 10, lr 5e-5, batch 5,
10 epochs of DART v1.1.1's 62,659 training pairs (12,532 steps an epoch),
reparameterisation width 512. The paper used an earlier DART release.

The data is not shipped: pass dart-v1.1.1-full-{train,dev}.json.

Command (from the repo root; /path/to/gpt2-medium is a Hugging Face GPT-2 medium
directory with config.json, model.safetensors and tokenizer.json):
  python -m prefix_jax.main --config=experiments/dart_gpt2_medium.py:/path/to/gpt2-medium \
      --workdir=workdir/dart_gpt2_medium \
      --config.data.train_path=/path/to/dart-v1.1.1-full-train.json \
      --config.data.dev_path=/path/to/dart-v1.1.1-full-dev.json
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
        data=dict(name="dart", train_path="", dev_path=""),
        prefix=dict(lr=5e-5, epochs=10, batch_size=5, length=10),
        baselines={
            "ft": dict(lr=1e-5, epochs=10, batch_size=6),
            "ft-top2": dict(lr=5e-5, epochs=5, batch_size=5),
            "adapter-0.1": dict(lr=8e-5, epochs=5, batch_size=5),
            "adapter-3": dict(lr=5e-5, epochs=5, batch_size=5),
        },
        train_pairs=62659,
    )
