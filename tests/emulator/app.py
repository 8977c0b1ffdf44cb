"""A fake Ollama at the HTTP level, driven by plain state a test can set and inspect.

Faithful to ``shared/reference/ollama.md`` where a client or the proxy could notice: NDJSON
streams (``application/x-ndjson``, one flushed object per line, a final ``done`` line with
``done_reason`` and ns durations), ``stream:false`` JSON (``application/json; charset=utf-8``),
load-only and unload requests, keep-alive and reload rules, ``/api/ps``, ``/api/show`` with
``tensors`` and null arrays, pull/push/create progress, blobs, SSE on ``/v1``, the Host allow-list
and CORS. Every request is recorded; faults can be injected per path.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import math
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.emulator.catalogue import Model, build_model, normalize_name
from tests.emulator.faults import Fault
from tests.emulator.runners import (
    DEFAULT_KEEP_ALIVE,
    LoadError,
    LoadOptions,
    LoadResult,
    OptionTypeError,
    Runner,
    check_option_types,
    needs_reload,
    resolve_options,
)
from tests.emulator.wire import (
    NDJSON_TYPE,
    SSE_TYPE,
    BadKeepAlive,
    dumps,
    error_response,
    json_response,
    ndjson_line,
    openai_error,
    parse_keep_alive,
    rfc3339,
)

LoadHook = Callable[[str, LoadOptions], "LoadResult | LoadError | Awaitable[LoadResult | LoadError]"]
BLOB_PATH = re.compile(r"^/api/blobs/(?P<digest>sha256[:-][0-9a-fA-F]{64})$")
_ORIGIN_OK = re.compile(r"^(https?://(localhost|127\.0\.0\.1|0\.0\.0\.0|\[::1\])(:\d+)?|(app|file|tauri|vscode-webview|vscode-file)://.*)$")


@dataclass
class Received:
    """One request as the emulator saw it (what the proxy forwarded)."""

    method: str
    path: str
    query: str
    headers: CIMultiDict[str]
    body: bytes | None  # None for blob uploads (only their size is kept)
    json: Any = None
    body_size: int = 0


RECORD: web.RequestKey[Received] = web.RequestKey("record", Received)


@dataclass
class Disconnect:
    """A streamed or pending response whose client went away before it ended."""

    path: str
    at: float  # time.monotonic()
    chunks_sent: int


@dataclass
class Emulator:
    version: str = "0.33.0"
    default_num_ctx: int = 4096
    tokens: list[str] = field(default_factory=lambda: ["The", " sky", " is", " blue", "."])
    load_delay: float = 0.0  # seconds a (re)load takes
    check_host: bool = True  # Ollama's Host allow-list (it applies when listening on loopback)
    verify_blobs: bool = True  # hash uploads (off for multi-GB tests)
    on_load: LoadHook | None = None
    frozen_time: float | None = None  # fixes timestamps and durations (byte-for-byte comparisons)

    models: dict[str, Model] = field(default_factory=dict)
    remote: dict[str, Model] = field(default_factory=dict)  # what /api/pull can fetch
    blobs: dict[str, int] = field(default_factory=dict)  # "sha256:<hex>" -> size
    runners: dict[str, Runner] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)

    requests: list[Received] = field(default_factory=list)
    loads: list[tuple[str, LoadOptions]] = field(default_factory=list)
    unloads: list[str] = field(default_factory=list)
    disconnects: list[Disconnect] = field(default_factory=list)
    in_flight: int = 0

    def __post_init__(self) -> None:
        self._load_lock: asyncio.Lock | None = None
        self._changed: asyncio.Condition | None = None

    # --- set-up API for tests --------------------------------------------------------------
    def add_model(
        self,
        name: str,
        show: dict[str, Any] | None = None,
        size: int | None = None,
        digest: str | None = None,
        *,
        remote: bool = False,
    ) -> Model:
        """Put a model on the emulated disk (or only in the registry with ``remote=True``)."""
        model = build_model(name, show, size, digest)
        (self.remote if remote else self.models)[model.name] = model
        return model

    def inject(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def preload(self, name: str, size: int, size_vram: int | None = None, *, num_ctx: int | None = None,
                num_gpu: int = -1, keep_alive: float = DEFAULT_KEEP_ALIVE) -> Runner:
        """Mark a model as loaded without a request (a state the test starts from)."""
        model = self.models[normalize_name(name)]
        opts = {"num_ctx": num_ctx} if num_ctx else {}
        wanted = resolve_options(model, opts, keep_alive, self.default_num_ctx)
        runner = Runner(model, size, size if size_vram is None else size_vram, wanted.num_ctx, num_gpu,
                        wanted.auto_ctx, {}, keep_alive)
        runner.touch(time.time())
        self.runners[model.name] = runner
        return runner

    def received(self, path: str | None = None, method: str | None = None) -> list[Received]:
        return [r for r in self.requests if (path is None or r.path == path) and (method is None or r.method == method)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Wait until ``predicate()`` holds (re-checked whenever the emulator's state changes)."""
        cond = self._condition()
        try:
            async with asyncio.timeout(timeout):
                async with cond:
                    await cond.wait_for(predicate)
            return True
        except TimeoutError:
            return predicate()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=0, middlewares=[self._recorder])
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        return app

    # --- plumbing ----------------------------------------------------------------------------
    def _now(self) -> str:
        return rfc3339(self.frozen_time)

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _notify(self) -> None:
        cond = self._condition()
        async with cond:
            cond.notify_all()

    @web.middleware
    async def _recorder(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if self.check_host and not _host_allowed(request.headers.get("Host", "")):
            self.requests.append(Received(request.method, request.path, request.query_string, CIMultiDict(request.headers), b""))
            return web.Response(status=403)
        is_blob = request.method == "POST" and BLOB_PATH.match(request.path)
        if is_blob:
            record = Received(request.method, request.path, request.query_string, CIMultiDict(request.headers), None)
        else:
            body = await request.read()
            parsed = None
            if body:
                try:
                    parsed = json.loads(body)
                except (ValueError, RecursionError):  # Go: "exceeded max depth" is a 400 too
                    parsed = None
            record = Received(request.method, request.path, request.query_string, CIMultiDict(request.headers), body, parsed, len(body))
        request[RECORD] = record
        self.requests.append(record)
        self.in_flight += 1
        await self._notify()
        try:
            origin = request.headers.get("Origin")
            if origin is not None:
                if not _ORIGIN_OK.match(origin):
                    return web.Response(status=403)
                if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
                    return web.Response(status=204, headers=_cors_headers(origin, preflight=True))
            response = await handler(request)
            if origin is not None and not response.prepared:
                response.headers.update(_cors_headers(origin, preflight=False))
            return response
        finally:
            self.in_flight -= 1
            await self._notify()

    def _fault(self, path: str, *kinds: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path) and fault.kind in kinds and fault.times >= 0:
                return fault
        return None

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        fault = self._fault(path, "status", "hang")
        if fault is not None and (fault.kind == "status" or fault.after is None) and fault.consume():
            if fault.kind == "status":
                if path.startswith("/v1/"):
                    return openai_error(fault.message, fault.status)
                return error_response(fault.message, fault.status)
            await self._hang(request, 0)
        get_like = method in ("GET", "HEAD")
        if path == "/" and get_like:
            return web.Response(text="Ollama is running", content_type="text/plain", charset="utf-8")
        if path == "/api/version" and get_like:
            return json_response({"version": self.version})
        if path == "/api/tags" and get_like:
            return json_response({"models": [m.tags_entry() for m in self.models.values()]})
        if path == "/api/ps" and method == "GET":
            return json_response({"models": self._ps()})
        if match := BLOB_PATH.match(path):
            digest = match.group("digest").replace("-", ":", 1)
            if method == "HEAD":
                return web.Response(status=200 if digest in self.blobs else 404)
            if method == "POST":
                return await self._upload_blob(request, digest)
        if path == "/v1/models" and method == "GET":
            return json_response({"object": "list", "data": [
                {"id": m.name, "object": "model", "created": 0, "owned_by": "library"} for m in self.models.values()]})
        if path.startswith("/v1/models/") and method == "GET":
            name = path.removeprefix("/v1/models/")
            if normalize_name(name) not in self.models:
                return openai_error(f"model '{name}' not found", 404)
            return json_response({"id": name, "object": "model", "created": 0, "owned_by": "library"})
        handlers: dict[tuple[str, str], Callable[[web.Request, dict[str, Any]], Awaitable[web.StreamResponse]]] = {
            ("POST", "/api/generate"): self._generate,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/embed"): self._embed,
            ("POST", "/api/embeddings"): self._embeddings,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/pull"): self._pull,
            ("POST", "/api/push"): self._push,
            ("POST", "/api/create"): self._create,
            ("POST", "/api/copy"): self._copy,
            ("DELETE", "/api/delete"): self._delete,
            ("POST", "/v1/chat/completions"): self._openai_chat,
            ("POST", "/v1/completions"): self._openai_completion,
            ("POST", "/v1/embeddings"): self._openai_embeddings,
        }
        handler = handlers.get((method, path))
        if handler is None:
            return web.Response(status=404, text="404 page not found", content_type="text/plain")
        openai = path.startswith("/v1/")
        record: Received = request[RECORD]
        if not record.body:
            return (openai_error if openai else error_response)("missing request body", 400)
        if not isinstance(record.json, dict):
            return (openai_error if openai else error_response)("invalid character in request body", 400)
        return await handler(request, record.json)

    async def _hang(self, request: web.Request, chunks_sent: int) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.disconnects.append(Disconnect(request.path, time.monotonic(), chunks_sent))
            await asyncio.shield(self._notify())
            raise

    async def _stream(self, request: web.Request, lines: AsyncIterator[bytes] | list[bytes], content_type: str,
                      *, error_line: Callable[[str], bytes] | None = None) -> web.StreamResponse:
        """Send ``lines`` one flushed write each, committing any stream fault for this path."""
        path = request.path
        fault = self._fault(path, "hang", "slow", "drop", "error_line")
        if fault is not None and not fault.consume():
            fault = None
        response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
        await response.prepare(request)
        sent = 0
        try:
            async for line in _aiter(lines):
                if fault is not None:
                    if fault.kind == "slow":
                        await asyncio.sleep(fault.delay)
                    elif fault.after is not None and sent >= fault.after:
                        if fault.kind == "hang":
                            await self._hang(request, sent)
                        if fault.kind == "drop":
                            assert request.transport is not None
                            request.transport.abort()
                            return response
                        if fault.kind == "error_line":
                            await response.write((error_line or _ndjson_error)(fault.message))
                            await response.write_eof()
                            return response
                await response.write(line)
                sent += 1
            await response.write_eof()
        except asyncio.CancelledError:
            if not self.disconnects or self.disconnects[-1].path != path or self.disconnects[-1].chunks_sent != sent:
                self.disconnects.append(Disconnect(path, time.monotonic(), sent))
            await asyncio.shield(self._notify())
            raise
        return response

    # --- scheduler --------------------------------------------------------------------------
    def _expire(self) -> None:
        now = time.time()
        for name, runner in list(self.runners.items()):
            if runner.busy == 0 and runner.expires_at <= now:
                del self.runners[name]

    def _ps(self) -> list[dict[str, Any]]:
        self._expire()
        ordered = sorted(self.runners.values(), key=lambda r: r.expires_at, reverse=True)
        return [r.ps_entry() for r in ordered]

    async def _schedule(self, model: Model, options: dict[str, Any], keep_alive: float | None) -> tuple[Runner, float]:
        """Load (or reuse) a runner for ``model``; returns it and the load time in seconds."""
        if self._load_lock is None:
            self._load_lock = asyncio.Lock()
        async with self._load_lock:
            self._expire()
            current = self.runners.get(model.name)
            wanted = resolve_options(
                model, options, keep_alive if keep_alive is not None else (current.keep_alive if current else DEFAULT_KEEP_ALIVE),
                self.default_num_ctx)
            if current is not None and not needs_reload(current, wanted):
                current.keep_alive = wanted.keep_alive
                return current, 0.0
            if current is not None:
                del self.runners[model.name]
                self.unloads.append(model.name)
            started = time.monotonic()
            self.loads.append((model.name, wanted))
            if self.load_delay:
                await asyncio.sleep(self.load_delay)
            result = await self._load_result(model, wanted)
            if isinstance(result, LoadError):
                await self._notify()
                raise result
            runner = Runner(model, result.size, result.size_vram, result.context_length or wanted.num_ctx,
                            wanted.num_gpu, wanted.auto_ctx,
                            {k: v for k, v in options.items() if k in ("num_batch", "main_gpu", "use_mmap", "num_thread")},
                            wanted.keep_alive)
            runner.touch(time.time())
            self.runners[model.name] = runner
            await self._notify()
            return runner, time.monotonic() - started

    async def _load_result(self, model: Model, wanted: LoadOptions) -> LoadResult | LoadError:
        if self.on_load is None:
            size = model.size + wanted.num_ctx * 2048
            return LoadResult(size=size, size_vram=0 if wanted.num_gpu == 0 else size)
        try:
            result = self.on_load(model.name, wanted)
            if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
                result = await result
        except LoadError as exc:
            return exc
        return result

    def _finish(self, runner: Runner) -> None:
        runner.busy -= 1
        runner.touch(time.time())
        if runner.keep_alive == 0 and runner.busy == 0 and self.runners.get(runner.model.name) is runner:
            del self.runners[runner.model.name]
            self.unloads.append(runner.model.name)

    def _unload(self, name: str) -> None:
        if self.runners.pop(name, None) is not None:
            self.unloads.append(name)

    async def _prepare_run(self, body: dict[str, Any], openai: bool = False) -> tuple[Model, dict[str, Any], float | None] | web.Response:
        err = openai_error if openai else error_response
        name = body.get("model")
        if not name or not isinstance(name, str):
            return err("model is required", 400)
        keep_alive = None
        if "keep_alive" in body and body["keep_alive"] is not None:
            try:
                keep_alive = parse_keep_alive(body["keep_alive"])
            except BadKeepAlive as exc:
                return err(str(exc), 400)
        options = body.get("options") or {}
        if not isinstance(options, dict):
            return err("json: cannot unmarshal options", 400)
        try:
            check_option_types(options)
        except OptionTypeError as exc:
            return err(str(exc), 500)
        model = self.models.get(normalize_name(name))
        if model is None:
            return err(f"model '{name}' not found", 404)
        return model, options, keep_alive

    async def _run(self, model: Model, options: dict[str, Any], keep_alive: float | None, openai: bool = False) -> tuple[Runner, float] | web.Response:
        try:
            runner, load_seconds = await self._schedule(model, options, keep_alive)
        except LoadError as exc:
            return (openai_error if openai else error_response)(exc.message, exc.status)
        runner.busy += 1
        return runner, load_seconds

    def _metrics(self, load_seconds: float, started: float, eval_count: int) -> dict[str, int]:
        total = max(int((time.monotonic() - started) * 1e9), 1)
        if self.frozen_time is not None:
            total, load_seconds = 123_456_789, 0.001
        out = {"total_duration": total, "load_duration": max(int(load_seconds * 1e9), 1),
               "prompt_eval_count": 7, "prompt_eval_duration": 1_234_567,
               "eval_count": eval_count, "eval_duration": 9_876_543}
        return out

    # --- native API ---------------------------------------------------------------------------
    async def _generate(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await self._complete(request, body, chat=False)

    async def _chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        return await self._complete(request, body, chat=True)

    async def _complete(self, request: web.Request, body: dict[str, Any], *, chat: bool) -> web.StreamResponse:
        started = time.monotonic()
        prepared = await self._prepare_run(body)
        if isinstance(prepared, web.Response):
            return prepared
        model, options, keep_alive = prepared
        empty = not body.get("messages") if chat else not body.get("prompt")
        head = {"model": body["model"], "created_at": self._now()}
        if empty and keep_alive == 0:
            self._unload(model.name)
            await self._notify()
            return json_response({**head, **_empty_reply(chat), "done": True, "done_reason": "unload"})
        ran = await self._run(model, options, keep_alive)
        if isinstance(ran, web.Response):
            return ran
        runner, load_seconds = ran
        try:
            if empty:
                return json_response({**head, **_empty_reply(chat), "done": True, "done_reason": "load"})
            final_extra = {} if chat else {"context": [1, 2, 3, 4]}
            if body.get("stream") is False:
                text = "".join(self.tokens)
                reply = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
                return json_response({**head, **reply, "done": True, "done_reason": "stop", **final_extra,
                                      **self._metrics(load_seconds, started, len(self.tokens))})

            async def lines() -> AsyncIterator[bytes]:
                for token in self.tokens:
                    reply = {"message": {"role": "assistant", "content": token}} if chat else {"response": token}
                    yield ndjson_line({"model": body["model"], "created_at": self._now(), **reply, "done": False})
                yield ndjson_line({"model": body["model"], "created_at": self._now(), **_empty_reply(chat),
                                   "done": True, "done_reason": "stop", **final_extra,
                                   **self._metrics(load_seconds, started, len(self.tokens))})

            return await self._stream(request, lines(), NDJSON_TYPE)
        finally:
            self._finish(runner)
            await asyncio.shield(self._notify())

    async def _embed(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        started = time.monotonic()
        prepared = await self._prepare_run(body)
        if isinstance(prepared, web.Response):
            return prepared
        model, options, keep_alive = prepared
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        ran = await self._run(model, options, keep_alive)
        if isinstance(ran, web.Response):
            return ran
        runner, load_seconds = ran
        try:
            vectors = [_embedding(t) for t in texts]
            out: dict[str, Any] = {"model": body["model"], "embeddings": vectors}
            if texts:
                metrics = self._metrics(load_seconds, started, 0)
                out.update(total_duration=metrics["total_duration"], load_duration=metrics["load_duration"],
                           prompt_eval_count=len(texts) * 3)
            return json_response(out)
        finally:
            self._finish(runner)

    async def _embeddings(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        prepared = await self._prepare_run(body)
        if isinstance(prepared, web.Response):
            return prepared
        model, options, keep_alive = prepared
        ran = await self._run(model, options, keep_alive)
        if isinstance(ran, web.Response):
            return ran
        runner, _ = ran
        self._finish(runner)
        prompt = body.get("prompt") or ""
        return json_response({"embedding": _embedding(prompt) if prompt else []})

    async def _show(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        name = body.get("model") or body.get("name")
        if not name:
            return error_response("model is required", 400)
        model = self.models.get(normalize_name(name))
        if model is None:
            return error_response(f"model '{name}' not found", 404)
        return json_response(model.show_response(bool(body.get("verbose"))))

    async def _progress(self, request: web.Request, body: dict[str, Any], steps: list[dict[str, Any]],
                        error: tuple[str, int] | None) -> web.StreamResponse:
        """Progress the way pull/push/create answer: NDJSON by default, last object with stream:false."""
        if body.get("stream") is False:
            if error is not None:
                return error_response(*error)
            return json_response(steps[-1])
        lines = [ndjson_line(s) for s in steps]
        if error is not None:
            lines.append(ndjson_line({"error": error[0]}))
        return await self._stream(request, lines, NDJSON_TYPE)

    def _pull_steps(self, model: Model) -> list[dict[str, Any]]:
        steps: list[dict[str, Any]] = [{"status": "pulling manifest"}]
        for digest, size in model.layers:
            for done in (0, size // 2, size):
                steps.append({"status": f"pulling {digest[7:19]}", "digest": digest, "total": size, "completed": done} if done
                             else {"status": f"pulling {digest[7:19]}", "digest": digest, "total": size})
        steps += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}, {"status": "success"}]
        return steps

    async def _pull(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        name = body.get("model") or body.get("name")
        if not name:
            return error_response("model is required", 400)
        key = normalize_name(name)
        source = self.remote.get(key) or self.models.get(key)
        if source is None:
            return await self._progress(request, body, [{"status": "pulling manifest"}],
                                        ("pull model manifest: file does not exist", 500))
        self.models[key] = source
        await self._notify()
        return await self._progress(request, body, self._pull_steps(source), None)

    async def _push(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        name = body.get("model") or body.get("name")
        model = self.models.get(normalize_name(name or ""))
        if model is None:
            return await self._progress(request, body, [{"status": "retrieving manifest"}],
                                        (f"model '{name}' not found", 404))
        steps: list[dict[str, Any]] = [{"status": "retrieving manifest"}]
        for digest, size in model.layers:
            steps.append({"status": f"pushing {digest[7:19]}", "digest": digest, "total": size})
            steps.append({"status": f"pushing {digest[7:19]}", "digest": digest, "total": size, "completed": size})
        steps += [{"status": "pushing manifest"}, {"status": "success"}]
        return await self._progress(request, body, steps, None)

    async def _create(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        name = body.get("model") or body.get("name")
        if not name:
            return error_response("model is required", 400)
        steps: list[dict[str, Any]] = []
        base: Model | None = None
        if body.get("from"):
            key = normalize_name(body["from"])
            base = self.models.get(key)
            if base is None and key in self.remote:
                base = self.remote[key]
                self.models[key] = base
                steps += self._pull_steps(base)[:-1]
            if base is None:
                return await self._progress(request, body, [{"status": "pulling manifest"}],
                                            ("pull model manifest: file does not exist", 500))
        for filename, digest in (body.get("files") or {}).items():
            if digest not in self.blobs:
                return error_response(f"blob {digest} for {filename} not found", 400)
            steps.append({"status": f"using existing layer {digest}"})
        if base is not None:
            steps += [{"status": f"using existing layer {d}"} for d, _ in base.layers]
        steps += [{"status": "writing manifest"}, {"status": "success"}]
        show = dict(base.show) if base is not None else None
        size = base.size if base is not None else sum(self.blobs[d] for d in (body.get("files") or {}).values()) or None
        self.add_model(name, show, size)
        return await self._progress(request, body, steps, None)

    async def _copy(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        source, dest = body.get("source"), body.get("destination")
        if not source or not dest:
            return error_response("source and destination are required", 400)
        model = self.models.get(normalize_name(source))
        if model is None:
            return error_response(f"model '{source}' not found", 404)
        copied = build_model(dest, model.show, model.size, model.digest)
        self.models[copied.name] = copied
        return web.Response(status=200)

    async def _delete(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        name = body.get("model") or body.get("name")
        if not name or self.models.pop(normalize_name(name), None) is None:
            return error_response(f"model '{name}' not found", 404)
        return web.Response(status=200)

    async def _upload_blob(self, request: web.Request, digest: str) -> web.StreamResponse:
        if digest in self.blobs:
            return web.Response(status=200)
        hasher = hashlib.sha256() if self.verify_blobs else None
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if hasher is not None:
                hasher.update(chunk)
        request[RECORD].body_size = size
        if hasher is not None and f"sha256:{hasher.hexdigest()}" != digest:
            return error_response(f"digest mismatch, expected \"{digest}\", got \"sha256:{hasher.hexdigest()}\"", 400)
        self.blobs[digest] = size
        return web.Response(status=201)

    # --- OpenAI-compatible ------------------------------------------------------------------
    async def _openai_chat(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        if not body.get("messages"):
            return openai_error("[] is too short - 'messages'", 400)
        body = {"model": body.get("model"), "stream": body.get("stream", False), "messages": body["messages"]}
        prepared = await self._prepare_run(body, openai=True)
        if isinstance(prepared, web.Response):
            return prepared
        model, _, _ = prepared
        ran = await self._run(model, {}, None, openai=True)
        if isinstance(ran, web.Response):
            return ran
        runner, _ = ran
        created = int(self.frozen_time if self.frozen_time is not None else time.time())
        ident = f"chatcmpl-{len(self.requests)}"
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": body["model"],
                "system_fingerprint": "fp_ollama"}
        try:
            if not body["stream"]:
                return json_response({**base, "object": "chat.completion", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "".join(self.tokens)}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": len(self.tokens), "total_tokens": 7 + len(self.tokens)}})
            events = [b"data: " + dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": t},
                                                                 "finish_reason": None}]}) + b"\n\n" for t in self.tokens]
            events.append(b"data: " + dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                                     "finish_reason": "stop"}]}) + b"\n\n")
            events.append(b"data: [DONE]\n\n")
            return await self._stream(request, events, SSE_TYPE,
                                      error_line=lambda m: b"data: " + dumps({"error": {"message": m, "type": "api_error", "param": None, "code": None}}) + b"\n\n")
        finally:
            self._finish(runner)


    async def _openai_completion(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        prepared = await self._prepare_run({"model": body.get("model")}, openai=True)
        if isinstance(prepared, web.Response):
            return prepared
        model, _, _ = prepared
        ran = await self._run(model, {}, None, openai=True)
        if isinstance(ran, web.Response):
            return ran
        runner, _ = ran
        base = {"id": f"cmpl-{len(self.requests)}", "object": "text_completion",
                "created": int(self.frozen_time if self.frozen_time is not None else time.time()),
                "model": body["model"], "system_fingerprint": "fp_ollama"}
        try:
            if not body.get("stream"):
                return json_response({**base, "choices": [
                    {"text": "".join(self.tokens), "index": 0, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": len(self.tokens), "total_tokens": 7 + len(self.tokens)}})
            events = [b"data: " + dumps({**base, "choices": [{"text": t, "index": 0, "finish_reason": None}]}) + b"\n\n"
                      for t in self.tokens]
            events.append(b"data: " + dumps({**base, "choices": [{"text": "", "index": 0, "finish_reason": "stop"}]}) + b"\n\n")
            events.append(b"data: [DONE]\n\n")
            return await self._stream(request, events, SSE_TYPE)
        finally:
            self._finish(runner)

    async def _openai_embeddings(self, request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
        prepared = await self._prepare_run({"model": body.get("model")}, openai=True)
        if isinstance(prepared, web.Response):
            return prepared
        model, _, _ = prepared
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not texts:
            return openai_error("invalid input", 400)
        ran = await self._run(model, {}, None, openai=True)
        if isinstance(ran, web.Response):
            return ran
        runner, _ = ran
        self._finish(runner)
        return json_response({"object": "list", "data": [
            {"object": "embedding", "embedding": _embedding(t), "index": i} for i, t in enumerate(texts)],
            "model": body["model"], "usage": {"prompt_tokens": 3 * len(texts), "total_tokens": 3 * len(texts)}})


def _empty_reply(chat: bool) -> dict[str, Any]:
    return {"message": {"role": "assistant", "content": ""}} if chat else {"response": ""}


def _embedding(text: str) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b - 127.5 for b in digest[:8]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]


def _ndjson_error(message: str) -> bytes:
    return ndjson_line({"error": message})


async def _aiter(items: AsyncIterator[bytes] | list[bytes]) -> AsyncIterator[bytes]:
    if isinstance(items, list):
        for item in items:
            yield item
    else:
        async for item in items:
            yield item


def _host_allowed(host_header: str) -> bool:
    """Ollama's allowedHostsMiddleware for a loopback listener."""
    host = host_header
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.lower()
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    if host.endswith((".localhost", ".local", ".internal")):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_private or addr.is_unspecified


def _cors_headers(origin: str, *, preflight: bool) -> dict[str, str]:
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update({
            "Access-Control-Allow-Methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
            "Access-Control-Allow-Headers": "Authorization,Content-Type,User-Agent,Accept,X-Requested-With,X-Stainless-Lang",
            "Access-Control-Max-Age": "43200",
        })
    return headers
