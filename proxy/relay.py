"""Forward one client request to Ollama and stream the answer back, byte for byte.

Everything the admission does not inspect is streamed both ways: the request body as it arrives
(multi-GB blob uploads stay flat in memory), the response chunk by chunk as the upstream flushes
it (no buffering, no re-parsing). Only hop-by-hop headers change, and ``Host`` (the upstream's,
which aiohttp sets from the URL) because Ollama rejects foreign Host headers.

Failures keep Ollama's shapes: unreachable upstream -> 502 naming it; an NDJSON stream that dies
before its ``done`` line gets one ``{"error": ...}`` line, as Ollama itself does for in-stream
errors; any other truncated body is cut off (the connection is aborted) so the client sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from time import perf_counter

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from proxy.access_log import AccessLog
from proxy.admission import Admission, AdmissionRequest, Forward, Respond
from proxy.errors import error_response, stream_error_line
from proxy.headers import REQUEST_DROP, end_to_end

MAX_INSPECTED_BODY = 256 * 1024**2
DONE_MARK = b'"done":true'
_STREAMED_TYPES = ("application/x-ndjson", "text/event-stream")
# aiohttp's client would otherwise add headers the client never sent.
_SKIP_AUTO = frozenset({"Accept", "Accept-Encoding", "User-Agent", "Content-Type"})


class RelayResponse(web.StreamResponse):
    """A StreamResponse that adds no ``Server`` header of its own (the upstream's passes through)."""

    _keep_server = False

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if not self._keep_server:
            self.headers.popall("Server", None)


class Relay:
    def __init__(
        self,
        upstream: str,
        session: aiohttp.ClientSession,
        admission: Admission,
        access: AccessLog,
        *,
        max_inspected_body: int | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self._session = session
        self._admission = admission
        self._access = access
        self._max_inspected = max_inspected_body or MAX_INSPECTED_BODY

    def attach(self, session: aiohttp.ClientSession, admission: Admission) -> None:
        """Set the upstream session and admission once the event loop runs (app start-up)."""
        self._session = session
        self._admission = admission

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        method = request.method
        path = request.path
        client = request.remote or ""
        headers = end_to_end(request.headers, drop=REQUEST_DROP)
        forward: Forward | None = None
        data: bytes | AsyncIterator[bytes] | None = None

        if self._admission.inspects(method, path):
            body = await _read_bounded(request, self._max_inspected)
            if body is None:
                limit_mib = self._max_inspected // 1024**2
                return self._answer(request, error_response(
                    path, f"request body too large for vramgate to inspect (limit {limit_mib} MiB)", 413),
                    started, client, "too_large")
            decision = await self._admission.admit(AdmissionRequest(method, path, request.headers, body, client))
            if isinstance(decision, Respond):
                answer = web.Response(status=decision.status, body=decision.body, headers=dict(decision.headers))
                return self._answer(request, answer, started, client, "answered")
            forward = decision
            data = decision.body
            headers.popall("Content-Length", None)
            headers["Content-Length"] = str(len(data))
        elif request.body_exists:
            data = _stream_body(request.content)

        notify = _Once(forward.on_response if forward is not None else None)
        url = URL(self.upstream + request.raw_path, encoded=True)
        try:
            upstream = await self._session.request(
                method, url, headers=headers, data=data, allow_redirects=False,
                skip_auto_headers=_SKIP_AUTO,
            )
        except asyncio.CancelledError:
            notify(0)
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            notify(0)
            reason = _describe(exc)
            return self._answer(request, error_response(
                path, f"vramgate cannot reach the upstream Ollama at {self.upstream}: {reason}", 502),
                started, client, "upstream_unreachable")
        ttfb = perf_counter() - started
        notify(upstream.status)
        try:
            return await self._relay(request, upstream, forward, started, ttfb, client)
        finally:
            upstream.close()

    async def _relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        forward: Forward | None,
        started: float,
        ttfb: float,
        client: str,
    ) -> web.StreamResponse:
        out_headers = end_to_end(upstream.headers)
        if forward is not None and forward.response_headers:
            out_headers.update(forward.response_headers)
        content_type = upstream.headers.get("Content-Type", "")
        streamed = content_type.startswith(_STREAMED_TYPES)
        if streamed and "X-Accel-Buffering" not in out_headers:
            out_headers["X-Accel-Buffering"] = "no"  # an nginx in front must not buffer streams
        known_length = "Content-Length" in out_headers
        out = RelayResponse(status=upstream.status, reason=upstream.reason, headers=out_headers)
        out._keep_server = "Server" in out_headers
        if known_length:
            out._send_headers_immediately = False  # one write for headers + a small body
        await out.prepare(request)

        ndjson = content_type.startswith("application/x-ndjson")
        sent = 0
        done_seen = False
        tail = b""
        last = b"\n"
        content = upstream.content
        outcome = "ok"
        try:
            while chunk := await content.readany():
                await out.write(chunk)
                sent += len(chunk)
                if ndjson and not done_seen:
                    # cheap: a substring search per chunk, plus the few bytes around chunk borders
                    done_seen = DONE_MARK in chunk or DONE_MARK in tail + chunk[:16]
                    tail = chunk[-16:]
                last = chunk
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            outcome = "client_gone"
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
            outcome = "upstream_failed"
            if ndjson and not done_seen and not known_length:
                line = stream_error_line(
                    f"vramgate: the upstream Ollama at {self.upstream} ended the stream early: {_describe(exc)}")
                extra = line if last.endswith(b"\n") else b"\n" + line
                try:
                    await out.write(extra)
                    sent += len(extra)
                except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                    outcome = "client_gone"
            elif not (ndjson and done_seen and not known_length):
                # a truncated body must not look complete: cut the client connection
                if request.transport is not None:
                    request.transport.abort()
                self._log_access(request, upstream.status, sent, started, ttfb, client, outcome)
                return out
        if outcome != "client_gone":
            try:
                await out.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError):
                outcome = "client_gone"
        self._log_access(request, upstream.status, sent, started, ttfb, client, outcome)
        return out

    def _answer(self, request: web.Request, response: web.Response, started: float, client: str, outcome: str) -> web.Response:
        body = response.body
        size = len(body) if isinstance(body, (bytes, bytearray)) else 0
        self._log_access(request, response.status, size, started, None, client, outcome)
        return response

    def _log_access(self, request: web.Request, status: int, sent: int, started: float, ttfb: float | None,
                    client: str, outcome: str) -> None:
        self._access.record(method=request.method, path=request.path, status=status, sent=sent,
                            duration=perf_counter() - started, client=client, ttfb=ttfb, outcome=outcome)


class _Once:
    """Calls ``on_response`` at most once."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        self._callback = callback

    def __call__(self, status: int) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback(status)


async def _stream_body(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    while chunk := await content.readany():
        yield chunk


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    buf = bytearray()
    while chunk := await request.content.readany():
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, asyncio.TimeoutError) or isinstance(exc, aiohttp.ServerTimeoutError):
        return text or "timed out"
    return text or type(exc).__name__
