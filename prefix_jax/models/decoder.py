"""The decoder-only driver every such family shares: prefixes, prompts, masks, cached decoding.

A family (gpt2.py, llama.py) supplies its embedding, its pre-norm layers and its head;
`DecoderOnly` runs them with the prefix pytree, one entry per layer:

  * `{"hidden": P}` with P `[n, embed]` or `[batch, n, embed]`: a hidden-state prefix.
    By default only its keys and values are computed (`PreNormBlock.prefix_kv`); with
    `literal_prefix=True` the layer runs on `[P; h]` and the prefix rows are sliced off
    afterwards, exactly as the method is defined. Both agree.
  * `{"key": K, "value": V}` with K, V `[n, kv_heads, head_dim]` (or with a leading batch
    axis): a key/value prefix, as in Li & Liang (2021).
  * `None`: that layer has no prefix.

`prefix_queries=` ([batch, m] bool) says which input rows attend to the prefix (an infix,
Li & Liang section 7.2). `prompt=` prepends soft tokens once, after the embedding, and
passes their outputs on from layer to layer (prompt tuning).

Positions: input rows keep 0..m-1 unless `positions` says otherwise (pass n + arange(m)
for Hugging Face's `past_key_values` convention, as PEFT uses). Prefix, prompt and infix
rows carry no position: learned position tables are not added to them, and under RoPE
they sit at position 0, where the rotation is the identity, so a key/value prefix is
used unrotated (as PEFT's prefix keys are) and the literal form H^l = [P^l; h^l] gives
exactly the keys the efficient form computes.

Decoding (`decode_step`) uses a static-shape KV cache (`layers.empty_cache`): a prefill
writes the prompt and sources, then one token per row per call; the prefix is already
K/V, [groups, n, kv_heads, head_dim] per layer, read once per group of rows.
"""

from typing import Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from prefix_jax.models import adapters, layers

Array = jax.Array
LayerPrefix = Optional[Mapping[str, Array]]


class PreNormBlock(nn.Module):
    """x + A_attn(Attn(N_attn(x))), then x + A_mlp(Mlp(N_mlp(x))), the adapters A only when
    the config has them. A family's block builds `attn` and `mlp` (and its norms, under
    its own parameter names) in setup and says which norm goes where by defining
    `attn_input(x)` = N_attn(x) and `mlp_input(x)` = N_mlp(x)."""

    def prefix_kv(self, hidden_prefix: Array) -> tuple[Array, Array]:
        """Keys and values of hidden-state prefix rows, the only way they reach the input rows
        (their outputs are dropped): N(P) W_k, N(P) W_v, unrotated."""
        return self.attn.key_value(self.attn_input(hidden_prefix))

    def _mlp(self, x, deterministic):
        return x + adapters.adapt(self, "adapter_mlp", self.mlp(self.mlp_input(x), deterministic))

    def __call__(self, x, positions, mask, prefix_kv=None, deterministic=True):
        # x: [batch, len, embed]; mask: [batch, 1, len, n + len].
        self.sow("intermediates", "layer_input", x)
        attended = self.attn(self.attn_input(x), mask, positions, prefix_kv, deterministic=deterministic)
        return self._mlp(x + adapters.adapt(self, "adapter_attn", attended), deterministic)

    def cached(self, x, positions, mask, cache, index, prefix_kv=None):
        """The layer at decode time: x's K/V written at cache slots index..; returns (x, cache)."""
        attended, cache = self.attn(self.attn_input(x), mask, positions, prefix_kv, cache=cache, index=index)
        return self._mlp(x + adapters.adapt(self, "adapter_attn", attended), True), cache


# Activation checkpointing of each layer (`model.remat`): what the backward pass may keep
# from the forward instead of recomputing it. "none" keeps everything (no remat); "full"
# keeps only each layer's input; "dots" keeps matmul outputs that have no batch dimension
# (jax.checkpoint_policies: the weights-by-activation products, not the attention scores).
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> None:
    if remat not in REMAT_POLICIES:
        raise ValueError(f"Unknown model.remat {remat!r}; expected one of {sorted(REMAT_POLICIES)}.")


def make_layers(block: type, config) -> list:
    """`config.num_layers` blocks, each rematerialised under `config.remat`'s policy. The
    same parameters and the same values: remat only trades memory for recomputation."""
    if config.remat != "none":
        # Argument 5 of PreNormBlock.__call__ (self is 0) is `deterministic`, a Python bool.
        block = nn.remat(block, policy=REMAT_POLICIES[config.remat], static_argnums=(5,))
    return [block(config) for _ in range(config.num_layers)]


def _prefix_length(prefix) -> int:
    lengths = {entry[name].shape[-3 if name == "key" else -2]
               for entry in prefix if entry is not None for name in entry if name in ("key", "hidden")}
    if len(lengths) > 1:
        raise ValueError(f"Every layer's prefix must have one length; got {sorted(lengths)}.")
    return lengths.pop() if lengths else 0


class DecoderOnly(nn.Module):
    """Base of the decoder-only families. Subclasses set up `layers` (PreNormBlocks) and define
    `embed(tokens, positions, deterministic)` and `logits(x)`."""

    def _check_num_layers(self, prefix):
        if prefix is None:
            return (None,) * self.config.num_layers
        if len(prefix) != self.config.num_layers:
            raise ValueError(
                f"The prefix has {len(prefix)} entries but the model has "
                f"{self.config.num_layers} layers; give one entry (or None) per layer."
            )
        return prefix

    def prefix_key_values(self, hidden_prefix: Sequence[Array]) -> tuple:
        """Compiles a hidden-state prefix (one [..., n, embed] per layer) to per-layer K/V."""
        self._check_num_layers(hidden_prefix)
        return tuple(
            dict(zip(("key", "value"), layer.prefix_kv(p))) for layer, p in zip(self.layers, hidden_prefix)
        )

    def __call__(
        self,
        tokens: Array,
        *,
        prefix: Optional[Sequence[LayerPrefix]] = None,
        prompt: Optional[Array] = None,
        attention_mask: Optional[Array] = None,
        prefix_mask: Optional[Array] = None,
        prefix_queries: Optional[Array] = None,
        positions: Optional[Array] = None,
        segment_ids: Optional[Array] = None,
        logit_positions: Optional[Array] = None,
        literal_prefix: bool = False,
        deterministic: bool = True,
    ) -> Array:
        """Logits [batch, m, vocab] for the m input tokens (with logit_positions [batch, k]:
        [batch, k, vocab] at those positions only, the ones a loss reads).

        tokens: [batch, m] int. attention_mask: [batch, m], 0 marks padding. segment_ids:
        [batch, m] int, several sequences packed in a row (`pipeline.pack_lm`, with their own
        `positions`): a row attends only within its segment, and to the whole prefix. prefix_mask: [n]
        or [batch, n], 0 marks prefix slots to ignore (prefixes of different lengths padded to
        one n). prefix_queries: [batch, m] bool, the input rows that see the prefix (default
        all; an infix). prompt: [n_prompt, embed] or [batch, n_prompt, embed].
        """
        c = self.config
        batch, m = tokens.shape
        prefix = self._check_num_layers(prefix)
        if prefix_queries is not None and (literal_prefix or prompt is not None):
            raise ValueError("prefix_queries (an infix) needs a K/V prefix; it has no literal form and takes no prompt.")
        if segment_ids is not None and (literal_prefix or prompt is not None or prefix_queries is not None):
            raise ValueError("Packed rows (segment_ids) take a K/V or hidden prefix: no literal form, prompt or infix.")
        if positions is None:
            if m > c.max_len:
                raise ValueError(f"Input length {m} exceeds the model's max_len ({c.max_len}); shorten it.")
            positions = jnp.broadcast_to(jnp.arange(m), (batch, m))
        valid = jnp.ones((batch, m), bool) if attention_mask is None else attention_mask.astype(bool)
        x = self.embed(tokens, positions, deterministic)  # [batch, m, embed]
        num_prompt = 0
        if prompt is not None:  # Soft tokens: prepended once; their outputs go on.
            prompt = layers.with_batch(prompt, batch, 2).astype(x.dtype)
            num_prompt = prompt.shape[1]
            x = jnp.concatenate([prompt, x], axis=1)
            positions = jnp.concatenate([jnp.zeros((batch, num_prompt), positions.dtype), positions], axis=1)
            valid = jnp.concatenate([jnp.ones((batch, num_prompt), bool), valid], axis=1)

        # Masks, once for every layer: [batch, 1, len, len] and, with a prefix, its n columns first.
        length, n = x.shape[1], _prefix_length(prefix)
        mask = layers.causal_mask(valid, length)
        if segment_ids is not None:
            mask &= (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        if any(entry is not None for entry in prefix):
            columns = layers.prefix_columns(prefix_mask, n, batch, length, prefix_queries)
            prefixed = jnp.concatenate([columns, mask], axis=-1)
            if literal_prefix:  # [P; h] as one sequence: prefix rows see each other causally.
                literal = layers.causal_mask(jnp.concatenate([columns[:, 0, 0], valid], axis=1), n + length)
                literal_positions = jnp.concatenate([jnp.zeros((batch, n), positions.dtype), positions], axis=1)
        for layer, entry in zip(self.layers, prefix):
            if entry is None:
                x = layer(x, positions, mask, None, deterministic)
            elif "hidden" in entry and literal_prefix:
                # H^l = [P^l ; h^l]; the layer runs on all n + m rows; only input rows go on.
                hidden = layers.with_batch(entry["hidden"], batch, 2).astype(x.dtype)
                x = layer(jnp.concatenate([hidden, x], axis=1), literal_positions, literal, None, deterministic)[:, n:]
            else:
                if "hidden" in entry:
                    kv = layer.prefix_kv(layers.as_groups(entry["hidden"], 2).astype(x.dtype))
                else:
                    kv = tuple(layers.as_groups(entry[name], 3) for name in ("key", "value"))
                x = layer(x, positions, prefixed, kv, deterministic)
        x = x[:, num_prompt:]
        if logit_positions is not None:  # The head and softmax are ~20% of a step; skip unread rows.
            x = jnp.take_along_axis(x, logit_positions[:, :, None], axis=1)
        return self.logits(x)

    def decode_step(self, tokens, positions, cache, index, cache_valid, *, prefix=None, prefix_valid=None,
                    prefix_queries=None, prompt=None, last_only=False):
        """Runs `tokens` at cache slots `index`.. (after `prompt` rows, if given); jit-safe.

        tokens, positions: [rows, q]. cache: `layers.empty_cache(...)`; index: an int, or [rows]
        ints (each row at its own slot, `layers.write_cache`; the cache may have more rows, the
        first `rows` are used). cache_valid: [rows, cache_len] bool, False for padding; slots
        after a query are masked causally whatever it says. prefix: None or one {"key", "value"} [groups, n, kv_heads, head_dim] (or None)
        per layer, already K/V, with prefix_valid [groups, n]; groups divide rows.
        prefix_queries: [rows, q] bool, the queries that see the prefix (an infix). prompt:
        [groups, n_prompt, embed] soft tokens, given only on the call that fills the cache's
        first slots (the prefill). Returns (logits [rows, q, vocab], or [rows, 1, vocab] for the
        last query alone with last_only, updated cache).
        """
        rows, q = tokens.shape
        x = self.embed(tokens, positions)
        num_prompt = 0
        if prompt is not None:
            if prefix_queries is not None:
                raise ValueError("prefix_queries (an infix) and a prompt do not combine.")
            num_prompt = prompt.shape[1]
            x = jnp.concatenate([jnp.repeat(prompt.astype(x.dtype), rows // prompt.shape[0], axis=0), x], axis=1)
            positions = jnp.concatenate([jnp.zeros((rows, num_prompt), positions.dtype), positions], axis=1)
        prefix = self._check_num_layers(prefix)
        cache_len = cache[0]["key"].shape[1]
        slots = jnp.asarray(index)[..., None] + jnp.arange(num_prompt + q)  # The queries' cache slots.
        slots = jnp.broadcast_to(slots, (rows, num_prompt + q))
        mask = (jnp.arange(cache_len) <= slots[:, :, None])[:, None] & cache_valid[:, None, None, :]
        n = _prefix_length(prefix)
        if any(entry is not None for entry in prefix):
            columns = layers.prefix_columns(prefix_valid, n, rows, num_prompt + q, prefix_queries)
            prefixed = jnp.concatenate([columns, mask], axis=-1)
        new_cache = []
        for layer, entry, layer_cache in zip(self.layers, prefix, cache):
            kv = None if entry is None else (entry["key"], entry["value"])
            x, layer_cache = layer.cached(x, positions, mask if kv is None else prefixed, layer_cache, index, kv)
            new_cache.append(layer_cache)
        return self.logits(x[:, -1:] if last_only else x[:, num_prompt:]), tuple(new_cache)


def init_params(model: nn.Module, rng: Array, seq_len: int = 8) -> dict:
    """Random base parameters (unboxed; see `logical_axes` for their axis names)."""
    return nn.meta.unbox(model.init(rng, jnp.zeros((1, seq_len), jnp.int32))["params"])


def logical_axes(model: nn.Module) -> dict:
    """Logical axis names of every base parameter, as a PartitionSpec pytree."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    return nn.get_partition_spec(abstract)["params"]


def forward(model, base_params, batch, prefix_inputs, rng, deterministic):
    """The loss's logits: [batch, len, vocab], or [batch, k, vocab] at a batch's
    target_positions (prefix_inputs: `prefix.model_inputs(...)`)."""
    packed = {key: batch[key] for key in ("segment_ids", "positions") if key in batch}
    if "target_positions" in batch:  # Packed rows name their loss positions (`pipeline.pack_lm`).
        packed["logit_positions"] = batch["target_positions"]
    return model.apply(
        {"params": base_params}, batch["tokens"], attention_mask=batch["attention_mask"],
        deterministic=deterministic, rngs=None if rng is None else {"dropout": rng}, **packed, **prefix_inputs,
    )


def _served_prefix(served: dict):
    if "key" not in served:
        return None, None
    return tuple({"key": k, "value": v} for k, v in zip(served["key"], served["value"])), served["mask"]


def prefill(model, base_params, served, tokens, attention_mask, max_new_tokens, start_tokens=(), last_only=False):
    """Runs prompt + left-padded sources through the model once, filling the cache's first slots.

    served: a task's (or each row's) served prefix (decode/serving.py). Returns (logits [rows,
    source_len, vocab] (last_only: [rows, 1, vocab], the head at the one position decoding
    reads, a fifth of SmolLM2's FLOPs per source token saved), (cache, cache_valid [rows,
    cache_len], next position [rows]), next cache slot). An infix is seen only by the source's last row, which (with the new rows)
    moves by its length.
    """
    if len(start_tokens):
        raise ValueError("A decoder-only model continues its sources; it takes no decoder start tokens.")
    c = model.config
    rows, source_len = tokens.shape
    prompt = served.get("prompt")
    num_prompt = 0 if prompt is None else prompt.shape[1]
    per_row = lambda x: jnp.repeat(x, rows // served["mask"].shape[0], axis=0)  # Groups -> rows.
    cache = layers.empty_cache(c.prefix_geometry, rows, num_prompt + source_len + max_new_tokens, c.dtype)
    valid = [attention_mask.astype(bool), jnp.ones((rows, max_new_tokens), bool)]
    if prompt is not None:
        valid.insert(0, per_row(served["mask"]))
    cache_valid = jnp.concatenate(valid, axis=1)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    lengths = attention_mask.sum(axis=1)
    queries = None
    if "infix" in served:
        infix = per_row(served["infix"])
        last = jnp.arange(source_len) == source_len - 1
        shift = jnp.where(infix, per_row(served["mask"].sum(axis=1)), 0)
        queries = ~infix[:, None] | last[None]
        positions, lengths = positions + shift[:, None] * last[None], lengths + shift
    prefix, prefix_valid = _served_prefix(served)
    logits, cache = model.apply(
        {"params": base_params}, tokens, positions, cache, 0, cache_valid,
        prefix=prefix, prefix_valid=prefix_valid, prefix_queries=queries, prompt=prompt, last_only=last_only,
        method=DecoderOnly.decode_step,
    )
    return logits, (cache, cache_valid, lengths), num_prompt + source_len


def step(model, base_params, served, slot, rows, token, t):
    """Feeds token t ([rows]) at cache slot `slot + t`; returns (logits [rows, vocab], rows)."""
    cache, cache_valid, lengths = rows
    prefix, prefix_valid = _served_prefix(served)
    logits, cache = model.apply(
        {"params": base_params}, token[:, None], (lengths + t)[:, None], cache, slot + t, cache_valid,
        prefix=prefix, prefix_valid=prefix_valid, method=DecoderOnly.decode_step,
    )
    return logits[:, 0], (cache, cache_valid, lengths)
