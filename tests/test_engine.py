"""Continuous batching (decode/engine.py) on a tiny Llama: every request equals its own task's
single-request greedy decoding, whoever shares its batch and whenever it joins."""

import jax
import numpy as np
import pytest

from prefix_jax import decode
from prefix_jax import prefix as prefix_lib
from prefix_jax.decode import engine as engine_lib
from prefix_jax.models import families, llama

CONFIG = llama.LlamaConfig(vocab_size=61, num_layers=2, num_heads=4, num_kv_heads=2, d_model=32, d_ff=64,
                           max_len=64, head_dim=8, rope_theta=10000.0, rms_norm_epsilon=1e-5, tie_embeddings=False)
MODEL = llama.Llama(CONFIG)
EOS = 0


@pytest.fixture(scope="module")
def base():
    return jax.tree.map(lambda x: 3 * x, families.init_params(MODEL, jax.random.key(0)))


def _served(base, kind, length, seed):
    spec = prefix_lib.PrefixSpec(kind, length)
    params = jax.tree.map(lambda x: 3 * x, prefix_lib.init_random(spec, CONFIG.prefix_geometry, jax.random.key(seed)))
    return decode.serve(spec, params, MODEL, base)


@pytest.fixture(scope="module")
def tasks(base):
    """Two K/V tasks of different lengths, one of them a hidden-state prefix compiled to K/V."""
    return {"kv3": _served(base, "kv", 3, 10), "hidden5": _served(base, "hidden", 5, 11)}


def _reference(base, served, prompt, max_tokens):
    tokens, mask = decode.left_pad([prompt])
    new = decode.generate(base, served, tokens, mask, model=MODEL, eos_id=EOS,
                          options=decode.Options(max_new_tokens=max_tokens))
    return decode.strip_after_eos(new, EOS)[0]


class Collector:
    def __init__(self):
        self.tokens, self.finish = [], None

    def __call__(self, token, finish):
        assert self.finish is None, "emit after the end"
        if token is None:
            self.finish = finish
        else:
            self.tokens.append(token)


def _request(task, prompt, max_tokens=12, **kw):
    return engine_lib.Request(task, prompt, max_tokens, Collector(), **kw)


def _drain(engine):
    while engine.busy():
        engine.run_once()


def test_mixed_tasks_joining_mid_flight_equal_single_requests(base, tasks):
    # One task slot to start with: the second task grows the bank (and its prefix length).
    engine = engine_lib.Engine(MODEL, base, eos_id=EOS, rows=4, task_slots=1)
    for name, served in tasks.items():
        engine.add_task(name, served)
    first = [_request("kv3", [5, 6, 7]), _request("hidden5", [8, 9, 10, 11, 12])]
    later = [_request("kv3", [13, 14], 20), _request("hidden5", list(range(20, 40))),
             _request("hidden5", [3] * 17, 5)]  # Five requests, four rows: the last waits for a free one.
    for request in first:
        engine.submit(request)
    for _ in range(3):
        engine.run_once()
    for request in later:
        engine.submit(request)
    _drain(engine)
    for request in first + later:
        want = _reference(base, tasks[request.task], request.prompt, request.max_tokens)
        assert request.emit.tokens == want
        assert request.emit.finish == ("stop" if len(want) < request.max_tokens else "length")
    assert engine.stats["mixed_steps"] > 0 and engine.stats["max_rows"] == 4


def test_sampling_depends_on_the_request_not_its_neighbours(base, tasks):
    engine = engine_lib.Engine(MODEL, base, eos_id=EOS, rows=4)
    engine.add_task("t", tasks["kv3"])
    sampled = dict(temperature=1.3, top_p=0.9, seed=5)
    alone = _request("t", [5, 6, 7], 16, **sampled)
    engine.submit(alone)
    _drain(engine)
    crowd = [_request("t", [5, 6, 7], 16, **sampled), _request("t", [9, 9], 16),
             _request("t", [5, 6, 7], 16, **dict(sampled, seed=6))]
    for request in crowd:
        engine.submit(request)
    _drain(engine)
    assert crowd[0].emit.tokens == alone.emit.tokens != crowd[2].emit.tokens
    assert crowd[1].emit.tokens == _reference(base, tasks["kv3"], [9, 9], 16)  # Greedy beside sampled rows.


def test_queue_limit_lengths_unknown_tasks_and_kinds_refused(base, tasks):
    engine = engine_lib.Engine(MODEL, base, eos_id=EOS, rows=1, max_queue=2)
    engine.add_task("t", tasks["kv3"])
    engine.submit(_request("t", [1, 2]))
    engine.submit(_request("t", [1, 2]))
    with pytest.raises(engine_lib.QueueFull, match="2 requests are waiting"):
        engine.submit(_request("t", [1, 2]))
    with pytest.raises(KeyError, match="'nope' is not loaded"):
        engine.submit(_request("nope", [1, 2]))
    with pytest.raises(KeyError, match="already loaded"):
        engine.add_task("t", tasks["kv3"])
    fresh = engine_lib.Engine(MODEL, base, eos_id=EOS)
    fresh.add_task("t", tasks["kv3"])
    with pytest.raises(ValueError, match="exceed the 64 positions"):
        fresh.submit(_request("t", [1] * 60, 5))
    with pytest.raises(ValueError, match="prompt-tuning prefix"):
        fresh.add_task("p", _served(base, "prompt", 2, 3))
    with pytest.raises(ValueError, match="an infix"):
        fresh.add_task("i", _served(base, "infix", 2, 3))


def test_unload_lets_running_requests_finish_and_cancel_frees_the_row(base, tasks):
    engine = engine_lib.Engine(MODEL, base, eos_id=EOS, rows=2, task_slots=2)
    engine.add_task("a", tasks["kv3"])
    engine.add_task("b", tasks["hidden5"])
    running, cancelled = _request("a", [5, 6, 7], 20), _request("b", [4, 4], 20)
    engine.submit(running)
    engine.submit(cancelled)
    engine.run_once()
    engine.remove_task("a")
    with pytest.raises(KeyError):
        engine.submit(_request("a", [1]))
    engine.add_task("c", tasks["hidden5"])  # a's slot is still in use: c must not take it.
    engine.cancel(cancelled)
    emitted = len(cancelled.emit.tokens)
    _drain(engine)
    assert running.emit.tokens == _reference(base, tasks["kv3"], [5, 6, 7], 20)
    assert len(cancelled.emit.tokens) == emitted and cancelled.emit.finish is None
    late = _request("c", [4, 4], 20)
    engine.submit(late)
    _drain(engine)
    assert late.emit.tokens == _reference(base, tasks["hidden5"], [4, 4], 20)
    assert np.all(np.asarray([engine.tasks["b"], engine.tasks["c"]]) != 0)  # Slot 0 was a's, in use at c's load.


@pytest.mark.parametrize("busy", [1, 4, 16])
def test_a_step_updates_the_donated_cache_in_place(base, tasks, busy):
    # A copy of the whole cache each step made one request's token cost the whole cache's
    # size (SmolLM2 at 16 rows x 512 slots: 104 ms against 37 ms at 1 row); the step over
    # the first `busy` rows must write its slots into the donated cache without copying it.
    # (XLA keeps caches of a few rows x 64 slots in place either way: 512 slots shows it.)
    engine = engine_lib.Engine(MODEL, base, eos_id=EOS, rows=16, max_len=512)
    engine.add_task("kv3", tasks["kv3"])
    s = engine._state
    sampling = tuple(s[name][:busy] for name in ("temperature", "top_p", "seed", "count"))
    compiled = engine_lib._step.lower(
        base, engine._bank, engine._cache, s["token"][:busy], s["start"][:busy], s["index"][:busy],
        s["slot"][:busy], sampling, model=MODEL, sample=False, nucleus=False,
    ).compile().as_text()
    cache_shape = "f32[%d,%d,%d,%d]" % engine._cache[0]["key"].shape
    writes = [line for line in compiled.splitlines() if line.lstrip().startswith("%") and f"= {cache_shape}" in line]
    assert writes, "no instruction produces the cache: the test reads the wrong shape"
    assert not [line for line in writes if " copy(" in line]
