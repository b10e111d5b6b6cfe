"""Search strategies over a model's step function: greedy, sampling, beam search.

Each works on `step(rows, token [rows], t) -> (logits [rows, vocab], rows)`, where `rows`
is a pytree with a leading rows axis (a KV cache and whatever else each row carries; beam
search tiles and reorders it), so every family and every serving setup shares them.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


STRATEGIES = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class Options:
    """How to decode; hashable (a static jit argument).

    Beam search scores a finished hypothesis by sum(log p) / length**length_penalty, with
    length counting its generated tokens including EOS. early_stopping=True stops a row
    once it has beam_size finished hypotheses; False goes on until no live beam can still
    beat the worst of them (exact). no_repeat_ngram_size bans repeating an n-gram of the
    generated tokens (not the source: copying entity names from the table is the task).
    min_new_tokens bans EOS before that many tokens; banned_tokens are never generated
    (Li & Liang decode with both: min length 5, newline tokens banned). eos_penalty is
    subtracted from EOS's logit (log-probability in beam search) at every step: a reward
    for going on, which under greedy search equals Murray & Chiang's (2018) per-word reward
    against outputs that end too early. As in Hugging Face's logits processors, beam search
    bans and penalises on the log-probabilities without renormalising.
    """

    strategy: str = "greedy"
    max_new_tokens: int = 32
    beam_size: int = 1
    length_penalty: float = 1.0
    early_stopping: bool = True
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    banned_tokens: tuple[int, ...] = ()
    eos_penalty: float = 0.0
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
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}.")
        if self.eos_penalty < 0:
            raise ValueError(f"eos_penalty must be >= 0, got {self.eos_penalty}.")
        if not isinstance(self.banned_tokens, tuple) or any(t < 0 for t in self.banned_tokens):
            raise ValueError(f"banned_tokens must be a tuple of token ids, got {self.banned_tokens!r}.")


def strip_after_eos(new_tokens: np.ndarray, eos_id: int) -> list[list[int]]:
    """Each row's tokens up to (not including) its first EOS."""
    rows = []
    for row in np.asarray(new_tokens):
        stop = np.flatnonzero(row == eos_id)
        rows.append(row[: stop[0]].tolist() if len(stop) else row.tolist())
    return rows



def search(step, logits, rows, options, eos_id, rng):
    """Greedy, sampling or beam search from the first logits [rows, vocab]. `rows`: a pytree
    with a leading rows axis (the cache, and whatever else each row carries; beam search
    tiles and reorders it); `step(rows, token [rows], t) -> (logits, rows)` feeds token t."""
    if options.strategy == "beam":
        return _beam_search(step, logits, rows, options, eos_id)
    return _greedy_or_sample(step, logits, rows, options, eos_id, rng)


def _bans(generated, t, options: Options, eos_id: int, vocab_size: int):
    """[rows, vocab] bool: what step t may not choose (repeated n-grams, banned tokens, early EOS)."""
    bans = _ngram_bans(generated, t, options.no_repeat_ngram_size, vocab_size)
    if options.banned_tokens:
        bans = bans.at[:, jnp.asarray(options.banned_tokens)].set(True)
    if options.min_new_tokens:
        bans = bans.at[:, eos_id].max(t < options.min_new_tokens)
    return bans


def _penalise_eos(logits, options: Options, eos_id: int):
    return logits.at[:, eos_id].add(-options.eos_penalty) if options.eos_penalty else logits


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


def filter_logits(logits, temperature, top_k: int = 0, top_p=None):
    """Temperature, then top-k, then top-p (nucleus) filtering; removed tokens get -inf.

    temperature, top_p: floats, or [rows] arrays (each row its own, as a server's requests);
    top_p None: no nucleus filter (skips the sort)."""
    logits = logits.astype(jnp.float32) / jnp.reshape(temperature, (-1, 1))
    if top_k:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        kept = jnp.cumsum(probs, axis=-1) - probs < jnp.reshape(top_p, (-1, 1))  # Mass before a token < p.
        threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return logits


def _greedy_or_sample(step, logits, cache, options, eos_id, rng):
    rows, steps = logits.shape[0], options.max_new_tokens

    def choose(logits, generated, t):
        logits = jnp.where(_bans(generated, t, options, eos_id, logits.shape[-1]), -jnp.inf, _penalise_eos(logits, options, eos_id))
        if options.strategy == "greedy":
            return jnp.argmax(logits, axis=-1)
        return jax.random.categorical(jax.random.fold_in(rng, t), filter_logits(
            logits, options.temperature, options.top_k, options.top_p if options.top_p < 1 else None), axis=-1)

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
        bans = _bans(alive.reshape(batch * beams, steps), t, options, eos_id, vocab)
        logprobs = jnp.where(bans, neg_inf, _penalise_eos(logprobs, options, eos_id)).reshape(batch, beams, vocab)
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
