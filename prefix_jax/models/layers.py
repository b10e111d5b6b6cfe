"""What every family shares: attention over prefix keys/values, masks, the KV-cache write.

A prefix reaches a layer only through attention, so one `Attention` module serves GPT-2,
Llama and BART: it projects queries/keys/values (with or without biases, with or without
RoPE, with grouped-query heads), optionally writes the new keys/values into a decode
cache, and attends over `[prefix keys ; keys]`. The prefix K/V are read grouped, never
tiled: `[groups, n, kv_heads, head_dim]` with groups dividing the rows (row r uses group
r // (rows // groups)), so one prefix serves a whole batch, a task's rows in a bank, or
every beam of a row. Masks are `[rows, 1, q_len, n + kv_len]` bool, prefix columns first,
built once per forward by `causal_mask` / `prefix_columns` and shared by every layer.
"""

import dataclasses
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
_STDDEV = 0.02  # GPT-2's initialiser scale, which the other families share.


@dataclasses.dataclass(frozen=True)
class Geometry:
    """What prefix code needs of one stack of attention layers (prefix.py works on this).

    max_len bounds positions: an infix shifts the target rows' positions by its length.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    d_model: int
    max_len: int


def layer_name(index: int) -> str:
    """Name of layer `index`'s parameter subtree (flax names list attributes `layers_<i>`)."""
    return f"layers_{index}"


def param_init(names: tuple, init=nn.initializers.normal(_STDDEV)):
    """An initialiser carrying logical axis names (sharding.py maps them to the mesh)."""
    return nn.with_logical_partitioning(init, names)


def with_batch(x: Array, batch: int, rank: int) -> Array:
    """Broadcasts an array without a batch axis (rank `rank`) to [batch, ...]."""
    if x.ndim == rank:
        return jnp.broadcast_to(x, (batch,) + x.shape)
    if x.ndim != rank + 1 or x.shape[0] != batch:
        raise ValueError(
            f"Prefix of shape {x.shape} fits neither an unbatched rank-{rank} array nor a batch of {batch}."
        )
    return x


def as_groups(x: Array, rank: int) -> Array:
    """A prefix array with a leading group axis: an unbatched one becomes one group."""
    return x[None] if x.ndim == rank else x


def causal_mask(key_valid: Array, query_len: int) -> Array:
    """Causal mask where the last `query_len` keys are the queries themselves.

    key_valid: [batch, kv_len] bool, False for padding. Returns [batch, 1, query_len, kv_len]:
    query i sees key j iff j <= kv_len - query_len + i and key j is valid.
    """
    kv_len = key_valid.shape[-1]
    query_pos = jnp.arange(query_len)[:, None] + (kv_len - query_len)
    causal = jnp.arange(kv_len)[None, :] <= query_pos  # [query_len, kv_len]
    return causal[None, None] & key_valid[:, None, None, :]


def full_mask(key_valid: Array, query_len: int) -> Array:
    """Every query sees every valid key: [batch, kv_len] -> [batch, 1, query_len, kv_len]."""
    return jnp.broadcast_to(key_valid[:, None, None, :], key_valid.shape[:1] + (1, query_len, key_valid.shape[1]))


def prefix_columns(prefix_valid: Optional[Array], n: int, rows: int, query_len: int,
                   prefix_queries: Optional[Array] = None) -> Array:
    """The prefix's columns of a mask, [rows, 1, query_len, n].

    prefix_valid: None (all valid), [n] or [groups, n] with groups dividing rows (False:
    padding of a shorter prefix in a bank). prefix_queries: [rows, query_len] bool, the
    queries that see the prefix (an infix); default all.
    """
    valid = jnp.ones((1, n), bool) if prefix_valid is None else as_groups(prefix_valid.astype(bool), 1)
    valid = jnp.repeat(valid, rows // valid.shape[0], axis=0)
    columns = jnp.broadcast_to(valid[:, None, None, :], (rows, 1, query_len, n))
    if prefix_queries is not None:
        columns = columns & prefix_queries.astype(bool)[:, None, :, None]
    return columns


def rope(x: Array, positions: Array, theta: float) -> Array:
    """Rotary embedding in Hugging Face's layout (halves, not interleaved pairs).

    x: [batch, len, heads, head_dim]; positions: [batch, len]. Position 0 is the identity.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2 / x.shape[-1])
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # [batch, len, half]
    cos, sin = (jnp.concatenate([f(angles)] * 2, axis=-1)[:, :, None, :] for f in (jnp.cos, jnp.sin))
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)


def _dot_keys(query: Array, key: Array) -> Array:
    """Scores [rows, kv_heads, shared, q, k] of queries [rows, q, kv_heads, shared, head_dim]
    against keys [rows, k, kv_heads, head_dim].

    One query a row (a decoding step) is a fused multiply-reduce that reads the cache once:
    XLA:CPU is slow at a dot over (rows, heads) batches of a single query row, and these
    cache reads are most of what a SmolLM2 decoding step does beyond its weight matmuls.
    """
    if query.shape[1] == 1:
        return jnp.moveaxis(jnp.sum(query[:, 0, None] * key[:, :, :, None], -1), 1, -1)[:, :, :, None]
    return jnp.einsum("bqhsd,bkhd->bhsqk", query, key)


def _mix_values(weights: Array, value: Array) -> Array:
    """Weights [rows, kv_heads, shared, q, k] times values [rows, k, kv_heads, head_dim] ->
    [rows, q, kv_heads, shared, head_dim]; one query a row as in `_dot_keys`."""
    if weights.shape[3] == 1:
        return jnp.sum(jnp.moveaxis(weights[:, :, :, 0], -1, 1)[..., None] * value[:, :, :, None], 1)[:, None]
    return jnp.einsum("bhsqk,bkhd->bqhsd", weights, value)


def attend(query: Array, key: Array, value: Array, mask: Array, prefix=None, *, dtype=jnp.float32,
           dropout: Optional[Callable[[Array], Array]] = None) -> Array:
    """Softmax attention over [prefix keys ; keys], grouped-query heads and grouped prefixes.

    query: [rows, q, heads, head_dim]; key, value: [rows, k, kv_heads, head_dim] with
    kv_heads dividing heads; prefix: None or (K, V) [groups, n, kv_heads, head_dim] with
    groups dividing rows; mask: [rows, 1, q, n + k] (n = 0 without a prefix). Returns
    [rows, q, heads, head_dim].
    """
    rows, q_len, heads, head_dim = query.shape
    kv_heads = key.shape[2]
    shared = heads // kv_heads  # Query heads reading one key/value head.
    query = query.reshape(rows, q_len, kv_heads, shared, head_dim)
    scale = jnp.sqrt(head_dim).astype(query.dtype)
    scores = _dot_keys(query, key.astype(query.dtype)) / scale
    n = 0
    if prefix is not None:
        prefix_key, prefix_value = (p.astype(query.dtype) for p in prefix)
        groups, n = prefix_key.shape[:2]
        grouped = query.reshape((groups, rows // groups) + query.shape[1:])
        prefix_scores = jnp.einsum("grqhsd,gkhd->grhsqk", grouped, prefix_key).reshape(rows, kv_heads, shared, q_len, n)
        scores = jnp.concatenate([prefix_scores / scale, scores], axis=-1)
    scores = jnp.where(mask[:, :, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(dtype)
    if dropout is not None:
        weights = dropout(weights)
    out = _mix_values(weights[..., n:], value.astype(dtype))
    if prefix is not None:
        prefix_weights = weights[..., :n].reshape((groups, rows // groups) + weights.shape[1:-1] + (n,))
        out = out + jnp.einsum("grhsqk,gkhd->grqhsd", prefix_weights, prefix_value.astype(dtype)).reshape(out.shape)
    return out.reshape(rows, q_len, heads, head_dim)


def write_cache(cache: dict, key: Array, value: Array, index) -> tuple[dict, Array, Array]:
    """Writes keys/values [rows, q, kv_heads, head_dim] at slots index.. of a cache
    {"key", "value": [cache_rows, cache_len, kv_heads, head_dim], ...}; returns (the cache,
    the keys and values of its first `rows` rows, which the queries attend over).

    index: an int (every row at the same slots; cache_rows == rows), or [rows] ints, row r
    at slots index[r].. of cache row r (continuous batching: each row at its own length;
    the cache may hold more rows than are fed, the first `rows` are written and read).
    """
    new = {"key": key, "value": value}
    new = {name: new[name].astype(cache[name].dtype) for name in new}
    rows, q = key.shape[:2]
    if jnp.ndim(index) == 0:
        cache = dict(cache) | {name: jax.lax.dynamic_update_slice_in_dim(cache[name], new[name], index, axis=1)
                               for name in new}
        return cache, cache["key"][:rows], cache["value"][:rows]
    if rows == 1 < cache["key"].shape[0]:
        # XLA turns one row's write into a dynamic-update-slice, fuses the row's read into it
        # (reading the cache before the update) and, its CPU runtime running independent work
        # at once, copied the whole donated cache twice a step to keep the two apart
        # (SmolLM2, 16 x 512 slots: 96 ms a token instead of 32). Writing the cache's new
        # slots from the row read makes the write wait for the read: no copy.
        at = (0, jnp.asarray(index)[0], 0, 0)
        read = {name: jax.lax.dynamic_update_slice(cache[name][:1], new[name], at) for name in new}
        cache = dict(cache) | {
            name: jax.lax.dynamic_update_slice(cache[name], jax.lax.dynamic_slice(read[name], at, new[name].shape), at)
            for name in new}
        return cache, read["key"], read["value"]
    at = (jnp.arange(rows)[:, None], jnp.asarray(index)[:, None] + jnp.arange(q)[None])
    cache = dict(cache) | {name: cache[name].at[at].set(new[name], mode="promise_in_bounds") for name in new}
    return cache, cache["key"][:rows], cache["value"][:rows]


def empty_cache(geometry: Geometry, rows: int, length: int, dtype) -> tuple:
    """A decode cache: one {"key", "value"} [rows, length, kv_heads, head_dim] per layer."""
    shape = (rows, length, geometry.num_kv_heads, geometry.head_dim)
    return tuple({"key": jnp.zeros(shape, dtype), "value": jnp.zeros(shape, dtype)}
                 for _ in range(geometry.num_layers))


class Attention(nn.Module):
    """Multi-head attention with prefix K/V: GPT-2 (biases, dropout), Llama (RoPE, GQA, no
    biases) and BART (biases; self- and cross-attention) are settings of this one module."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_model: int
    use_bias: bool = True
    rope_theta: Optional[float] = None  # None: no rotary embedding.
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32

    def setup(self):
        def dense(features, axes, axis=-1):
            bias_axes = axes[1:] if axis == -1 else axes[-1:]
            return nn.DenseGeneral(
                features, axis=axis, use_bias=self.use_bias, dtype=self.dtype, kernel_init=param_init(axes),
                bias_init=param_init(bias_axes, nn.initializers.zeros),
            )

        self.query = dense((self.num_heads, self.head_dim), ("embed", "heads", "kv"))
        self.key = dense((self.num_kv_heads, self.head_dim), ("embed", "heads", "kv"))
        self.value = dense((self.num_kv_heads, self.head_dim), ("embed", "heads", "kv"))
        self.out = dense(self.d_model, ("heads", "kv", "embed"), axis=(-2, -1))
        self.attn_dropout = nn.Dropout(self.dropout_rate)
        self.resid_dropout = nn.Dropout(self.dropout_rate)

    def _rotate(self, x, positions):
        return x if self.rope_theta is None else rope(x, positions, self.rope_theta)

    def key_value(self, x: Array, positions: Optional[Array] = None) -> tuple[Array, Array]:
        """[batch, len, embed] -> keys and values [batch, len, kv_heads, head_dim]; keys rotated
        to `positions` under RoPE (None: unrotated, i.e. position 0)."""
        key = self.key(x)
        return (key if positions is None else self._rotate(key, positions)), self.value(x)

    def __call__(self, x, mask, positions=None, prefix=None, *, memory=None, cache=None, index=None,
                 deterministic=True):
        """Attention output [rows, q, embed] (and the updated cache when one is given).

        x: [rows, q, embed]; mask: [rows, 1, q, n + kv_len]; positions: [rows, q] (RoPE only).
        Self-attention by default; `memory` ([rows, k, embed], or its precomputed (K, V)) makes
        it cross-attention. With `cache` (see `empty_cache`) x's keys/values are written at
        slots index.. (see `write_cache`) and the queries attend over the cache's first rows
        rows (the mask hides the rest).
        """
        query = self._rotate(self.query(x), positions)
        if memory is None:
            key, value = self.key_value(x, positions)
        elif isinstance(memory, tuple):
            key, value = memory
        else:
            key, value = self.key_value(memory)
        if cache is not None:
            cache, key, value = write_cache(cache, key, value, index)
        dropout = lambda w: self.attn_dropout(w, deterministic=deterministic)
        out = attend(query, key, value, mask, prefix, dtype=self.dtype, dropout=dropout)
        out = self.resid_dropout(self.out(out), deterministic=deterministic)
        return out if cache is None else (out, cache)
