"""A GPT-2-family decoder (learned positions, pre-LN) that takes per-layer prefixes.

The model is functional: base weights come in through `apply`'s variables and the
prefix through the `prefix=` argument, a sequence with one entry per layer:

  * `{"hidden": P}` with P `[n, embed]` or `[batch, n, embed]`: a hidden-state
    prefix. By default only its keys and values are computed (`Block.prefix_kv`);
    with `literal_prefix=True` the layer runs on `[P; h]` and the prefix rows are
    sliced off afterwards, exactly as the method is defined. Both agree.
  * `{"key": K, "value": V}` with K, V `[n, heads, head_dim]` (or with a leading
    batch axis): a key/value prefix, as in Li & Liang (2021).
  * `None`: that layer has no prefix.

`prefix_queries=` ([batch, m] bool) says which input rows attend to the prefix; the
others do not see it. That turns a K/V prefix into an infix (Li & Liang, section 7.2:
[x; INFIX; y]), which only the rows after the source see.

`prompt=` prepends soft tokens once, after the embedding layer, and passes their
outputs on from layer to layer (prompt tuning). Prefix rows never get position
embeddings; input rows keep positions 0..m-1 unless `positions` says otherwise
(pass `positions = n + arange(m)` to reproduce Hugging Face's `past_key_values`
convention).

Decoding uses `GPT2.decode_step` with a static-shape KV cache (`init_cache`): a
prefill writes the prompt and sources, then one token per row per call. Its prefix
is already K/V, [groups, n, heads, head_dim] per layer, read once per group of rows
rather than copied into every row's cache (decode.py builds it).
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
LayerPrefix = Optional[Mapping[str, Array]]

_STDDEV = 0.02  # GPT-2's initialiser scale.


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    """Hyper-parameters of a GPT-2-style model; frozen and hashable (a static jit argument)."""

    vocab_size: int
    num_layers: int
    num_heads: int
    d_model: int
    d_ff: int
    max_len: int
    dropout_rate: float = 0.0
    tie_embeddings: bool = True
    # Houlsby adapters' bottleneck width (0 = none); see `Adapter`. Left out of the repr that
    # fingerprints the base model in checkpoints: adapters are trained weights, recorded there
    # by the mode and the trainable shapes.
    adapter_dim: int = dataclasses.field(default=0, repr=False)
    layer_norm_epsilon: float = 1e-5
    dtype: Any = jnp.float32  # Activations; parameters are always float32.

    def __post_init__(self):
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})."
            )
        if self.adapter_dim < 0:
            raise ValueError(f"adapter_dim must be >= 0 (0 = no adapters), got {self.adapter_dim}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


def layer_name(index: int) -> str:
    """Name of layer `index`'s parameter subtree (flax names list attributes `layers_<i>`)."""
    return f"layers_{index}"


def _init(names: tuple, init=nn.initializers.normal(_STDDEV)):
    return nn.with_logical_partitioning(init, names)


def attention_mask(key_valid: Array, query_len: int) -> Array:
    """Causal mask where the last `query_len` keys are the queries themselves.

    key_valid: [batch, kv_len] bool, False for padding (prefix or input).
    Returns [batch, 1, query_len, kv_len]: query i sees key j iff j <= kv_len - query_len + i
    and key j is valid. Covers no prefix (kv_len = m), a K/V prefix (kv_len = n + m,
    every query sees the whole prefix) and the literal form (kv_len = query_len = n + m).
    """
    kv_len = key_valid.shape[-1]
    query_pos = jnp.arange(query_len)[:, None] + (kv_len - query_len)
    causal = jnp.arange(kv_len)[None, :] <= query_pos  # [query_len, kv_len]
    return causal[None, None] & key_valid[:, None, None, :]


class SelfAttention(nn.Module):
    config: GPT2Config

    def setup(self):
        c = self.config
        heads = (c.num_heads, c.head_dim)
        self.query, self.key, self.value = (
            nn.DenseGeneral(
                heads,
                dtype=c.dtype,
                kernel_init=_init(("embed", "heads", "kv")),
                bias_init=_init(("heads", "kv"), nn.initializers.zeros),
                name=name,
            )
            for name in ("query", "key", "value")
        )
        self.out = nn.DenseGeneral(
            c.d_model,
            axis=(-2, -1),
            dtype=c.dtype,
            kernel_init=_init(("heads", "kv", "embed")),
            bias_init=_init(("embed",), nn.initializers.zeros),
        )
        self.attn_dropout = nn.Dropout(c.dropout_rate)
        self.resid_dropout = nn.Dropout(c.dropout_rate)

    def key_value(self, x: Array) -> tuple[Array, Array]:
        """[..., len, embed] -> keys and values, each [..., len, heads, head_dim]."""
        return self.key(x), self.value(x)

    def _weights(self, scores, mask):
        scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        return jax.nn.softmax(scores, axis=-1).astype(self.config.dtype)

    def __call__(self, x, mask, prefix_kv=None, deterministic=True):
        # x: [batch, q_len, embed]; mask: [batch, 1, q_len, kv_len].
        query = self.query(x)  # [batch, q_len, heads, head_dim]
        key, value = self.key_value(x)
        if prefix_kv is not None:  # Each [batch, n, heads, head_dim], placed before the input keys.
            key = jnp.concatenate([prefix_kv[0].astype(key.dtype), key], axis=1)
            value = jnp.concatenate([prefix_kv[1].astype(value.dtype), value], axis=1)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, key) / jnp.sqrt(self.config.head_dim)
        weights = self.attn_dropout(self._weights(scores, mask), deterministic=deterministic)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, value)  # [batch, q_len, heads, head_dim]
        return self.resid_dropout(self.out(out), deterministic=deterministic)

    def cached(self, x, mask, cache, index, prefix_kv=None):
        """Decoding: writes x's keys/values at cache slots index.., attends over prefix + cache.

        x: [rows, q_len, embed]; cache: {"key", "value"} [rows, cache_len, heads, head_dim];
        mask: [rows, 1, q_len, n + cache_len]. prefix_kv: None or K, V [groups, n, heads,
        head_dim] with groups dividing rows (row r uses group r // (rows // groups)), so a
        prefix shared by many rows (beams, or one task) is stored and read once, never tiled.
        Returns (output [rows, q_len, embed], updated cache).
        """
        query = self.query(x)  # [rows, q_len, heads, head_dim]
        new = dict(zip(("key", "value"), self.key_value(x)))
        cache = {
            name: jax.lax.dynamic_update_slice_in_dim(cache[name], new[name].astype(cache[name].dtype), index, axis=1)
            for name in ("key", "value")
        }
        scale = jnp.sqrt(self.config.head_dim)
        scores = jnp.einsum("bqhd,bkhd->bhqk", query, cache["key"]) / scale
        if prefix_kv is None:
            weights = self._weights(scores, mask)
            return self.out(jnp.einsum("bhqk,bkhd->bqhd", weights, cache["value"])), cache
        prefix_key, prefix_value = (p.astype(query.dtype) for p in prefix_kv)
        rows, q_len, heads, head_dim = query.shape
        groups, n = prefix_key.shape[:2]
        grouped = query.reshape(groups, rows // groups, q_len, heads, head_dim)
        prefix_scores = jnp.einsum("grqhd,gkhd->grhqk", grouped, prefix_key).reshape(rows, heads, q_len, n)
        weights = self._weights(jnp.concatenate([prefix_scores / scale, scores], axis=-1), mask)
        prefix_weights = weights[..., :n].reshape(groups, rows // groups, heads, q_len, n)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights[..., n:], cache["value"])
        out = out + jnp.einsum("grhqk,gkhd->grqhd", prefix_weights, prefix_value).reshape(out.shape)
        return self.out(out), cache


class Mlp(nn.Module):
    config: GPT2Config

    @nn.compact
    def __call__(self, x, deterministic=True):
        c = self.config
        x = nn.Dense(
            c.d_ff,
            dtype=c.dtype,
            kernel_init=_init(("embed", "mlp")),
            bias_init=_init(("mlp",), nn.initializers.zeros),
            name="fc",
        )(x)
        x = nn.gelu(x, approximate=True)  # GPT-2's "gelu_new".
        x = nn.Dense(
            c.d_model,
            dtype=c.dtype,
            kernel_init=_init(("mlp", "embed")),
            bias_init=_init(("embed",), nn.initializers.zeros),
            name="proj",
        )(x)
        return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


ADAPTERS = ("adapter_attn", "adapter_mlp")  # A Block's adapter submodules, when it has them.


class Adapter(nn.Module):
    """Houlsby bottleneck z -> z + up(relu(down(z))), on a sublayer's output before its residual.

    The up-projection starts at zero, so an untrained adapter is exactly the identity
    and the model exactly the base model. 2 * d * r + r + d numbers.
    """

    config: GPT2Config

    @nn.compact
    def __call__(self, z):
        c = self.config
        h = nn.Dense(
            c.adapter_dim, dtype=c.dtype, kernel_init=_init(("embed", None)),
            bias_init=_init((None,), nn.initializers.zeros), name="down",
        )(z)
        return z + nn.Dense(
            c.d_model, dtype=c.dtype, kernel_init=_init((None, "embed"), nn.initializers.zeros),
            bias_init=_init(("embed",), nn.initializers.zeros), name="up",
        )(nn.relu(h))


def _layer_norm(c: GPT2Config, name=None):
    return nn.LayerNorm(
        epsilon=c.layer_norm_epsilon,
        dtype=c.dtype,
        scale_init=_init(("norm",), nn.initializers.ones),
        bias_init=_init(("norm",), nn.initializers.zeros),
        name=name,
    )


class Block(nn.Module):
    """Pre-LN Transformer layer: x + Attn(LN(x)), then x + Mlp(LN(x)).

    With `adapter_dim`, each sublayer's output passes through its adapter before the
    residual sum (Houlsby et al. 2019): x + A_attn(Attn(LN(x))), then x + A_mlp(Mlp(LN(x))).
    """

    config: GPT2Config

    def setup(self):
        self.ln_1 = _layer_norm(self.config)
        self.attn = SelfAttention(self.config)
        self.ln_2 = _layer_norm(self.config)
        self.mlp = Mlp(self.config)
        if self.config.adapter_dim:
            self.adapter_attn, self.adapter_mlp = Adapter(self.config), Adapter(self.config)

    def _adapt(self, name: str, z):
        return getattr(self, name)(z) if self.config.adapter_dim else z

    def prefix_kv(self, hidden_prefix: Array) -> tuple[Array, Array]:
        """Keys and values of hidden-state prefix rows: LN(P) W_k, LN(P) W_v.

        These are the only way prefix rows reach the input rows (their outputs are
        dropped), so this is all a hidden-state prefix costs.
        """
        return self.attn.key_value(self.ln_1(hidden_prefix))

    def __call__(self, x, mask, prefix_kv=None, deterministic=True):
        # x: [batch, len, embed]
        self.sow("intermediates", "layer_input", x)
        x = x + self._adapt("adapter_attn", self.attn(self.ln_1(x), mask, prefix_kv, deterministic))
        return x + self._adapt("adapter_mlp", self.mlp(self.ln_2(x), deterministic))

    def cached(self, x, mask, cache, index, prefix_kv=None):
        """The layer at decode time (see `SelfAttention.cached`); returns (x, cache)."""
        attended, cache = self.attn.cached(self.ln_1(x), mask, cache, index, prefix_kv)
        x = x + self._adapt("adapter_attn", attended)
        return x + self._adapt("adapter_mlp", self.mlp(self.ln_2(x))), cache


def _with_batch(x: Array, batch: int, rank: int) -> Array:
    """Broadcasts a prefix without a batch axis (rank `rank`) to [batch, ...]."""
    if x.ndim == rank:
        return jnp.broadcast_to(x, (batch,) + x.shape)
    if x.ndim != rank + 1 or x.shape[0] != batch:
        raise ValueError(
            f"Prefix of shape {x.shape} fits neither an unbatched rank-{rank} array nor "
            f"a batch of {batch}."
        )
    return x


class GPT2(nn.Module):
    config: GPT2Config

    def setup(self):
        c = self.config
        self.token_embed = nn.Embed(
            c.vocab_size, c.d_model, embedding_init=_init(("vocab", "embed"))
        )
        self.position_embed = nn.Embed(
            c.max_len, c.d_model, embedding_init=_init((None, "embed"), nn.initializers.normal(0.01))
        )
        self.embed_dropout = nn.Dropout(c.dropout_rate)
        self.layers = [Block(c) for _ in range(c.num_layers)]
        self.final_norm = _layer_norm(c)
        if not c.tie_embeddings:
            self.lm_head = nn.Dense(
                c.vocab_size, use_bias=False, dtype=c.dtype, kernel_init=_init(("embed", "vocab"))
            )

    def embed(self, tokens, positions, deterministic=True):
        """h^0 = token + position embeddings. tokens, positions: [batch, len]."""
        x = self.token_embed(tokens) + self.position_embed(positions)
        return self.embed_dropout(x.astype(self.config.dtype), deterministic=deterministic)

    def logits(self, x):
        """[batch, len, embed] -> [batch, len, vocab]."""
        x = self.final_norm(x)
        if self.config.tie_embeddings:
            return self.token_embed.attend(x)
        return self.lm_head(x)

    def prefix_key_values(self, hidden_prefix: Sequence[Array]) -> tuple:
        """Compiles a hidden-state prefix (one [..., n, embed] per layer) to per-layer K/V."""
        self._check_num_layers(hidden_prefix)
        return tuple(
            dict(zip(("key", "value"), layer.prefix_kv(p)))
            for layer, p in zip(self.layers, hidden_prefix)
        )

    def _check_num_layers(self, prefix):
        if len(prefix) != self.config.num_layers:
            raise ValueError(
                f"The prefix has {len(prefix)} entries but the model has "
                f"{self.config.num_layers} layers; give one entry (or None) per layer."
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
        literal_prefix: bool = False,
        deterministic: bool = True,
    ) -> Array:
        """Logits [batch, m, vocab] for the m input tokens.

        tokens: [batch, m] int. attention_mask: [batch, m], 0 marks padding.
        prefix_mask: [n] or [batch, n], 0 marks prefix slots to ignore (prefixes of
        different lengths padded to one n). prefix_queries: [batch, m] bool, the input
        rows that see the prefix (default all; an infix). prompt: [n_prompt, embed] or
        [batch, n_prompt, embed].
        """
        c = self.config
        batch, m = tokens.shape
        if attention_mask is None:
            attention_mask = jnp.ones((batch, m), bool)
        if prefix_queries is not None and literal_prefix:
            raise ValueError("prefix_queries (an infix) needs a K/V prefix; it has no literal form here.")
        if positions is None:
            if m > c.max_len:
                raise ValueError(
                    f"Input length {m} exceeds the model's max_len ({c.max_len}); shorten it."
                )
            positions = jnp.broadcast_to(jnp.arange(m), (batch, m))
        valid = attention_mask.astype(bool)
        x = self.embed(tokens, positions, deterministic)  # [batch, m, embed]

        num_prompt = 0
        if prompt is not None:  # Soft tokens: prepended once; their outputs go on.
            prompt = _with_batch(prompt, batch, 2).astype(x.dtype)
            num_prompt = prompt.shape[1]
            x = jnp.concatenate([prompt, x], axis=1)
            valid = jnp.concatenate([jnp.ones((batch, num_prompt), bool), valid], axis=1)

        if prefix is None:
            prefix = (None,) * c.num_layers
        self._check_num_layers(prefix)
        for layer, entry in zip(self.layers, prefix):
            x = self._run_layer(layer, x, valid, entry, prefix_mask, prefix_queries, literal_prefix, deterministic)
        return self.logits(x[:, num_prompt:])

    def decode_step(self, tokens, positions, cache, index, cache_valid, *, prefix=None, prefix_valid=None,
                    prefix_queries=None, prompt=None):
        """Runs `tokens` at cache slots `index`.. (after `prompt` rows, if given); jit-safe.

        tokens, positions: [rows, q]. cache: one {"key", "value"} [rows, cache_len, heads,
        head_dim] per layer (`init_cache`). cache_valid: [rows, cache_len] bool, False for
        padding; slots after a query are masked causally whatever it says. prefix: None or
        one {"key", "value"} [groups, n, heads, head_dim] (or None) per layer, already
        compiled to K/V, with prefix_valid [groups, n]; groups divide rows. prefix_queries:
        [rows, q] bool, the queries that see the prefix (default all; an infix, as in
        `__call__`). prompt: [groups, n_prompt, embed] soft tokens, given only on the call
        that fills the cache's first slots (the prefill). Returns (logits [rows, q, vocab],
        updated cache).
        """
        rows, q = tokens.shape
        x = self.embed(tokens, positions)
        num_prompt = 0
        if prompt is not None:
            num_prompt = prompt.shape[1]
            x = jnp.concatenate([jnp.repeat(prompt.astype(x.dtype), rows // prompt.shape[0], axis=0), x], axis=1)
        if prefix is None:
            prefix = (None,) * self.config.num_layers
        self._check_num_layers(prefix)
        cache_len = cache[0]["key"].shape[1]
        slots = index + jnp.arange(num_prompt + q)  # The queries' cache slots.
        mask = (jnp.arange(cache_len)[None, :] <= slots[:, None])[None, None] & cache_valid[:, None, None, :]
        n = max((entry["key"].shape[1] for entry in prefix if entry is not None), default=0)
        if n:
            if prefix_valid is None:
                prefix_valid = jnp.ones((1, n), bool)
            seen = jnp.repeat(prefix_valid.astype(bool), rows // prefix_valid.shape[0], axis=0)
            seen = jnp.broadcast_to(seen[:, None, None, :], (rows, 1, num_prompt + q, n))
            if prefix_queries is not None:
                if num_prompt:
                    raise ValueError("prefix_queries (an infix) and a prompt do not combine.")
                seen = seen & prefix_queries.astype(bool)[:, None, :, None]
            mask = jnp.concatenate([seen, jnp.broadcast_to(mask, (rows, 1, num_prompt + q, cache_len))], axis=-1)
        new_cache = []
        for layer, entry, layer_cache in zip(self.layers, prefix, cache):
            kv = None if entry is None else (entry["key"], entry["value"])
            layer_mask = mask if kv is not None or not n else mask[..., n:]
            x, layer_cache = layer.cached(x, layer_mask, layer_cache, index, kv)
            new_cache.append(layer_cache)
        return self.logits(x[:, num_prompt:]), tuple(new_cache)

    def _run_layer(self, layer, x, valid, entry, prefix_mask, prefix_queries, literal, deterministic):
        """One layer on input rows x [batch, len, embed]; returns the next layer's input rows."""
        batch, length, _ = x.shape
        if entry is None:
            return layer(x, attention_mask(valid, length), None, deterministic)
        if "hidden" in entry:
            hidden = _with_batch(entry["hidden"], batch, 2).astype(x.dtype)  # [batch, n, embed]
            n = hidden.shape[1]
        else:
            key = _with_batch(entry["key"], batch, 3)  # [batch, n, heads, head_dim]
            value = _with_batch(entry["value"], batch, 3)
            n = key.shape[1]
        if prefix_mask is None:
            prefix_valid = jnp.ones((batch, n), bool)
        else:
            prefix_valid = _with_batch(prefix_mask.astype(bool), batch, 1)
        key_valid = jnp.concatenate([prefix_valid, valid], axis=1)
        if "hidden" in entry and literal:
            # H^l = [P^l ; h^l]; the layer runs on all n + m rows; only input rows go on.
            full = jnp.concatenate([hidden, x], axis=1)
            return layer(full, attention_mask(key_valid, n + length), None, deterministic)[:, n:]
        if "hidden" in entry:
            key, value = layer.prefix_kv(hidden)
        mask = attention_mask(key_valid, length)  # [batch, 1, len, n + len]
        if prefix_queries is not None:  # Rows before an infix do not see its keys.
            sees = prefix_queries.astype(bool)[:, None, :, None]
            mask = jnp.concatenate([mask[..., :n] & sees, mask[..., n:]], axis=-1)
        return layer(x, mask, (key, value), deterministic)


def init_cache(config: GPT2Config, rows: int, length: int) -> tuple:
    """An empty decode cache: one {"key", "value"} [rows, length, heads, head_dim] per layer."""
    shape = (rows, length, config.num_heads, config.head_dim)
    return tuple(
        {"key": jnp.zeros(shape, config.dtype), "value": jnp.zeros(shape, config.dtype)}
        for _ in range(config.num_layers)
    )


def init_params(model: GPT2, rng: Array, seq_len: int = 8) -> dict:
    """Random base parameters (unboxed; see `logical_axes` for their axis names)."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)
    return nn.meta.unbox(model.init(rng, tokens)["params"])


def logical_axes(model: GPT2) -> dict:
    """Logical axis names of every base parameter, as a PartitionSpec pytree."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), tokens)
    return nn.get_partition_spec(abstract)["params"]


def split_adapters(params: dict) -> tuple[dict, dict]:
    """(params without adapters, {layer: {adapter name: params}}): the base model proper and its adapters."""
    base, adapters = {}, {}
    for name, sub in params.items():
        if isinstance(sub, Mapping) and any(a in sub for a in ADAPTERS):
            adapters[name] = {a: sub[a] for a in ADAPTERS if a in sub}
            sub = {k: v for k, v in sub.items() if k not in ADAPTERS}
        base[name] = sub
    return base, adapters


def add_adapters(model: GPT2, base_params: dict, rng: Array) -> dict:
    """Pre-trained weights with fresh adapters where the model has them and the weights do not.

    Base weights (and adapters already present) are kept as given; each adapter is
    initialised on its own, so no throwaway copy of the whole model is made.
    """
    c = model.config
    if not c.adapter_dim:
        return base_params
    adapter, z = Adapter(c), jnp.zeros((1, c.d_model), c.dtype)
    params = dict(base_params)
    for index in range(c.num_layers):
        keys = jax.random.split(jax.random.fold_in(rng, index), len(ADAPTERS))
        fresh = {name: nn.meta.unbox(adapter.init(key, z)["params"]) for name, key in zip(ADAPTERS, keys)}
        params[layer_name(index)] = {**fresh, **base_params[layer_name(index)]}
    return params
