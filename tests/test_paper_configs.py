"""The paper-setting configs (GPT-2 medium, BART-large) hold the paper's hyper-parameters (no torch needed)."""

import pytest

from experiments import dart_gpt2_medium, e2e_gpt2_medium, methods, webnlg_gpt2_medium, xsum_bart_large
from prefix_jax import train
from prefix_jax.models import bart, gpt2
from test_baselines import trained_params


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
    assert config.base_weights == "/models/gpt2-medium"
    assert config.data.tokenizer == "/models/gpt2-medium/tokenizer.json"
    assert (config.train.lr, config.prefix.length, config.train.batch_size) == (lr, length, batch)
    assert config.train.num_steps == steps and config.prefix.reparam_dim == 512
    assert (config.train.loss_per, config.train.warmup_steps, config.train.seed) == ("sequence", 0, 101)
    d = config.decode
    assert (d.strategy, d.beam_size, d.min_new_tokens, d.ban_newlines, d.max_new_tokens) == ("beam", 5, 5, True, 100)
    with pytest.raises(ValueError, match="Give the Hugging Face GPT-2 medium directory"):
        module.get_config()


def test_xsum_bart_large_config():
    config = xsum_bart_large.get_config("/models/bart-large")
    assert train.model_config(config) == bart.BartConfig(
        vocab_size=50265, encoder_layers=12, decoder_layers=12, num_heads=16, d_model=1024, d_ff=4096, max_len=1024
    )
    assert config.base_weights == "/models/bart-large" and config.data.tokenizer == "/models/bart-large/tokenizer.json"
    assert (config.prefix.kind, config.prefix.length, config.prefix.reparam_dim) == ("kv", 200, 800)
    assert (config.train.lr, config.train.batch_size, config.train.num_steps) == (5e-5, 48, 30 * 4251)
    assert (config.data.name, config.data.max_source_len, config.data.max_target_len) == ("xsum", 512, 60)
    d = config.decode
    assert (d.strategy, d.beam_size, d.length_penalty, d.no_repeat_ngram_size, d.max_new_tokens) == ("beam", 6, 0.8, 3, 98)
    with pytest.raises(ValueError, match="Give the Hugging Face BART-large directory"):
        xsum_bart_large.get_config()
    config.lock()  # As main.py loads it: a GPT-2 field on a BART model is unknown.
    with pytest.raises(AttributeError, match="num_layers"):
        config.model.num_layers = 3


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_table_row_has_a_gpt2_medium_config(method):
    """One config per (method, data set): the method's trainable set, the baselines' own
    hyper-parameters, adapters at the paper's 0.1% / 3% of GPT-2 medium."""
    config = webnlg_gpt2_medium.get_config(f"/models/gpt2-medium,{method}")
    share = trained_params(config) / 354_823_168
    want_share = {"ft": (1.0, 1.0), "ft-top2": (0.07, 0.08), "adapter-0.1": (0.0009, 0.0011),
                  "adapter-3": (0.029, 0.031), "emb-1": (2.8e-6, 2.9e-6)}
    low, high = want_share.get(method, (0, 0.1))
    assert low <= share <= high, share
    lr, batch, steps = {"ft": (1e-5, 6, 10 * 3005), "ft-top2": (5e-5, 9, 10 * 2003),
                        "adapter-0.1": (5e-5, 5, 10 * 3605), "adapter-3": (5e-5, 5, 5 * 3605)}.get(method, (5e-5, 5, 5 * 3605))
    assert (config.train.lr, config.train.batch_size, config.train.num_steps) == (lr, batch, steps)
    assert config.base_weights == "/models/gpt2-medium"


def test_gpt2_medium_config_argument_errors():
    with pytest.raises(ValueError, match="Unknown method 'lora'"):
        e2e_gpt2_medium.get_config("/models/gpt2-medium,lora")
    assert e2e_gpt2_medium.get_config("/models/gpt2-medium").prefix.kind == "kv"
