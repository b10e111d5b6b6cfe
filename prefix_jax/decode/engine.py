"""Continuous batching: requests of many tasks decoded together in one running batch.

The engine owns a KV cache of `rows` rows. A request is prefilled alone into a free row
(its source left-padded to a power-of-two width, so few shapes compile; the family's own
`prefill`), then joins every decode step, at its own cache slot and position, until it
ends; its row is then free for the next request. No request waits for another to
finish, and each row reads its own task's prefix from a bank of `task_slots` tasks
(`serving.route` per row): loading a task into a free slot of the bank writes its K/V in
place and compiles nothing (a longer prefix than the bank's, or a full bank, reallocates
it once). Each step computes only the rows up to the highest busy one, rounded up to a
power of two, so a lone request is decoded at batch 1.

Greedy rows and sampled rows (temperature, top_p, seed: a row's draws depend only on its
own seed and step, not on its neighbours) mix in one step. Serves K/V prefixes (kv,
hidden, reparameterised, PEFT adapters) of decoder-only families; a prompt-tuning prefix
or an infix changes the sources' rows and is refused.

The engine runs in its own thread (`start`); `submit`, `cancel`, `add_task` and
`remove_task` are thread-safe. A request's `emit(token, None)` is called once per new
token and `emit(None, reason)` once at its end: "stop" (EOS), "length" (max_tokens), or
"error: ..." when the step failed.
"""

import collections
import dataclasses
import functools
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from prefix_jax.decode import search, serving
from prefix_jax.models import families, layers


class QueueFull(Exception):
    """More requests wait than the engine's max_queue."""


@dataclasses.dataclass(eq=False)
class Request:
    task: str
    prompt: list  # Token ids: the source in the task's training format.
    max_tokens: int
    emit: Callable  # emit(token, None) per new token; emit(None, finish_reason) once at the end.
    temperature: float = 0.0  # 0: greedy.
    top_p: float = 1.0
    seed: int = 0
    ignore_eos: bool = False  # Generate max_tokens whatever comes (benchmarks: equal work per request).
    cancelled: bool = False
    # Set by the engine: which row and task slot serve it, how many tokens it has.
    row: Optional[int] = None
    slot: Optional[int] = None
    generated: int = 0


def _width(length: int, room: int) -> int:
    """The prefill width for a source of `length` tokens: the next power of two (at least 16)
    that leaves `room`, else the length itself."""
    width = max(16, 1 << (length - 1).bit_length())
    return width if width <= room else length


def _rows_to_compute(busy_rows: list, total: int) -> int:
    """Rows 0..k-1 cover every busy row; k a power of two (few step shapes), at most total."""
    return min(total, 1 << max(busy_rows).bit_length()) if busy_rows else 0


def _choose(logits, temperature, top_p, seed, count, *, sample: bool, nucleus: bool):
    """Each row's next token: argmax where temperature is 0, else a draw keyed by (seed, count)."""
    greedy = jnp.argmax(logits, axis=-1)
    if not sample:
        return greedy
    filtered = search.filter_logits(logits, jnp.where(temperature > 0, temperature, 1.0), 0, top_p if nucleus else None)
    keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.key(s), c))(seed, count)
    drawn = jax.vmap(jax.random.categorical)(keys, filtered)
    return jnp.where(temperature > 0, drawn, greedy)


@functools.partial(jax.jit, static_argnames=("model", "sample", "nucleus"), donate_argnames=("cache",))
def _insert(base_params, bank, cache, tokens, mask, row, slot, sampling, *, model, sample, nucleus):
    """Prefills one left-padded source [1, width] with task `slot`'s prefix into cache row
    `row`, slots 0..width-1; returns (its first new token [1], cache)."""
    served = serving.select(bank, slot[None])
    logits, (small, _, _), _ = families.of(model).prefill(model, base_params, served, tokens, mask, 0, last_only=True)
    cache = jax.tree.map(
        lambda big, new: jax.lax.dynamic_update_slice(big, new.astype(big.dtype), (row, 0, 0, 0)), cache, small
    )
    return _choose(logits[:, -1], *sampling, sample=sample, nucleus=nucleus), cache


@functools.partial(jax.jit, static_argnames=("model", "sample", "nucleus"), donate_argnames=("cache",))
def _step(base_params, bank, cache, tokens, start, index, slots, sampling, *, model, sample, nucleus):
    """Feeds each of the first k rows' last token (k = tokens' length) at its own cache slot
    `index` and position `index - start`, with its own task's prefix; returns (next tokens [k], cache)."""
    cache_len = cache[0]["key"].shape[1]
    served = serving.select(bank, slots)
    cache_valid = jnp.arange(cache_len)[None, :] >= start[:, None]  # Left padding of the prefill.
    logits, (cache, _, _) = families.of(model).step(
        model, base_params, served, index, (cache, cache_valid, index - start), tokens, 0
    )
    return _choose(logits, *sampling, sample=sample, nucleus=nucleus), cache


class Engine:
    """A running batch of `rows` requests over one frozen model and a bank of task prefixes;
    each request may use max_len positions (its KV-cache row; default the model's max_len)."""

    def __init__(self, model, base_params, *, eos_id: int, rows: int = 16, task_slots: int = 8,
                 max_queue: int = 256, max_len: Optional[int] = None):
        if families.of(model).encoder_decoder:
            raise ValueError("The server decodes decoder-only models; an encoder-decoder has no continuous batching here.")
        self.model, self.base_params, self.eos_id = model, base_params, eos_id
        self.rows, self.max_queue = rows, max_queue
        self.max_len = max_len or model.config.max_len
        geometry = model.config.prefix_geometry
        self._cache = layers.empty_cache(geometry, rows, self.max_len, model.config.dtype)
        self._bank = None  # {"key", "value": [L, task_slots, n, kv_heads, head_dim], "mask": [task_slots, n]}
        self._task_slots = task_slots
        self.tasks: dict = {}  # name -> bank slot
        self._slot_users = collections.Counter()  # bank slot -> requests queued or decoding with it
        self._retired: set = set()  # Slots of removed tasks still in use.
        self._pending = collections.deque()
        self._active: list = [None] * rows  # Request per row.
        self._state = {name: np.zeros(rows, np.int32) for name in ("token", "start", "index", "slot", "seed", "count")}
        self._state.update(temperature=np.zeros(rows, np.float32), top_p=np.ones(rows, np.float32))
        self._lock = threading.Condition()
        self._thread = None
        self._stopping = False
        self.stats = collections.Counter()  # steps, row_steps, mixed_steps, tokens, prefills, max_rows

    # Tasks.
    def add_task(self, name: str, served: dict) -> None:
        """Adds a task's served prefix (`serving.serve`, K/V form) to the bank."""
        if "key" not in served or "infix" in served:
            what = "a prompt-tuning prefix" if "prompt" in served else "an infix" if served else "no prefix"
            raise ValueError(f"Task {name!r} has {what}; the server takes K/V prefixes (kv, hidden, PEFT adapters).")
        serving.route(served, None, 1, self.model.config.prefix_geometry)  # Made for this model?
        with self._lock:
            if name in self.tasks:
                raise KeyError(f"Task {name!r} is already loaded; unload it first.")
            taken = set(self.tasks.values()) | self._retired
            free = [s for s in range(self._task_slots) if s not in taken]
            n = served["mask"].shape[1]
            if not free or self._bank is None or n > self._bank["mask"].shape[1]:
                self._grow(n, extra_slot=not free)
                free = [s for s in range(self._task_slots) if s not in taken]
            slot = free[0]
            width = self._bank["mask"].shape[1]
            # Host copies: a restored prefix may be committed to a device, and a bank that
            # changed commitment would be a new jit signature (a recompilation).
            served = jax.tree.map(np.asarray, served)
            pad = lambda x, axis: jnp.pad(x, [(0, width - n) if i == axis else (0, 0) for i in range(x.ndim)])
            self._bank = {
                "key": self._bank["key"].at[:, slot].set(pad(served["key"][:, 0], 1)),
                "value": self._bank["value"].at[:, slot].set(pad(served["value"][:, 0], 1)),
                "mask": self._bank["mask"].at[slot].set(pad(served["mask"][0], 0)),
            }
            self.tasks[name] = slot

    def _grow(self, n: int, extra_slot: bool) -> None:
        """A bank with room for prefixes of length n (and twice the slots when full): a new
        shape, so the next steps compile once more."""
        g = self.model.config.prefix_geometry
        if extra_slot and self._bank is not None:
            self._task_slots *= 2
        width = max(n, 0 if self._bank is None else self._bank["mask"].shape[1])
        bank = {
            "key": jnp.zeros((g.num_layers, self._task_slots, width, g.num_kv_heads, g.head_dim), self.model.config.dtype),
            "mask": jnp.zeros((self._task_slots, width), bool),
        }
        bank["value"] = bank["key"]
        if self._bank is not None:
            old_slots, old_width = self._bank["mask"].shape
            for name in ("key", "value"):
                bank[name] = bank[name].at[:, :old_slots, :old_width].set(self._bank[name])
            bank["mask"] = bank["mask"].at[:old_slots, :old_width].set(self._bank["mask"])
        logging.info("Prefix bank: %d task slots of length %d.", self._task_slots, width)
        self._bank = bank

    def remove_task(self, name: str) -> None:
        """Unloads a task: new requests for it are refused; those running finish first."""
        with self._lock:
            slot = self.tasks.pop(name)  # KeyError: not loaded.
            if self._slot_users[slot]:
                self._retired.add(slot)

    # Requests.
    def submit(self, request: Request) -> None:
        with self._lock:
            if request.task not in self.tasks:
                raise KeyError(f"Task {request.task!r} is not loaded.")
            if len(self._pending) >= self.max_queue:
                raise QueueFull(f"{len(self._pending)} requests are waiting (serve.max_queue); retry later.")
            if len(request.prompt) + request.max_tokens > self.max_len:
                raise ValueError(f"{len(request.prompt)} prompt tokens + max_tokens {request.max_tokens} exceed "
                                 f"the {self.max_len} positions a request may use.")
            request.slot = self.tasks[request.task]
            self._slot_users[request.slot] += 1
            self._pending.append(request)
            self._lock.notify()

    def cancel(self, request: Request) -> None:
        """Stops a request (its client left, or a stop string ended it); no further emits."""
        with self._lock:
            request.cancelled = True
            self._lock.notify()

    def _release(self, request: Request) -> None:
        self._slot_users[request.slot] -= 1
        if not self._slot_users[request.slot]:
            self._retired.discard(request.slot)
        if request.row is not None and self._active[request.row] is request:
            self._active[request.row] = None
            self._state["index"][request.row] = self._state["start"][request.row] = 0  # Idle rows write in bounds.

    def _finish(self, request: Request, reason: str) -> None:
        self._release(request)
        if not request.cancelled:
            request.emit(None, reason)

    # The decode loop.
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="decode-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends every request (finish reason "cancelled") and the thread."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def counters(self) -> dict:
        """The stats, with the current queue and rows, and how many step/prefill shapes the process compiled."""
        with self._lock:
            return {**self.stats, "queued": len(self._pending), "rows": sum(r is not None for r in self._active),
                    "compiled": _step._cache_size() + _insert._cache_size()}

    def busy(self) -> bool:
        with self._lock:
            return bool(self._pending) or any(r is not None for r in self._active)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not (self._stopping or self._pending or any(r is not None for r in self._active)):
                    self._lock.wait()
                if self._stopping:
                    for request in list(self._pending) + [r for r in self._active if r is not None]:
                        self._finish(request, "cancelled")
                    self._pending.clear()
                    return
            try:
                self.run_once()
            except Exception as error:  # A bug: fail the requests in flight, keep serving.
                logging.exception("Decode step failed.")
                with self._lock:
                    for request in [r for r in self._active if r is not None]:
                        self._finish(request, f"error: {type(error).__name__}: {error}")

    def run_once(self) -> None:
        """Admits waiting requests into free rows (prefilling each), then one step for every busy row."""
        with self._lock:
            for request in [r for r in self._pending if r.cancelled]:
                self._pending.remove(request)
                self._release(request)
            for request in [r for r in self._active if r is not None and r.cancelled]:
                self._release(request)
            admitted = []
            while self._pending and None in self._active:
                request = self._pending.popleft()
                request.row = self._active.index(None)
                self._active[request.row] = request
                admitted.append(request)
            bank = self._bank
        for request in admitted:
            self._prefill(request, bank)
        with self._lock:
            busy = [row for row, r in enumerate(self._active) if r is not None]
        k = _rows_to_compute(busy, self.rows)
        if not busy:
            return
        s = self._state
        sampling = (s["temperature"][:k], s["top_p"][:k], s["seed"][:k], s["count"][:k])
        tokens, self._cache = _step(
            self.base_params, bank, self._cache, s["token"][:k], s["start"][:k], s["index"][:k], s["slot"][:k],
            sampling, model=self.model, **self._flags(busy),
        )
        tokens = np.asarray(tokens)
        with self._lock:
            self.stats.update(steps=1, row_steps=len(busy), mixed_steps=len({s["slot"][r] for r in busy}) > 1)
            self.stats["max_rows"] = max(self.stats["max_rows"], len(busy))
            for row in busy:
                s["index"][row] += 1
                self._emit(self._active[row], int(tokens[row]))

    def _flags(self, rows: list) -> dict:
        sampled = [r for r in rows if self._state["temperature"][r] > 0]
        return dict(sample=bool(sampled), nucleus=any(self._state["top_p"][r] < 1 for r in sampled))

    def _prefill(self, request: Request, bank) -> None:
        row, s = request.row, self._state
        width = _width(len(request.prompt), self.max_len - request.max_tokens + 1)
        tokens, mask = serving.pad_rows([request.prompt], width)
        s["start"][row], s["index"][row], s["slot"][row] = width - len(request.prompt), width, request.slot
        s["temperature"][row], s["top_p"][row], s["seed"][row], s["count"][row] = (
            request.temperature, request.top_p, request.seed, 0)
        sampling = tuple(s[name][row : row + 1] for name in ("temperature", "top_p", "seed", "count"))
        first, self._cache = _insert(self.base_params, bank, self._cache, tokens, mask, np.int32(row),
                                     np.int32(request.slot), sampling, model=self.model, **self._flags([row]))
        with self._lock:
            self.stats.update(prefills=1)
            self._emit(request, int(np.asarray(first)[0]))

    def _emit(self, request: Request, token: int) -> None:
        """Hands a new token to its request (under the lock): the end at EOS or max_tokens."""
        if request.cancelled:
            return self._release(request)
        request.generated += 1
        self._state["token"][request.row] = token
        self._state["count"][request.row] = request.generated
        if token == self.eos_id and not request.ignore_eos:
            return self._finish(request, "stop")
        self.stats.update(tokens=1)
        request.emit(token, None)
        if request.generated >= request.max_tokens:
            self._finish(request, "length")

