"""Forward one client request to Ollama and stream the answer back, byte for byte.

Everything the admission does not inspect is streamed both ways: the request body as it arrives
(multi-GB blob uploads stay flat in memory), the response chunk by chunk as the upstream flushes
it (no buffering, no re-parsing). Only hop-by-hop headers change, and ``Host`` (the upstream's)
because Ollama rejects foreign Host headers.

Failures keep Ollama's shapes: unreachable upstream -> 502 naming it; an NDJSON stream that dies
before its ``done`` line gets one ``{"error": ...}`` line, as Ollama itself does for in-stream
errors; any other truncated body is cut off (the connection is aborted) so the client sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from time import perf_counter

import aiohttp
from aiohttp import web

from proxy.access_log import AccessLog
from proxy.admission import Admission, AdmissionRequest, Forward, Respond
from proxy.errors import error_response, stream_error_line
from proxy.headers import request_header_lines, response_headers
from proxy.logging_setup import get_logger
from proxy.upstream import UpstreamBodyError, UpstreamNoAnswer, UpstreamPool, UpstreamResponse, UpstreamUnreachable

MAX_INSPECTED_BODY = 256 * 1024**2
DONE_MARK = b'"done":true'
NDJSON = b"application/x-ndjson"
_STREAMED_TYPES = (b"application/x-ndjson", b"text/event-stream")
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_log = get_logger("vramgate.relay")


class RelayResponse(web.StreamResponse):
    """A StreamResponse that adds no ``Server`` header of its own (the upstream's passes through)."""

    _keep_server = False

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if not self._keep_server:
            self.headers.popall("Server", None)


class RelayWholeResponse(web.Response):
    """An answer that had fully arrived: sent as one write, again without a ``Server`` of our own."""

    _keep_server = False

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        if not self._keep_server:
            self.headers.popall("Server", None)


class Relay:
    def __init__(
        self,
        pool: UpstreamPool,
        admission: Admission,
        access: AccessLog,
        *,
        max_inspected_body: int | None = None,
    ) -> None:
        self.upstream = pool.base_url
        self._pool = pool
        self._admission = admission
        self._access = access
        self._max_inspected = max_inspected_body or MAX_INSPECTED_BODY

    def attach(self, admission: Admission) -> None:
        """Set the admission once the event loop runs (app start-up)."""
        self._admission = admission

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        method = request.method
        path = request.path
        forward: Forward | None = None
        body: bytes | AsyncIterator[bytes] | None = None
        chunked = False

        if self._admission.inspects(method, path):
            inspected = await _read_bounded(request, self._max_inspected)
            if inspected is None:
                limit_mib = self._max_inspected // 1024**2
                return self._answer(request, error_response(
                    path, f"request body too large for vramgate to inspect (limit {limit_mib} MiB)", 413),
                    started, "too_large")
            try:
                decision = await self._admission.admit(
                    AdmissionRequest(method, path, request.headers, inspected, request.remote or ""))
            except Exception as exc:  # a bug in the gate must not look like a crash to the client
                _log.exception("admission.failed", method=method, path=path)
                return self._answer(request, error_response(
                    path, f"vramgate could not decide on this request: {type(exc).__name__}: {exc}", 500),
                    started, "admission_failed")
            if isinstance(decision, Respond):
                answer = web.Response(status=decision.status, body=decision.body, headers=dict(decision.headers))
                return self._answer(request, answer, started, "answered")
            forward = decision
            body = decision.body
            lines = request_header_lines(request.raw_headers, body_replaced=True)
            lines.append(b"Content-Length: %d\r\n" % len(body))
        else:
            lines = request_header_lines(request.raw_headers)
            if request.body_exists:
                body = _stream_body(request.content)
                chunked = request.content_length is None

        if forward is not None and forward.on_done is not None:
            try:
                return await self._forward(request, method, path, lines, body, chunked, forward, started)
            finally:
                forward.on_done()
        return await self._forward(request, method, path, lines, body, chunked, forward, started)

    async def _forward(self, request: web.Request, method: str, path: str, lines: list[bytes],
                       body: bytes | AsyncIterator[bytes] | None, chunked: bool, forward: Forward | None,
                       started: float) -> web.StreamResponse:
        on_response = forward.on_response if forward is not None else None
        try:
            upstream = await self._pool.request(method, request.raw_path.encode(), lines, body, chunked=chunked)
        except UpstreamNoAnswer as exc:
            if on_response is not None:
                on_response(0)
            return self._answer(request, error_response(
                path, f"vramgate got no answer from the upstream Ollama at {self.upstream}: {exc}", 504),
                started, "upstream_timeout")
        except UpstreamUnreachable as exc:
            if on_response is not None:
                on_response(0)
            return self._answer(request, error_response(
                path, f"vramgate cannot reach the upstream Ollama at {self.upstream}: {exc}", 502),
                started, "upstream_unreachable")
        except BaseException:
            if on_response is not None:
                on_response(0)
            raise
        ttfb = perf_counter() - started
        if on_response is not None:
            on_response(upstream.status)
        try:
            return await self._relay(request, upstream, forward, started, ttfb)
        finally:
            upstream.close()

    async def _relay(self, request: web.Request, upstream: UpstreamResponse, forward: Forward | None,
                     started: float, ttfb: float) -> web.StreamResponse:
        headers, content_type = response_headers(upstream.headers)
        if forward is not None and forward.response_headers:
            headers.update(forward.response_headers)
        streamed = content_type.startswith(_STREAMED_TYPES)
        if streamed and "X-Accel-Buffering" not in headers:
            headers["X-Accel-Buffering"] = "no"  # an nginx in front must not buffer streams
        known_length = upstream.content_length is not None
        whole = upstream.body_if_complete() if known_length else None
        if whole is not None:
            # fast path: the whole (small) answer is already here, nothing is left to stream
            answer = RelayWholeResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            answer._keep_server = "Server" in headers
            if whole:
                answer.body = whole
            self._log(request, upstream.status, len(whole), started, ttfb, "ok")
            return answer
        out = RelayResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        out._keep_server = "Server" in headers
        if known_length:
            out._send_headers_immediately = False  # one write for headers + a small body
        await out.prepare(request)

        ndjson = content_type.startswith(NDJSON)
        sent = 0
        done_seen = False
        tail = b""
        last = b"\n"
        outcome = "ok"
        try:
            while chunk := await upstream.read():
                await out.write(chunk)
                sent += len(chunk)
                if ndjson and not done_seen:
                    # cheap: a substring search per chunk, plus the few bytes around chunk borders
                    done_seen = DONE_MARK in chunk or DONE_MARK in tail + chunk[:16]
                    tail = chunk[-16:]
                last = chunk
        except _CLIENT_GONE:
            outcome = "client_gone"
        except UpstreamBodyError as exc:
            outcome = "upstream_failed"
            if ndjson and not done_seen and not known_length:
                line = stream_error_line(f"vramgate: the upstream Ollama at {self.upstream} ended the stream early: {exc}")
                extra = line if last.endswith(b"\n") else b"\n" + line
                try:
                    await out.write(extra)
                    sent += len(extra)
                except _CLIENT_GONE:
                    outcome = "client_gone"
            elif not (ndjson and done_seen and not known_length):
                # a truncated body must not look complete: cut the client connection
                if request.transport is not None:
                    request.transport.abort()
                self._log(request, upstream.status, sent, started, ttfb, outcome)
                return out
        if outcome != "client_gone":
            try:
                await out.write_eof()
            except _CLIENT_GONE:
                outcome = "client_gone"
        self._log(request, upstream.status, sent, started, ttfb, outcome)
        return out

    def _answer(self, request: web.Request, response: web.Response, started: float, outcome: str) -> web.Response:
        body = response.body
        size = len(body) if isinstance(body, (bytes, bytearray)) else 0
        self._log(request, response.status, size, started, None, outcome)
        return response

    def _log(self, request: web.Request, status: int, sent: int, started: float, ttfb: float | None, outcome: str) -> None:
        self._access.record(request.method, request.path, status, sent, perf_counter() - started,
                            request.remote or "", ttfb, outcome)


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

