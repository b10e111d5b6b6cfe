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
Result: not yet run.
"""

from experiments import gpt2_medium_common


def get_config(arg=None):
    return gpt2_medium_common.get_config(
        arg,
        data=dict(name="dart", train_path="", dev_path=""),
        lr=5e-5,
        prefix_length=10,
        batch_size=5,
        epochs=10,
        train_pairs=62659,
    )
