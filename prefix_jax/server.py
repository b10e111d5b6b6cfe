"""`serve`: one frozen model, many tasks' prefixes, one running batch, over HTTP.

    python -m prefix_jax.main serve --config=FILE --prefixes=NAME=PATH,... [--host=127.0.0.1] [--port=8000]

PATH is a workdir trained with --config (its best checkpoint), or a PEFT prefix-tuning
adapter directory (what `export` writes; any length). The endpoints follow OpenAI's
completions API, `model` naming the task:

  POST   /v1/completions     {"model", "prompt", "max_tokens", "temperature", "top_p", "stop",
                              "stream", "seed", "ignore_eos" (vLLM's extension)}; the prompt is
                              the task's source (WebNLG's linearised triples, ...), encoded as
                              in training
  GET    /v1/models          the loaded tasks
  POST   /v1/models          {"model": NAME, "path": PATH}: load a task, no restart
  DELETE /v1/models/NAME     unload it (its running requests finish first)
  GET    /stats              the engine's counters (steps, rows per step, mixed-task steps,
                              queue, shapes compiled)

Errors are OpenAI's JSON shape, {"error": {"message", "type", "param", "code"}}: 400 bad
JSON or field, 404 unknown task, 413 prompt too long, 429 queue full; the batch goes on.
aiohttp serves it: one asyncio process, server-sent events and graceful shutdown built
in, its client used by the tests; the decode engine (decode/engine.py) runs in a thread.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import ml_collections
from absl import logging
from aiohttp import web

from prefix_jax import checkpoint, errors, loop, peft_adapter, trainable, validation
from prefix_jax.data import pipeline
from prefix_jax.data import tokenizer as tokenizer_lib
from prefix_jax.decode import engine as engine_lib
from prefix_jax.decode import serving
from prefix_jax.train import create

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


class RequestError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param=None, kind="invalid_request_error"):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind

    def response(self) -> web.Response:
        body = {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": None}}
        return web.json_response(body, status=self.status)


def parse_prefixes(value: str) -> dict:
    """'a=PATH,b=PATH' -> {"a": PATH, "b": PATH}; a malformed entry is an error naming it."""
    tasks = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        name, sep, path = entry.partition("=")
        if not sep or not _NAME.match(name) or not path:
            raise errors.UserError(f"--prefixes entry {entry!r} is not NAME=PATH (NAME: letters, digits, _.:-).")
        if name in tasks:
            raise errors.UserError(f"--prefixes names task {name!r} twice.")
        tasks[name] = path
    return tasks


class PrefixLoader:
    """Reads a task's prefix from a workdir or a PEFT adapter directory into serving form."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.exp, state = create(config)
        self.base_params = state.params["base"]
        self._target = trainable.partition(state.params, self.exp.labels)[0]
        self._fingerprint = loop.fingerprint(config, self.exp, state)

    def load(self, path: str) -> dict:
        model = self.exp.model
        if os.path.isfile(os.path.join(path, "adapter_config.json")):
            spec, kv = peft_adapter.load(path, model.config)
            return serving.serve(spec, kv, model, self.base_params)
        if not os.path.isdir(os.path.join(path, "best")):
            raise errors.UserError(
                f"{path} is neither a workdir (no best/) nor a PEFT adapter directory (no adapter_config.json).")
        if self.exp.spec is None or self.config.train.mode != "prefix":
            raise errors.UserError(f"Serving workdir {path} needs a prefix config (prefix.kind, train.mode='prefix').")
        checkpointer = checkpoint.Checkpointer(path, keep=1, async_save=False)
        try:
            params, _ = checkpointer.restore_best(self._target, self._fingerprint)
        finally:
            checkpointer.close()
        return serving.serve(self.exp.spec, params["prefix"], model, self.base_params)


def _field(body: dict, name: str, kind, default, check=None, message=""):
    value = body.get(name, default)
    if value is None:
        value = default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool) or (check and not check(value)):
        raise RequestError(400, f"'{name}' must be {message or kind.__name__}; got {value!r}.", param=name)
    return value


class Detokenizer:
    """A request's text so far, with stop strings cut and streamed text held back while it
    could still be the start of a stop string (or of a multi-byte character)."""

    def __init__(self, tokenizer, stop: list):
        self.tokenizer, self.stop, self.ids, self.sent, self.stopped = tokenizer, stop, [], 0, False

    def add(self, token: int) -> str:
        """The new text that is safe to send."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            self.stopped = True
            return self._send(text[: min(cuts)])
        hold = max([len(s) - 1 for s in self.stop if any(text.endswith(s[:i]) for i in range(1, len(s)))] + [0])
        safe = len(text) - hold
        while safe > self.sent and text[safe - 1] == "\ufffd":
            safe -= 1
        return self._send(text[:safe])

    def _send(self, text: str) -> str:
        new, self.sent = text[self.sent:], max(self.sent, len(text))
        return new

    def rest(self) -> str:
        """The held-back text, at the end of a request that no stop string ended."""
        return "" if self.stopped else self._send(self.tokenizer.decode(self.ids))


class Server:
    def __init__(self, config: ml_collections.ConfigDict, loader: PrefixLoader, tokenizer):
        c = config.serve
        self.config, self.loader, self.tokenizer = config, loader, tokenizer
        self.max_tokens = c.max_tokens
        self.engine = engine_lib.Engine(
            loader.exp.model, loader.base_params, eos_id=tokenizer_lib.eos_id(tokenizer), rows=c.rows,
            task_slots=c.task_slots, max_queue=c.max_queue, max_len=c.max_len,
        )
        self.created = {}

    def load_task(self, name: str, path: str) -> None:
        self.engine.add_task(name, self.loader.load(path))
        self.created[name] = int(time.time())
        logging.info("Loaded task %r from %s.", name, path)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        app.add_routes([
            web.post("/v1/completions", self.completions),
            web.get("/v1/models", self.models),
            web.post("/v1/models", self.add_model),
            web.delete("/v1/models/{name}", self.remove_model),
            web.get("/stats", self.stats),
        ])
        app.on_cleanup.append(self._stop_engine)
        return app

    async def _stop_engine(self, app) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)

    async def stats(self, request) -> web.Response:
        return web.json_response(self.engine.counters())

    async def models(self, request) -> web.Response:
        data = [{"id": name, "object": "model", "created": self.created.get(name, 0), "owned_by": "prefix_jax"}
                for name in sorted(self.engine.tasks)]
        return web.json_response({"object": "list", "data": data})

    async def _json(self, request) -> dict:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RequestError(400, f"The body is not valid JSON: {error}.")
        if not isinstance(body, dict):
            raise RequestError(400, "The body must be a JSON object.")
        return body

    async def add_model(self, request) -> web.Response:
        try:
            body = await self._json(request)
            name = _field(body, "model", str, None, _NAME.match, "a task name (letters, digits, _.:-)")
            path = _field(body, "path", str, None, None, "a workdir or PEFT adapter directory")
            if name in self.engine.tasks:
                raise RequestError(409, f"Task {name!r} is already loaded; DELETE it first.", "model")
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.load_task, name, path)
            except (errors.UserError, ValueError, OSError) as error:
                raise RequestError(400, f"Cannot load {path}: {error}", "path")
            except KeyError as error:
                raise RequestError(409, error.args[0], "model")
        except RequestError as error:
            return error.response()
        return web.json_response({"id": name, "object": "model", "created": self.created[name]}, status=201)

    async def remove_model(self, request) -> web.Response:
        name = request.match_info["name"]
        try:
            self.engine.remove_task(name)
        except KeyError:
            return RequestError(404, f"Task {name!r} is not loaded.", "model", "not_found_error").response()
        self.created.pop(name, None)
        return web.json_response({"id": name, "object": "model", "deleted": True})

    def _parse(self, body: dict) -> tuple:
        for unsupported in ("n", "best_of"):
            if body.get(unsupported, 1) != 1:
                raise RequestError(400, f"'{unsupported}' other than 1 is not supported.", unsupported)
        for unsupported in ("logprobs", "echo", "suffix"):
            if body.get(unsupported):
                raise RequestError(400, f"'{unsupported}' is not supported.", unsupported)
        task = _field(body, "model", str, None, None, "a task name")
        if task not in self.engine.tasks:
            raise RequestError(404, f"Task {task!r} is not loaded; GET /v1/models lists the tasks.", "model",
                               "not_found_error")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError(400, f"'prompt' must be one string; got {type(prompt).__name__}.", "prompt")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise RequestError(400, "'stop' must be a string or a list of at most 4 non-empty strings.", "stop")
        max_tokens = _field(body, "max_tokens", int, 16, lambda v: 1 <= v <= self.max_tokens,
                            f"an integer from 1 to {self.max_tokens} (serve.max_tokens)")
        temperature = _field(body, "temperature", float, 1.0, lambda v: 0 <= v <= 2, "a number from 0 to 2")
        top_p = _field(body, "top_p", float, 1.0, lambda v: 0 < v <= 1, "a number in (0, 1]")
        seed = _field(body, "seed", int, 0, lambda v: 0 <= v < 2**31, "an integer from 0 to 2**31 - 1")
        stream = _field(body, "stream", bool, False)
        ignore_eos = _field(body, "ignore_eos", bool, False)
        ids = pipeline.encode_source(self.tokenizer, prompt)
        room = self.engine.max_len - max_tokens
        if len(ids) > self.engine.max_len - 1:
            raise RequestError(413, f"The prompt is {len(ids)} tokens; the model takes at most "
                                    f"{self.engine.max_len - 1} (serve.max_len - 1).", "prompt")
        if len(ids) > room:
            raise RequestError(400, f"The prompt's {len(ids)} tokens + max_tokens {max_tokens} exceed serve.max_len "
                                    f"{self.engine.max_len}; ask for at most {self.engine.max_len - len(ids)}.",
                               "max_tokens")
        sampling = dict(temperature=temperature, top_p=top_p, seed=seed, ignore_eos=ignore_eos)
        return task, ids, max_tokens, sampling, stop, stream

    async def completions(self, request) -> web.StreamResponse:
        try:
            task, ids, max_tokens, sampling, stop, stream = self._parse(await self._json(request))
            events: asyncio.Queue = asyncio.Queue()
            loop_ = asyncio.get_running_loop()
            job = engine_lib.Request(
                task, ids, max_tokens, lambda token, finish: loop_.call_soon_threadsafe(events.put_nowait, (token, finish)),
                **sampling,
            )
            try:
                self.engine.submit(job)
            except engine_lib.QueueFull as error:
                raise RequestError(429, str(error), kind="rate_limit_error")
            except KeyError:  # Unloaded since parsing.
                raise RequestError(404, f"Task {task!r} is not loaded.", "model", "not_found_error")
        except RequestError as error:
            return error.response()
        completion = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                      "model": task}
        text = Detokenizer(self.tokenizer, stop)
        try:
            if stream:
                return await self._stream(request, completion, job, events, text)
            pieces, finish = [], None
            while finish is None:
                token, finish = await events.get()
                if token is not None:
                    pieces.append(text.add(token))
                    finish = "stop" if text.stopped else None
            if finish.startswith("error"):
                return RequestError(500, finish, kind="server_error").response()
            pieces.append(text.rest())
            choice = {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": finish}
            usage = {"prompt_tokens": len(ids), "completion_tokens": job.generated,
                     "total_tokens": len(ids) + job.generated}
            return web.json_response({**completion, "choices": [choice], "usage": usage})
        finally:
            self.engine.cancel(job)  # A no-op once it ended; frees its row when the client left.

    async def _stream(self, request, completion, job, events, text) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def send(piece: str, finish=None):
            choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": finish}
            await response.write(f"data: {json.dumps({**completion, 'choices': [choice]})}\n\n".encode())

        finish = None
        while finish is None:
            token, finish = await events.get()
            if token is not None:
                piece = text.add(token)
                finish = "stop" if text.stopped else None
                if piece and finish is None:
                    await send(piece)
                elif finish:
                    await send(piece, finish)
                    break
            else:
                await send(text.rest(), finish)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _serve(server: Server, host: str, port: int, grace: float) -> None:
    runner = web.AppRunner(server.app(), shutdown_timeout=grace)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    print(f"Serving {sorted(server.engine.tasks)} on http://{host}:{bound}", flush=True)
    await stop.wait()
    logging.info("Shutting down: in-flight requests get up to %.0f s.", grace)
    await runner.cleanup()


def serve(config: ml_collections.ConfigDict, prefixes: str, host: str, port: int) -> dict:
    """Loads the model and the tasks, then serves until SIGINT/SIGTERM (module docstring)."""
    tasks = parse_prefixes(prefixes)
    if not tasks:
        raise errors.UserError("serve needs at least one task: --prefixes=NAME=PATH[,NAME=PATH...].")
    validation.check(config, decoding=False, serving=True)
    tokenizer = tokenizer_lib.load(config.data.tokenizer)
    server = Server(config, PrefixLoader(config), tokenizer)
    for name, path in tasks.items():
        server.load_task(name, path)
    server.engine.start()
    asyncio.run(_serve(server, host, port, config.serve.grace_seconds))
    return {"served": sorted(tasks), "stats": dict(server.engine.stats)}


def launch(config_file: str, prefixes: dict, overrides: dict, log: str, cwd: str = ".") -> tuple:
    """Starts `serve` in a subprocess on a free port of 127.0.0.1 (stderr to the file `log`);
    returns (the process, its URL) once it listens. For tests and benchmarks."""
    process = subprocess.Popen(
        [sys.executable, "-m", "prefix_jax.main", "serve", f"--config={config_file}", "--port=0",
         "--prefixes=" + ",".join(f"{name}={path}" for name, path in prefixes.items()),
         *(f"--config.{key}={value}" for key, value in overrides.items())],
        cwd=cwd, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True,
    )
    for line in process.stdout:
        if line.startswith("Serving"):
            return process, line.split(" on ")[1].strip()
    process.wait()
    raise RuntimeError(f"The server exited with status {process.returncode} before listening; see {log}.")
