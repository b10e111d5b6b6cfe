"""The prefix server over HTTP: a real server in a subprocess on a free port of 127.0.0.1, a
real client (aiohttp), answers checked token for token against single-task greedy decoding."""

import asyncio
import json
import os
import signal
import subprocess
import sys

import aiohttp
import jax
import pytest

from experiments import webnlg_small
from prefix_jax import decode, interop, peft_adapter, server
from prefix_jax import prefix as prefix_lib
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The embedded pre-trained model (its text is words, so each answer is distinct), a kv prefix.
OVERRIDES = {"prefix.length": 5, "prefix.reparam_dim": 0, "data.num_dev": 8, "serve.max_tokens": 40}
PROMPTS = ["Aarhus | leader | Jacob Bundsgaard", "Alan Bean | nationality | United States",
           "Abilene, Texas | country | United States && Abilene, Texas | isPartOf | Texas"]


def _config(**overrides):
    config = webnlg_small.get_config()
    for key, value in {**OVERRIDES, **overrides}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    """Two PEFT adapters of different lengths (5, the config's, and 3) and a workdir imported
    from the first; {name: path}, with the greedy reference text of every (task, prompt)."""
    root = tmp_path_factory.mktemp("tasks")
    config = _config()
    loader = server.PrefixLoader(config)
    model, base = loader.exp.model, loader.base_params
    paths = {}
    for name, length, seed in (("a", 5, 1), ("b", 3, 2)):
        spec = prefix_lib.PrefixSpec("kv", length)
        kv = jax.tree.map(lambda x: 4 * x, prefix_lib.init_random(spec, model.config.prefix_geometry, jax.random.key(seed)))
        paths[name] = str(root / name)
        peft_adapter.save(paths[name], spec, kv, model)
    paths["w"] = str(root / "workdir")
    interop.import_adapter(config, paths["w"], paths["a"])
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    eos = tokenizer_lib.eos_id(tokenizer)
    references = {}
    for name in ("a", "b"):
        served = loader.load(paths[name])
        for prompt in PROMPTS:
            tokens, mask = decode.left_pad([pipeline.encode_source(tokenizer, prompt)])
            new = decode.generate(base, served, tokens, mask, model=model, eos_id=eos,
                                  options=decode.Options(max_new_tokens=24))
            references[name, prompt] = tokenizer.decode(decode.strip_after_eos(new, eos)[0])
    assert len({references["a", p] for p in PROMPTS} | {references["b", p] for p in PROMPTS}) == 2 * len(PROMPTS)
    return paths, references


class Served:
    """`python -m prefix_jax.main serve` in a subprocess, on the port it picked."""

    def __init__(self, prefixes: dict, log: str, **overrides):
        self.process, self.url = server.launch(f"{ROOT}/experiments/webnlg_small.py", prefixes,
                                               {**OVERRIDES, **overrides}, log, cwd=ROOT)
        self.terminated = False

    def terminate(self) -> None:
        """One SIGTERM: graceful shutdown. A second one while the server exits is the default
        action (killed by the signal), so stop() never sends another."""
        if not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout=60) -> int:
        if self.process.poll() is None:
            self.terminate()
        return self.process.wait(timeout)


@pytest.fixture(scope="module")
def served(tasks, tmp_path_factory):
    paths, _ = tasks
    log = str(tmp_path_factory.mktemp("server") / "stderr.log")
    running = Served({"a": paths["a"], "b": paths["b"]}, log, **{"serve.rows": 4})
    yield running
    assert running.stop() == 0


def _run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 120))


async def _post(session, url, body, raw=None):
    async with session.post(url + "/v1/completions", data=raw, json=None if raw else body) as response:
        return response.status, await response.json()


async def _stream(session, url, body, on_first=None):
    """(text joined from the events, the last event's finish_reason, whether [DONE] came);
    on_first() is called when the first event arrives."""
    pieces, finish, done = [], None, False
    async with session.post(url + "/v1/completions", json={**body, "stream": True}) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "text/event-stream"
        async for line in response.content:
            line = line.decode().strip()
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                choice = json.loads(line[6:])["choices"][0]
                if on_first and not pieces:
                    on_first()
                pieces.append(choice["text"])
                finish = choice["finish_reason"]
    return "".join(pieces), finish, done


def _greedy(task, prompt, **extra):
    return {"model": task, "prompt": prompt, "max_tokens": 24, "temperature": 0, **extra}


def test_mixed_tasks_in_one_batch_equal_single_task_greedy(served, tasks):
    _, references = tasks

    async def go():
        async with aiohttp.ClientSession() as session:
            requests = [_greedy(t, p) for p in PROMPTS for t in ("a", "b")]
            answers = await asyncio.gather(*(_post(session, served.url, r) for r in requests))
            async with session.get(served.url + "/stats") as response:
                return requests, answers, await response.json()

    requests, answers, stats = _run(go())
    for request, (status, answer) in zip(requests, answers):
        assert status == 200, answer
        assert answer["choices"][0]["text"] == references[request["model"], request["prompt"]]
        assert answer["model"] == request["model"] and answer["object"] == "text_completion"
        assert answer["usage"]["completion_tokens"] <= 24
    assert stats["mixed_steps"] > 0 and stats["max_rows"] >= 2  # Rows of both tasks decoded together.


def test_streaming_equals_non_streaming_and_stop_strings(served, tasks):
    _, references = tasks

    async def go():
        async with aiohttp.ClientSession() as session:
            plain = await _post(session, served.url, _greedy("b", PROMPTS[1]))
            streamed = await _stream(session, served.url, _greedy("b", PROMPTS[1]))
            stop = references["b", PROMPTS[1]][3:5]
            stopped = await _post(session, served.url, _greedy("b", PROMPTS[1], stop=[stop, "\x00never"]))
            stopped_stream = await _stream(session, served.url, _greedy("b", PROMPTS[1], stop=stop))
            return plain, streamed, stop, stopped, stopped_stream

    (status, plain), streamed, stop, (_, stopped), stopped_stream = _run(go())
    text, finish = plain["choices"][0]["text"], plain["choices"][0]["finish_reason"]
    assert status == 200 and streamed == (text, finish, True)
    cut = text[: text.find(stop)]
    assert stopped["choices"][0] == {"text": cut, "index": 0, "logprobs": None, "finish_reason": "stop"}
    assert stopped_stream == (cut, "stop", True)


def test_sampling_depends_on_the_seed_not_the_batch(served):
    async def go():
        async with aiohttp.ClientSession() as session:
            body = {"model": "a", "prompt": PROMPTS[0], "max_tokens": 24, "temperature": 1.5, "top_p": 0.9}
            runs = await asyncio.gather(*(_post(session, served.url, {**body, "seed": s}) for s in (7, 7, 8)))
            alone = await _post(session, served.url, {**body, "seed": 7})
            return [answer["choices"][0]["text"] for _, answer in runs + [alone]]

    first, again, other, alone = _run(go())
    assert first == again == alone and first != other


def test_errors_are_json_with_the_right_status(served):
    async def go():
        async with aiohttp.ClientSession() as session:
            url = served.url
            results = {
                "bad json": await _post(session, url, None, raw=b"{not json"),
                "not an object": await _post(session, url, None, raw=b"[1, 2]"),
                "unknown task": await _post(session, url, _greedy("nope", PROMPTS[0])),
                "prompt too long": await _post(session, url, _greedy("a", " x" * 600)),
                "too many tokens": await _post(session, url, _greedy("a", PROMPTS[0], max_tokens=41)),
                "no room": await _post(session, url, _greedy("a", " x" * 480, max_tokens=40)),
                "bad temperature": await _post(session, url, _greedy("a", PROMPTS[0], temperature="hot")),
                "n": await _post(session, url, _greedy("a", PROMPTS[0], n=2)),
            }
            good = await _post(session, url, _greedy("a", PROMPTS[0]))  # The server is unharmed.
            return results, good

    results, good = _run(go())
    expected = {"bad json": (400, None), "not an object": (400, None), "unknown task": (404, "model"),
                "prompt too long": (413, "prompt"), "too many tokens": (400, "max_tokens"),
                "no room": (400, "max_tokens"), "bad temperature": (400, "temperature"), "n": (400, "n")}
    for case, (status, param) in expected.items():
        got_status, body = results[case]
        assert (got_status, body["error"]["param"]) == (status, param), (case, body)
        assert body["error"]["message"] and body["error"]["type"]
    assert good[0] == 200


def test_hot_load_and_unload_without_recompiling(served, tasks):
    paths, references = tasks

    async def go():
        async with aiohttp.ClientSession() as session:
            url = served.url
            stats = lambda: session.get(url + "/stats")
            await _post(session, url, _greedy("a", PROMPTS[0]))  # Every shape this test uses, compiled.
            async with stats() as response:
                before = (await response.json())["compiled"]
            async with session.post(url + "/v1/models", json={"model": "w", "path": paths["w"]}) as response:
                loaded = response.status
            again = await (await session.post(url + "/v1/models", json={"model": "w", "path": paths["w"]})).json()
            bad_path = await session.post(url + "/v1/models", json={"model": "x", "path": "/no/such/dir"})
            async with session.get(url + "/v1/models") as response:
                listed = [m["id"] for m in (await response.json())["data"]]
            answer = await _post(session, url, _greedy("w", PROMPTS[0]))
            async with stats() as response:
                after = (await response.json())["compiled"]
            removed = (await session.delete(url + "/v1/models/w")).status
            gone = await _post(session, url, _greedy("w", PROMPTS[0]))
            removed_again = (await session.delete(url + "/v1/models/w")).status
            return loaded, again, bad_path.status, listed, answer, before, after, removed, gone, removed_again

    loaded, again, bad_path, listed, answer, before, after, removed, gone, removed_again = _run(go())
    assert loaded == 201 and "already loaded" in again["error"]["message"] and bad_path == 400
    assert listed == ["a", "b", "w"]
    assert answer[1]["choices"][0]["text"] == references["a", PROMPTS[0]]  # The workdir holds a's prefix.
    assert after == before  # A task of a length the bank holds, in a free slot: nothing compiled.
    assert (removed, gone[0], removed_again) == (200, 404, 404)


def test_load_nothing_lost_or_mixed_up_and_queue_limit(tasks, tmp_path):
    """A burst beyond rows + queue: the excess is refused with 429, every accepted request is
    answered with exactly its own task's text; then SIGTERM lets a running request finish."""
    paths, references = tasks
    running = Served({"a": paths["a"], "b": paths["b"]}, str(tmp_path / "stderr.log"),
                     **{"serve.rows": 2, "serve.max_queue": 3})
    try:
        async def go():
            async with aiohttp.ClientSession() as session:
                await _post(session, running.url, _greedy("a", PROMPTS[0]))  # Compile before the burst.
                requests = [_greedy("ab"[i % 2], PROMPTS[i % 3]) for i in range(48)]
                answers = await asyncio.gather(*(_post(session, running.url, r) for r in requests))
                # Graceful shutdown: a request in flight when SIGTERM arrives still completes.
                last = await _stream(session, running.url, _greedy("b", PROMPTS[2], max_tokens=40), running.terminate)
                return requests, answers, last

        requests, answers, last = _run(go())
    finally:
        code = running.stop()
    statuses = [status for status, _ in answers]
    assert set(statuses) == {200, 429}, statuses
    for request, (status, answer) in zip(requests, answers):
        if status == 200:
            assert answer["choices"][0]["text"] == references[request["model"], request["prompt"]]
        else:
            assert answer["error"]["type"] == "rate_limit_error"
    assert last[2] and last[1] in ("stop", "length") and last[0].startswith(references["b", PROMPTS[2]])
    assert code == 0


@pytest.mark.parametrize("flags, message", [
    (["--prefixes=a"], "--prefixes entry 'a' is not NAME=PATH"),
    (["--prefixes=a=x,a=y"], "names task 'a' twice"),
    (["--prefixes="], "serve needs at least one task"),
    (["--prefixes=a=x", "--config.serve.max_len=600"], "serve.max_len is 600; it must be <= model.max_len (512)"),
    (["--prefixes=a=x", "--config.serve.rows=0"], "serve.rows is 0; it must be an integer >= 1"),
    (["--prefixes=a=/no/such/dir"], "/no/such/dir is neither a workdir"),
])
def test_bad_command_lines_fail_in_one_line(flags, message):
    result = subprocess.run([sys.executable, "-m", "prefix_jax.main", "serve", "--config=experiments/webnlg_small.py",
                             *flags], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and message in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
