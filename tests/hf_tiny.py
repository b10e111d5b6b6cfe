"""Tiny randomly initialised Hugging Face models and their logits, for the parity tests.

Import only after `pytest.importorskip("torch")` and `("transformers")`.
"""

import numpy as np
import torch
import transformers


def sharpen(model, scale=5.0):
    """Scales every weight: the 0.02 initialisers give near-uniform attention, which would
    let wrong masks or positions pass unnoticed."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def gpt2(tie=True, seed=0, vocab_size=97, n_positions=64):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=vocab_size, n_positions=n_positions, tie_word_embeddings=tie,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    return sharpen(transformers.GPT2LMHeadModel(config).eval())


def logits(model, tokens, mask=None, **kwargs):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(np.asarray(tokens)),
            attention_mask=None if mask is None else torch.tensor(np.asarray(mask)),
            **kwargs,
        )
    return out.logits.numpy()


def batch(vocab=97, seed=0):
    """tokens [3, 9] and a right-padded attention mask (rows of 9, 6 and 3 tokens)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (3, 9))
    mask = np.ones((3, 9), np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return tokens, mask


def max_diff(ours, theirs, mask):
    """Largest |difference| over real (unpadded) positions."""
    return float(np.abs(np.asarray(ours) - theirs)[np.asarray(mask).astype(bool)].max())


def llama(seed=0, tie=False):
    """4 query heads sharing 2 key/value heads (grouped-query attention)."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
        tie_word_embeddings=tie, rope_theta=1000.0,
    )
    return sharpen(transformers.LlamaForCausalLM(config).eval(), scale=3.0)


def bart(seed=0):
    torch.manual_seed(seed)
    config = transformers.BartConfig(
        vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
    )
    model = sharpen(transformers.BartForConditionalGeneration(config).eval(), scale=3.0)
    with torch.no_grad():  # A visible final_logits_bias, so a converter that dropped it would fail.
        model.final_logits_bias.normal_()
    return model
