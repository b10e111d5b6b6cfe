"""The fast decoders: a static-shape KV cache, the prefix compiled once, any family.

The family's `prefill` runs the sources (an encoder-decoder: encodes them, then runs the
decoder's start tokens) and fills the cache; its `step` feeds one token per row; a search
strategy (search.py) drives them. For decoder-only models every row may read its own
task's prefix from a bank (`serving.prefix_bank`, `task_ids=`). An infix ([x; INFIX; y],
Li & Liang section 7.2) decodes as it trains: the source rows do not see it, the
source's last row (which predicts the first new token) and every new row do, and those
rows' positions are shifted by the infix's length.
"""

import functools

import jax

from prefix_jax.decode import search, serving
from prefix_jax.models import families


def _check_inputs(model, served, tokens, attention_mask, new_tokens: int, start_tokens) -> None:
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask {attention_mask.shape} must have the tokens' shape {tokens.shape}.")
    max_len = model.config.max_len
    if len(start_tokens):  # An encoder-decoder: sources and the decoder's rows are apart.
        serving.check_length(tokens.shape[1], 0, 0, max_len)
        serving.check_length(len(start_tokens), new_tokens, 0, max_len)
    else:
        serving.check_length(tokens.shape[1], new_tokens, served["mask"].shape[1] if "infix" in served else 0, max_len)


def forward(base_params, served: dict, tokens, attention_mask, *, model, task_ids=None):
    """Logits [batch, source_len, vocab] of left-padded sources through the serving path
    (decoder-only). One forward serves every row, each with its own task's prefix when
    task_ids is given; the decoders' prefill is exactly this."""
    _check_inputs(model, served, tokens, attention_mask, 0, ())
    served = serving.route(served, task_ids, tokens.shape[0], model.config.prefix_geometry)
    return _forward(base_params, served, tokens, attention_mask, model=model)


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(base_params, served, tokens, attention_mask, *, model):
    return families.of(model).prefill(model, base_params, served, tokens, attention_mask, 0)[0]


def generate(base_params, served: dict, tokens, attention_mask, *, model, options: search.Options,
             eos_id: int, task_ids=None, rng=None, start_tokens=()):
    """New tokens [batch, max_new_tokens] (EOS after a row's end), decoded with a KV cache.

    served: `serving.serve(...)` or a `serving.prefix_bank(...)`; task_ids: [batch] ints naming
    each row's task in the bank (None: the bank must hold one task, shared by all rows).
    tokens, attention_mask: [batch, source_len]: a decoder-only model's sources left-padded
    (positions as in training and the oracle), an encoder's as in training. start_tokens: the
    decoder's first tokens, for an encoder-decoder (`pipeline.decoder_prompt`); generated
    tokens follow them. rng: a key, needed for strategy='sample'.
    """
    _check_inputs(model, served, tokens, attention_mask, options.max_new_tokens, start_tokens)
    served = serving.route(served, task_ids, tokens.shape[0], model.config.prefix_geometry)
    if options.strategy == "sample" and rng is None:
        raise ValueError("strategy='sample' needs an rng key.")
    if rng is None:
        rng = jax.random.key(0)  # Unused by greedy and beam search.
    return _generate(base_params, served, tokens, attention_mask, rng, model=model, options=options, eos_id=eos_id,
                     start_tokens=tuple(int(t) for t in start_tokens))


@functools.partial(jax.jit, static_argnames=("model", "options", "eos_id", "start_tokens"))
def _generate(base_params, served, tokens, attention_mask, rng, *, model, options, eos_id, start_tokens):
    family = families.of(model)
    logits, rows, context = family.prefill(
        model, base_params, served, tokens, attention_mask, options.max_new_tokens, start_tokens, last_only=True
    )
    step = lambda rows, token, t: family.step(model, base_params, served, context, rows, token, t)
    return search.search(step, logits[:, -1], rows, options, eos_id, rng)
