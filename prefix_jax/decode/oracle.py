"""Greedy decoding by full recomputation: the reference every faster decoder must match.

Sources are left-padded into a fixed buffer [batch, source_len + max_new_tokens];
each step reruns the model on the whole buffer (causal attention makes the
not-yet-written slots irrelevant) and appends the argmax at every row's next
slot. One shape, one compilation, O(steps) forward passes: simple and exact, not
fast. It is the oracle the cached decoders are tested against (decoder-only models).
"""

import functools

import jax
import jax.numpy as jnp

from prefix_jax import prefix as prefix_lib
from prefix_jax.decode.serving import check_length


@functools.partial(jax.jit, static_argnames=("model", "spec", "max_new_tokens", "eos_id"))
def greedy(params, tokens, attention_mask, *, model, spec, max_new_tokens: int, eos_id: int):
    """New tokens [batch, max_new_tokens]; after a row's EOS the rest is EOS.

    params: {"base": ..., "prefix": ...}; tokens, attention_mask: [batch, source_len],
    left-padded. Input rows get positions 0.. from their first real token, as in training.
    """
    batch, source_len = tokens.shape
    check_length(source_len, max_new_tokens, spec.length if spec is not None and spec.kind == "infix" else 0,
                  model.config.max_len)
    buffer = jnp.concatenate([tokens, jnp.zeros((batch, max_new_tokens), tokens.dtype)], axis=1)
    mask = jnp.concatenate([attention_mask, jnp.zeros((batch, max_new_tokens), attention_mask.dtype)], axis=1)
    # Every slot's position once all are written; a slot not yet written is never read (causal).
    positions = jnp.maximum(jnp.cumsum(mask.at[:, source_len:].set(1), axis=1) - 1, 0)
    new_slots = jnp.broadcast_to(jnp.arange(buffer.shape[1]) >= source_len, buffer.shape)  # Targets, for an infix.
    inputs = {"positions": positions, **prefix_lib.model_inputs(
        spec, params.get("prefix", {}), model.config.prefix_geometry, loss_mask=new_slots, positions=positions)}

    def step(t, carry):
        buffer, mask, done = carry
        logits = model.apply({"params": params["base"]}, buffer, attention_mask=mask, **inputs)
        chosen = jnp.argmax(logits[:, source_len + t - 1], axis=-1).astype(buffer.dtype)
        chosen = jnp.where(done, eos_id, chosen)
        buffer = buffer.at[:, source_len + t].set(chosen)
        mask = mask.at[:, source_len + t].set(1)
        return buffer, mask, done | (chosen == eos_id)

    buffer, _, _ = jax.lax.fori_loop(0, max_new_tokens, step, (buffer, mask, jnp.zeros((batch,), bool)))
    return buffer[:, source_len:]


