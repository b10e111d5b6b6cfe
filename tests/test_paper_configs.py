"""The GPT-2 medium paper-setting configs hold the paper's hyper-parameters (no torch needed)."""

import pytest

from experiments import dart_gpt2_medium, e2e_gpt2_medium, webnlg_gpt2_medium
from prefix_jax import train
from prefix_jax.models import gpt2


@pytest.mark.parametrize(
    "module, lr, length, batch, steps",
    [
        (e2e_gpt2_medium, 8e-5, 5, 10, 5 * 4207),
        (webnlg_gpt2_medium, 5e-5, 5, 5, 5 * 3605),
        (dart_gpt2_medium, 5e-5, 10, 5, 10 * 12532),
    ],
)
def test_paper_configs(module, lr, length, batch, steps):
    config = module.get_config("/models/gpt2-medium")
    assert train.model_config(config) == gpt2.GPT2Config(
        vocab_size=50257, num_layers=24, num_heads=16, d_model=1024, d_ff=4096, max_len=1024
    )
    assert config.hf_checkpoint == "/models/gpt2-medium" and not config.base_weights
    assert config.data.tokenizer == "/models/gpt2-medium/tokenizer.json"
    assert (config.train.lr, config.prefix.length, config.train.batch_size) == (lr, length, batch)
    assert config.train.num_steps == steps and config.prefix.reparam_dim == 512
    assert (config.train.loss_per, config.train.warmup_steps, config.train.seed) == ("sequence", 0, 101)
    with pytest.raises(ValueError, match="Give the Hugging Face GPT-2 medium directory"):
        module.get_config()
