"""Greedy decoding by full recomputation: the reference every faster decoder must match.

Sources are left-padded into a fixed buffer [batch, source_len + max_new_tokens];
each step reruns the model on the whole buffer (causal attention makes the
not-yet-written slots irrelevant) and appends the argmax at every row's next
slot. One shape, one compilation, O(steps) forward passes: simple and exact, not
fast. It is the oracle the cached decoders below are tested against.

`generate` is the fast path: greedy, beam search or sampling over a static-shape KV
cache, with the task's prefix compiled once to K/V (`serve`) and, for multi-tenant
serving, a bank of prefixes gathered per row (`prefix_bank`, `task_ids=`).

An infix ([x; INFIX; y], Li & Liang section 7.2) decodes as it trains: the source rows
do not see it, the source's last row (which predicts the first new token) and every new
row do, and those rows' positions are shifted by the infix's length.

`generate_seq2seq` decodes an encoder-decoder (BART) with the same strategies: the
encoder runs once, each decoder layer's cross-attention K/V are computed once, and the
decoder reads one token per step over a self-attention KV cache; one task per call.
"""

import dataclasses
import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prefix_jax import prefix as prefix_lib
from prefix_jax.models import bart, gpt2


def left_pad(sequences: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """tokens, attention_mask [batch, longest], sequences right-aligned."""
    width = max(len(s) for s in sequences)
    tokens = np.full((len(sequences), width), pad_id, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for row, sequence in enumerate(sequences):
        tokens[row, width - len(sequence) :] = sequence
        mask[row, width - len(sequence) :] = 1
    return tokens, mask


@functools.partial(jax.jit, static_argnames=("model", "spec", "max_new_tokens", "eos_id"))
def greedy(params, tokens, attention_mask, *, model, spec, max_new_tokens: int, eos_id: int):
    """New tokens [batch, max_new_tokens]; after a row's EOS the rest is EOS.

    params: {"base": ..., "prefix": ...}; tokens, attention_mask: [batch, source_len],
    left-padded. Input rows get positions 0.. from their first real token, as in training.
    """
    batch, source_len = tokens.shape
    _check_length(source_len, max_new_tokens, spec.length if spec is not None and spec.kind == "infix" else 0,
                  model.config)
    buffer = jnp.concatenate([tokens, jnp.zeros((batch, max_new_tokens), tokens.dtype)], axis=1)
    mask = jnp.concatenate([attention_mask, jnp.zeros((batch, max_new_tokens), attention_mask.dtype)], axis=1)
    # Every slot's position once all are written; a slot not yet written is never read (causal).
    positions = jnp.maximum(jnp.cumsum(mask.at[:, source_len:].set(1), axis=1) - 1, 0)
    new_slots = jnp.broadcast_to(jnp.arange(buffer.shape[1]) >= source_len, buffer.shape)  # Targets, for an infix.
    inputs = {"positions": positions, **prefix_lib.model_inputs(
        spec, params.get("prefix", {}), model.config, loss_mask=new_slots, positions=positions)}

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


def strip_after_eos(new_tokens: np.ndarray, eos_id: int) -> list[list[int]]:
    """Each row's tokens up to (not including) its first EOS."""
    rows = []
    for row in np.asarray(new_tokens):
        stop = np.flatnonzero(row == eos_id)
        rows.append(row[: stop[0]].tolist() if len(stop) else row.tolist())
    return rows


# ---------------------------------------------------------------------------------------
# Serving form of prefixes. A task's prefix is compiled once to per-layer K/V and kept
# apart from the per-row cache: the model attends over its n keys before the cache's keys,
# exactly as if they were the cache's first n entries, but one copy serves every row (and
# beam) of the task. A prompt-tuning prefix is soft tokens, so it is simply part of the
# prefill. Served prefixes carry a leading task axis (a bank of one task when plain).


def serve(spec: Optional[prefix_lib.PrefixSpec], prefix_params, model: gpt2.GPT2, base_params) -> dict:
    """A task's prefix in serving form, as a bank of one task; pure.

    Returns {} (no prefix), {"key", "value": [L, 1, n, heads, head_dim], "mask": [1, n]}
    (a hidden prefix compiled to K/V, a reparameterised one folded; an infix adds
    "infix": [1] True), or {"prompt": [1, n, embed], "mask": [1, n]}.
    """
    if spec is None:
        return {}
    if spec.kind == "prompt":
        return {"prompt": prefix_params["prompt"][None], "mask": jnp.ones((1, spec.length), bool)}
    if spec.kind == "hidden":
        spec, prefix_params = prefix_lib.hidden_to_kv(spec, prefix_params, model, base_params)
    spec, prefix_params = prefix_lib.fold(spec, prefix_params, model.config)
    served = {name: prefix_params[name][:, None] for name in ("key", "value")}
    if spec.kind == "infix":
        served["infix"] = jnp.ones((1,), bool)
    return {**served, "mask": jnp.ones((1, spec.length), bool)}


def _kind(served: dict) -> str:
    return "prompt" if "prompt" in served else "kv" if "key" in served else "none"


def prefix_bank(tasks: Sequence[dict]) -> dict:
    """Stacks served prefixes (`serve`) into one bank; shorter ones are padded and masked.

    All tasks must be of one serving kind (K/V, or prompt) with matching layer/head shapes;
    infixes and K/V prefixes mix (each row is told which its task is).
    """
    if not tasks:
        raise ValueError("prefix_bank needs at least one task.")
    kinds = {_kind(task) for task in tasks}
    if len(kinds) != 1 or "none" in kinds:
        raise ValueError(
            f"A prefix bank needs tasks of one kind, K/V (hidden or kv prefixes) or prompt; got {sorted(kinds)}."
        )
    names = ("prompt",) if kinds == {"prompt"} else ("key", "value")
    axis = 1 if names == ("prompt",) else 2  # The length axis n.
    n = max(task["mask"].shape[1] for task in tasks)
    banks = {}
    for name in names:
        shapes = {tuple(np.delete(task[name].shape, axis)) for task in tasks}
        if len(shapes) != 1:
            raise ValueError(f"Prefix {name!r} shapes differ beyond their length: {sorted(shapes)}.")
        pad = lambda x: jnp.pad(x, [(0, n - x.shape[axis]) if i == axis else (0, 0) for i in range(x.ndim)])
        banks[name] = jnp.concatenate([pad(task[name]) for task in tasks], axis=axis - 1)
    if any("infix" in task for task in tasks):
        banks["infix"] = jnp.concatenate([task.get("infix", jnp.zeros((1,), bool)) for task in tasks])
    masks = [jnp.pad(task["mask"], ((0, 0), (0, n - task["mask"].shape[1]))) for task in tasks]
    return {**banks, "mask": jnp.concatenate(masks, axis=0)}


def num_tasks(served: dict) -> int:
    """Tasks in a served prefix or bank (1 for no prefix)."""
    return served["mask"].shape[0] if served else 1


def _check_fits(served: dict, config: gpt2.GPT2Config) -> None:
    """A bank made for another model would fail deep inside attention; say so here."""
    c = config
    for name, value in served.items():
        if name in ("key", "value"):
            want, got = (c.num_layers, c.num_heads, c.head_dim), (value.shape[0],) + value.shape[3:]
            what = "(layers, heads, head_dim)"
        elif name == "prompt":
            want, got, what = (c.d_model,), value.shape[2:], "(d_model,)"
        else:
            continue
        if got != want:
            raise ValueError(f"Served prefix {name!r} has {what} = {got} but the model has {want}; serve it for this model.")


def _select(served: dict, task_ids) -> dict:
    """Each row's task's prefix (leading axis: rows instead of tasks)."""
    return {name: value[:, task_ids] if name in ("key", "value") else value[task_ids] for name, value in served.items()}


# ---------------------------------------------------------------------------------------
# Decoding strategies.

STRATEGIES = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class Options:
    """How to decode; hashable (a static jit argument).

    Beam search scores a finished hypothesis by sum(log p) / length**length_penalty, with
    length counting its generated tokens including EOS. early_stopping=True stops a row
    once it has beam_size finished hypotheses; False goes on until no live beam can still
    beat the worst of them (exact). no_repeat_ngram_size bans repeating an n-gram of the
    generated tokens (not the source: copying entity names from the table is the task).
    """

    strategy: str = "greedy"
    max_new_tokens: int = 32
    beam_size: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    no_repeat_ngram_size: int = 0
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter.
    top_p: float = 1.0  # 1: no nucleus filter.

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"Unknown decode strategy {self.strategy!r}; expected one of {STRATEGIES}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}; use strategy='greedy' for argmax.")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"Need top_k >= 0 and 0 < top_p <= 1, got top_k={self.top_k}, top_p={self.top_p}.")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}.")


def _route(served: dict, task_ids, batch: int, model_config: gpt2.GPT2Config) -> dict:
    """The served prefix each row uses: the one task, or each row's task from the bank."""
    _check_fits(served, model_config)
    if task_ids is None:
        if num_tasks(served) != 1:
            raise ValueError(f"The prefix bank holds {num_tasks(served)} tasks; pass task_ids naming each row's task.")
        return served
    if not served:
        raise ValueError("task_ids given but there is no prefix bank (the served prefix is empty).")
    task_ids = np.asarray(task_ids)
    if task_ids.shape != (batch,) or not np.issubdtype(task_ids.dtype, np.integer):
        raise ValueError(f"task_ids has shape {task_ids.shape} ({task_ids.dtype}); expected ({batch},) integers, one per row.")
    unknown = sorted(set(task_ids[(task_ids < 0) | (task_ids >= num_tasks(served))].tolist()))
    if unknown:
        raise ValueError(f"Unknown task ids {unknown}: the prefix bank holds tasks 0..{num_tasks(served) - 1}.")
    return _select(served, jnp.asarray(task_ids))


def _check_length(source_len: int, new_tokens: int, infix_len: int, config: gpt2.GPT2Config) -> None:
    if source_len + new_tokens + infix_len > config.max_len:
        infix = f" + an infix of {infix_len}" if infix_len else ""
        raise ValueError(f"Source length {source_len} + {new_tokens} new tokens{infix} exceeds max_len {config.max_len}.")


def _check_inputs(model, served, tokens, attention_mask, new_tokens: int) -> None:
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask {attention_mask.shape} must have the tokens' shape {tokens.shape}.")
    _check_length(tokens.shape[1], new_tokens, served["mask"].shape[1] if "infix" in served else 0, model.config)


def forward(base_params, served: dict, tokens, attention_mask, *, model: gpt2.GPT2, task_ids=None):
    """Logits [batch, source_len, vocab] of left-padded sources through the serving path.

    One forward serves every row, each with its own task's prefix when task_ids is given
    (see `generate`); the decoders' prefill is exactly this.
    """
    _check_inputs(model, served, tokens, attention_mask, 0)
    served = _route(served, task_ids, tokens.shape[0], model.config)
    return _forward(base_params, served, tokens, attention_mask, model=model)


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(base_params, served, tokens, attention_mask, *, model):
    return _prefill(model, base_params, served, tokens, attention_mask, 0)[0]


def generate(base_params, served: dict, tokens, attention_mask, *, model: gpt2.GPT2, options: Options,
             eos_id: int, task_ids=None, rng=None):
    """New tokens [batch, max_new_tokens] (EOS after a row's end), decoded with a KV cache.

    served: `serve(...)` or a `prefix_bank(...)`; task_ids: [batch] ints naming each row's
    task in the bank (None: the bank must hold one task, shared by all rows). tokens,
    attention_mask: [batch, source_len], left-padded; positions as in training and `greedy`.
    rng: a key, needed for strategy='sample'.
    """
    _check_inputs(model, served, tokens, attention_mask, options.max_new_tokens)
    served = _route(served, task_ids, tokens.shape[0], model.config)
    if options.strategy == "sample" and rng is None:
        raise ValueError("strategy='sample' needs an rng key.")
    if rng is None:
        rng = jax.random.key(0)  # Unused by greedy and beam search.
    return _generate(base_params, served, tokens, attention_mask, rng, model=model, options=options, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("model", "options", "eos_id"))
def _generate(base_params, served, tokens, attention_mask, rng, *, model, options, eos_id):
    logits, cache, cache_valid, lengths, slot = _prefill(
        model, base_params, served, tokens, attention_mask, options.max_new_tokens
    )

    def step(rows, token, t):
        cache, cache_valid, lengths = rows
        logits, cache = _feed(model, base_params, served, cache, cache_valid, token, lengths + t, slot + t)
        return logits, (cache, cache_valid, lengths)

    return _search(step, logits[:, -1], (cache, cache_valid, lengths), options, eos_id, rng)


def generate_seq2seq(base_params, prefix: dict, tokens, attention_mask, prompt: Sequence[int], *,
                     model: bart.Bart, options: Options, eos_id: int, rng=None):
    """New tokens [batch, max_new_tokens] (EOS after a row's end) of an encoder-decoder.

    prefix: `bart_prefix.serve(...)` ({} for none), one task for every row. tokens,
    attention_mask: [batch, source_len] sources (any padding side). prompt: the decoder's
    first tokens, the same for every row (`pipeline.decoder_prompt`); generated tokens follow
    it. The decoder keeps a KV cache (see module docstring). rng: needed for 'sample'.
    """
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask {attention_mask.shape} must have the tokens' shape {tokens.shape}.")
    for length, side in ((tokens.shape[1], "Source"), (len(prompt) + options.max_new_tokens, "Decoder prompt + new")):
        if length > model.config.max_len:
            raise ValueError(f"{side} length {length} exceeds max_len {model.config.max_len}.")
    if options.strategy == "sample" and rng is None:
        raise ValueError("strategy='sample' needs an rng key.")
    rng = jax.random.key(0) if rng is None else rng  # Unused by greedy and beam search.
    return _generate_seq2seq(base_params, prefix, tokens, attention_mask, jnp.asarray(prompt, jnp.int32), rng,
                             model=model, options=options, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("model", "options", "eos_id"))
def _generate_seq2seq(base_params, prefix, tokens, attention_mask, prompt, rng, *, model, options, eos_id):
    variables = {"params": base_params}
    memory = model.apply(variables, tokens, attention_mask, prefix, method=bart.Bart.encode)
    cache = model.apply(variables, memory, len(prompt) + options.max_new_tokens, method=bart.Bart.init_cache)
    prompt = jnp.broadcast_to(prompt, (tokens.shape[0], len(prompt)))
    decode_step = functools.partial(model.apply, variables, prefix=prefix, method=bart.Bart.decode_step)
    logits, cache = decode_step(prompt, cache, 0, attention_mask)

    def step(rows, token, t):
        cache, memory_valid = rows
        logits, cache = decode_step(token[:, None], cache, prompt.shape[1] + t, memory_valid)
        return logits[:, 0], (cache, memory_valid)

    return _search(step, logits[:, -1], (cache, attention_mask), options, eos_id, rng)


def _search(step, logits, rows, options, eos_id, rng):
    """Greedy, sampling or beam search from the first logits [rows, vocab]. `rows`: a pytree
    with a leading rows axis (the cache, and whatever else each row carries; beam search
    tiles and reorders it); `step(rows, token [rows], t) -> (logits, rows)` feeds token t."""
    if options.strategy == "beam":
        return _beam_search(step, logits, rows, options, eos_id)
    return _greedy_or_sample(step, logits, rows, options, eos_id, rng)


def _prefix_entries(served: dict):
    if "key" not in served:
        return None, None
    return tuple({"key": k, "value": v} for k, v in zip(served["key"], served["value"])), served["mask"]


def _prefill(model, base_params, served, tokens, attention_mask, max_new_tokens):
    """Runs prompt + sources through the model once, filling the cache's first slots.

    Returns (logits [rows, source_len, vocab], cache, cache_valid [rows, cache_len],
    next position [rows], next cache slot).
    """
    rows, source_len = tokens.shape
    prompt = served.get("prompt")
    num_prompt = 0 if prompt is None else prompt.shape[1]
    per_row = lambda x: jnp.repeat(x, rows // served["mask"].shape[0], axis=0)  # Groups -> rows.
    cache = gpt2.init_cache(model.config, rows, num_prompt + source_len + max_new_tokens)
    valid = [attention_mask.astype(bool), jnp.ones((rows, max_new_tokens), bool)]
    if prompt is not None:
        valid.insert(0, per_row(served["mask"]))
    cache_valid = jnp.concatenate(valid, axis=1)
    positions = jnp.maximum(jnp.cumsum(attention_mask, axis=1) - 1, 0)
    lengths = attention_mask.sum(axis=1)
    queries = None
    if "infix" in served:  # Only the source's last row sees it; it and the new rows move by its length.
        infix = per_row(served["infix"])
        last = jnp.arange(source_len) == source_len - 1
        shift = jnp.where(infix, per_row(served["mask"].sum(axis=1)), 0)
        queries = ~infix[:, None] | last[None]
        positions, lengths = positions + shift[:, None] * last[None], lengths + shift
    prefix, prefix_valid = _prefix_entries(served)
    logits, cache = model.apply(
        {"params": base_params}, tokens, positions, cache, 0, cache_valid,
        prefix=prefix, prefix_valid=prefix_valid, prefix_queries=queries, prompt=prompt, method=gpt2.GPT2.decode_step,
    )
    return logits, cache, cache_valid, lengths, num_prompt + source_len


def _feed(model, base_params, served, cache, cache_valid, token, position, slot):
    """One token per row ([rows]) at cache slot `slot`; returns (logits [rows, vocab], cache)."""
    prefix, prefix_valid = _prefix_entries(served)
    logits, cache = model.apply(
        {"params": base_params}, token[:, None], position[:, None], cache, slot, cache_valid,
        prefix=prefix, prefix_valid=prefix_valid, method=gpt2.GPT2.decode_step,
    )
    return logits[:, 0], cache


def _ngram_bans(generated, t, size: int, vocab_size: int):
    """[rows, vocab] bool: tokens that would repeat an n-gram of generated[:, :t] at step t."""
    rows, length = generated.shape
    starts = length - size + 1
    if size == 0 or starts <= 0:
        return jnp.zeros((rows, vocab_size), bool)
    if size == 1:
        seen = jnp.arange(length)[None, :] < t
        return jnp.zeros((rows, vocab_size), bool).at[jnp.arange(rows)[:, None], generated].max(seen)
    windows = jnp.stack([generated[:, j : j + size - 1] for j in range(starts)], axis=1)  # [rows, starts, size-1]
    current = jax.lax.dynamic_slice_in_dim(generated, jnp.maximum(t - size + 1, 0), size - 1, axis=1)
    match = jnp.all(windows == current[:, None], axis=-1) & (jnp.arange(starts) <= t - size)[None]
    following = generated[:, size - 1 : size - 1 + starts]  # The token after each window.
    return jnp.zeros((rows, vocab_size), bool).at[jnp.arange(rows)[:, None], following].max(match)


def _filter_logits(logits, options: Options):
    """Temperature, then top-k, then top-p (nucleus) filtering; removed tokens get -inf."""
    logits = logits.astype(jnp.float32) / options.temperature
    if options.top_k:
        kth = jax.lax.top_k(logits, min(options.top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if options.top_p < 1:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        kept = jnp.cumsum(probs, axis=-1) - probs < options.top_p  # Mass before a token < p.
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _greedy_or_sample(step, logits, cache, options, eos_id, rng):
    rows, steps = logits.shape[0], options.max_new_tokens

    def choose(logits, generated, t):
        logits = jnp.where(_ngram_bans(generated, t, options.no_repeat_ngram_size, logits.shape[-1]), -jnp.inf, logits)
        if options.strategy == "greedy":
            return jnp.argmax(logits, axis=-1)
        return jax.random.categorical(jax.random.fold_in(rng, t), _filter_logits(logits, options), axis=-1)

    def body(carry):
        t, logits, cache, generated, done = carry
        chosen = jnp.where(done, eos_id, choose(logits, generated, t)).astype(generated.dtype)
        generated = generated.at[:, t].set(chosen)
        done = done | (chosen == eos_id)
        logits, cache = step(cache, chosen, t)
        return t + 1, logits, cache, generated, done

    carry = (0, logits, cache, jnp.full((rows, steps), eos_id, jnp.int32), jnp.zeros((rows,), bool))
    carry = jax.lax.while_loop(lambda c: (c[0] < steps) & ~jnp.all(c[4]), body, carry)
    return carry[3]


def _beam_search(step, logits, cache, options, eos_id):
    """Beam search over [batch, beams] with a cache of batch * beams rows.

    The prefix stays [groups, n, ...] (one task, or one per source row): beams of a row
    share it. Per step the 2 * beams best extensions are scored; those ending in EOS (among
    the best `beams`) join the row's finished pool (best beams by normalised score), the
    others become the live beams. At the end live beams count as finished at full length.
    """
    batch, vocab = logits.shape
    beams, steps = options.beam_size, options.max_new_tokens
    if 2 * beams > beams * vocab:
        raise ValueError(f"beam_size {beams} needs a vocabulary of at least 2 tokens, got {vocab}.")
    tile = lambda x: jnp.repeat(x, beams, axis=0)  # [batch, ...] -> [batch * beams, ...]
    cache = jax.tree.map(tile, cache)
    neg_inf = jnp.float32(-jnp.inf)
    normalise = lambda score, length: score / jnp.power(length.astype(jnp.float32), options.length_penalty)

    def body(carry):
        t, logits, cache, alive, alive_score, fin, fin_score, done = carry
        logprobs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [batch * beams, vocab]
        bans = _ngram_bans(alive.reshape(batch * beams, steps), t, options.no_repeat_ngram_size, vocab)
        logprobs = jnp.where(bans, neg_inf, logprobs).reshape(batch, beams, vocab)
        candidates = (alive_score[:, :, None] + logprobs).reshape(batch, beams * vocab)
        score, index = jax.lax.top_k(candidates, 2 * beams)  # [batch, 2 * beams]
        source, token = index // vocab, index % vocab
        sequences = jnp.take_along_axis(alive, source[:, :, None], axis=1).at[:, :, t].set(token)
        ends = token == eos_id
        # Finished pool: old finished plus EOS candidates ranked among the best `beams` (as
        # Hugging Face does; so beam 1 is greedy), best `beams` by normalised score.
        ranked = (jnp.arange(2 * beams) < beams)[None]
        new_fin_score = jnp.where(ends & ranked & ~done[:, None], normalise(score, t + 1), neg_inf)
        pool_score = jnp.concatenate([fin_score, new_fin_score], axis=1)
        fin_score, best = jax.lax.top_k(pool_score, beams)
        fin = jnp.take_along_axis(jnp.concatenate([fin, sequences], axis=1), best[:, :, None], axis=1)
        # Live beams: the best non-EOS candidates.
        alive_score, keep = jax.lax.top_k(jnp.where(ends, neg_inf, score), beams)
        alive = jnp.take_along_axis(sequences, keep[:, :, None], axis=1)
        parent = jnp.take_along_axis(source, keep, axis=1)  # [batch, beams]
        rows = (jnp.arange(batch)[:, None] * beams + parent).reshape(-1)
        cache = jax.tree.map(lambda x: x[rows], cache)
        full = jnp.all(fin_score > neg_inf, axis=1)
        if options.early_stopping:
            done = done | full
        else:  # Stop only when no live beam can still beat the worst finished one.
            final_length = steps if options.length_penalty > 0 else t + 1
            best_reachable = normalise(alive_score[:, 0], jnp.asarray(final_length))
            done = done | (full & (fin_score[:, -1] >= best_reachable))
        alive_score = jnp.where(done[:, None], neg_inf, alive_score)
        chosen = alive[:, :, t].reshape(-1)
        logits, cache = step(cache, chosen, t)
        return t + 1, logits, cache, alive, alive_score, fin, fin_score, done

    alive = jnp.full((batch, beams, steps), eos_id, jnp.int32)
    alive_score = jnp.concatenate([jnp.zeros((batch, 1)), jnp.full((batch, beams - 1), neg_inf)], axis=1)
    fin_score = jnp.full((batch, beams), neg_inf)
    carry = (0, tile(logits), cache, alive, alive_score, alive, fin_score, jnp.zeros((batch,), bool))
    t, _, _, alive, alive_score, fin, fin_score, _ = jax.lax.while_loop(
        lambda c: (c[0] < steps) & ~jnp.all(c[7]), body, carry
    )
    # Live beams that ran to max_new_tokens finish there.
    pool_score = jnp.concatenate([fin_score, normalise(alive_score, jnp.asarray(steps))], axis=1)
    best = jnp.argmax(pool_score, axis=1)
    pool = jnp.concatenate([fin, alive], axis=1)
    return jnp.take_along_axis(pool, best[:, None, None], axis=1)[:, 0]
