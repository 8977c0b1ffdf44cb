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

import asyncio
from collections.abc import AsyncIterator, Mapping
from time import perf_counter

from proxy.access_log import AccessLog
from proxy.admission import Admission, AdmissionRequest, Forward, Respond
from proxy.errors import JSON_TYPE, error_body, stream_error_line
from proxy.headers import (
    header_map,
    request_header_lines,
    response_header_lines,
    with_headers,
)
from proxy.http_server import ClientGone, Request, reason_for
from proxy.logging_setup import get_logger
from proxy.upstream import (
    UpstreamBodyError,
    UpstreamClosedIdle,
    UpstreamNoAnswer,
    UpstreamPool,
    UpstreamResponse,
    UpstreamUnreachable,
)
from proxy.whole_answer import WholeAnswer

MAX_INSPECTED_BODY = 256 * 1024**2
DONE_MARK = b'"done":true'
NDJSON = b"application/x-ndjson"
_STREAMED_TYPES = (b"application/x-ndjson", b"text/event-stream")
_log = get_logger("vramgate.relay")


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
        self._max_inspected = max_inspected_body

    def attach(self, admission: Admission) -> None:
        """Set the admission once the event loop runs (start-up)."""
        self._admission = admission

    def try_fast(self, request: Request) -> bool:
        """Serve a body-less request nobody inspects with callbacks alone, when an upstream connection
        is idle: a coroutine, its task and two futures cost more than the rest of a small request.
        False leaves the request to ``handle``. The answer goes out in ``_fast_answer``."""
        if request.body is not None or self._admission.inspects(request.method, request.path):
            return False
        started = perf_counter()

        def on_answer(answer: UpstreamResponse | WholeAnswer | UpstreamUnreachable) -> None:
            self._fast_answer(request, answer, started)  # (finished / run_in_task drop on_gone)

        upstream_conn = self._pool.send_now(request.method, request.target, request_header_lines(request.headers), on_answer)
        if upstream_conn is None:
            return False

        def on_gone() -> None:
            upstream_conn.on_answer = None
            upstream_conn.release(reusable=False)  # the client left: stop the upstream's work too
            self._log(request, 0, 0, started, None, "client_gone")

        request.conn.on_gone(on_gone)
        return True

    def _fast_answer(self, request: Request, answer: UpstreamResponse | WholeAnswer | UpstreamUnreachable,
                     started: float) -> None:
        conn = request.conn
        if isinstance(answer, UpstreamUnreachable):
            if isinstance(answer, UpstreamClosedIdle):
                # a kept-alive connection the upstream had just closed: the full path tries a fresh one
                conn.run_in_task(self.handle(request), request)
                return
            self._answer(request, request.path, f"vramgate cannot reach the upstream Ollama at {self.upstream}: {answer}",
                         502, started, "upstream_unreachable")
            conn.finished(request)
            return
        ttfb = perf_counter() - started
        if isinstance(answer, WholeAnswer):  # already released to the pool: just pass it on
            lines = answer.lines
            if answer.streamed and b"x-accel-buffering" not in lines.lower():
                lines += b"X-Accel-Buffering: no\r\n"
            outcome = "ok"
            try:
                conn.send_whole(request, answer.status, answer.reason, lines, answer.body)
            except ClientGone:
                outcome = "client_gone"
            self._log(request, answer.status, len(answer.body), started, ttfb, outcome)
            conn.finished(request)
            return
        whole = answer.body_if_complete() if answer.content_length is not None else None
        if whole is None:  # still streaming: the rest in a task, like any streamed answer
            conn.run_in_task(self._relay_then_close(request, answer, started, ttfb), request)
            return
        self._send_whole(request, answer, None, started, ttfb, whole)
        answer.close()
        conn.finished(request)

    async def _relay_then_close(self, request: Request, upstream: UpstreamResponse, started: float, ttfb: float) -> None:
        try:
            await self._relay(request, upstream, None, started, ttfb)
        finally:
            upstream.close()

    async def handle(self, request: Request) -> None:
        """Serve one request to its end; raises only CancelledError (the client went away)."""
        started = perf_counter()
        method = request.method
        path = request.path
        forward: Forward | None = None
        body: bytes | AsyncIterator[bytes] | None = None
        chunked = False

        if self._admission.inspects(method, path):
            limit = self._max_inspected or MAX_INSPECTED_BODY
            try:
                inspected = await _read_bounded(request, limit)
            except ClientGone:
                self._log(request, 0, 0, started, None, "client_gone")
                return
            if inspected is None:
                return self._answer(request, path, f"request body too large for vramgate to inspect "
                                    f"(limit {limit // 1024**2} MiB)", 413, started, "too_large")
            try:
                decision = await self._admission.admit(
                    AdmissionRequest(method, path, header_map(request.headers), inspected, request.client))
            except Exception as exc:  # a bug in the gate must not look like a crash to the client
                _log.exception("admission.failed", method=method, path=path)
                return self._answer(request, path, f"vramgate could not decide on this request: "
                                    f"{type(exc).__name__}: {exc}", 500, started, "admission_failed")
            if isinstance(decision, Respond):
                self._send(request, decision.status, decision.body, decision.headers)
                self._log(request, decision.status, len(decision.body), started, None, "answered")
                return
            forward = decision
            body = decision.body
            lines = request_header_lines(request.headers, body_replaced=True)
            lines.append(b"Content-Length: %d\r\n" % len(body))
        else:
            lines = request_header_lines(request.headers)
            if request.body is not None:
                body = request.body
                chunked = request.chunked or request.content_length is None

        if forward is not None and forward.on_done is not None:
            try:
                return await self._forward(request, path, lines, body, chunked, forward, started)
            finally:
                forward.on_done()
        return await self._forward(request, path, lines, body, chunked, forward, started)

    async def _forward(self, request: Request, path: str, lines: list[bytes], body: bytes | AsyncIterator[bytes] | None,
                       chunked: bool, forward: Forward | None, started: float) -> None:
        on_response = forward.on_response if forward is not None else None
        try:
            upstream = await self._pool.request(request.method, request.target, lines, body, chunked=chunked)
        except UpstreamNoAnswer as exc:
            if on_response is not None:
                on_response(0)
            return self._answer(request, path, f"vramgate got no answer from the upstream Ollama at {self.upstream}: {exc}",
                                504, started, "upstream_timeout")
        except UpstreamUnreachable as exc:
            if on_response is not None:
                on_response(0)
            return self._answer(request, path, f"vramgate cannot reach the upstream Ollama at {self.upstream}: {exc}",
                                502, started, "upstream_unreachable")
        except BaseException:
            if on_response is not None:
                on_response(0)
            if request.conn.closed:
                self._log(request, 0, 0, started, None, "client_gone")
            raise
        ttfb = perf_counter() - started
        if on_response is not None:
            on_response(upstream.status)
        try:
            await self._relay(request, upstream, forward, started, ttfb)
        finally:
            upstream.close()

    def _send_whole(self, request: Request, upstream: UpstreamResponse, forward: Forward | None, started: float,
                    ttfb: float, whole: bytes) -> None:
        """The whole (small) answer is already here: one write, nothing left to stream."""
        lines, _ = self._head_lines(upstream, forward)
        outcome = "ok"
        try:
            request.conn.send_whole(request, upstream.status, upstream.reason.encode("latin-1"), lines, whole)
        except ClientGone:
            outcome = "client_gone"
        self._log(request, upstream.status, len(whole), started, ttfb, outcome)

    @staticmethod
    def _head_lines(upstream: UpstreamResponse, forward: Forward | None) -> tuple[bytes, bytes]:
        lines, content_type = response_header_lines(upstream.headers)
        if forward is not None and forward.response_headers:
            lines = with_headers(lines, forward.response_headers)
        if content_type.startswith(_STREAMED_TYPES) and b"x-accel-buffering" not in lines.lower():
            lines += b"X-Accel-Buffering: no\r\n"  # an nginx in front must not buffer streams
        return lines, content_type

    async def _relay(self, request: Request, upstream: UpstreamResponse, forward: Forward | None,
                     started: float, ttfb: float) -> None:
        known_length = upstream.content_length is not None
        whole = upstream.body_if_complete() if known_length else None
        if whole is not None:
            return self._send_whole(request, upstream, forward, started, ttfb, whole)
        conn = request.conn
        status = upstream.status
        lines, content_type = self._head_lines(upstream, forward)
        reason = upstream.reason.encode("latin-1")

        ndjson = content_type.startswith(NDJSON)
        sent = 0
        done_seen = False
        tail = b""
        last = b"\n"
        outcome = "ok"
        try:
            conn.start_stream(request, status, reason, lines, length_known=known_length)
            while chunk := await upstream.read():
                await conn.send(chunk)
                sent += len(chunk)
                if ndjson and not done_seen:
                    # cheap: a substring search per chunk, plus the few bytes around chunk borders
                    done_seen = DONE_MARK in chunk or DONE_MARK in tail + chunk[:16]
                    tail = chunk[-16:]
                last = chunk
            conn.end_stream()
        except ClientGone:
            outcome = "client_gone"
        except asyncio.CancelledError:
            self._log(request, status, sent, started, ttfb, "client_gone")
            raise
        except UpstreamBodyError as exc:
            outcome = "upstream_failed"
            if ndjson and not done_seen and not known_length:
                line = stream_error_line(f"vramgate: the upstream Ollama at {self.upstream} ended the stream early: {exc}")
                extra = line if last.endswith(b"\n") else b"\n" + line
                try:
                    await conn.send(extra)
                    sent += len(extra)
                    conn.end_stream()
                except ClientGone:
                    outcome = "client_gone"
            elif ndjson and done_seen and not known_length:
                try:
                    conn.end_stream()  # the stream had finished: end it cleanly
                except ClientGone:
                    outcome = "client_gone"
            else:
                conn.abort()  # a truncated body must not look complete: cut the client connection
        self._log(request, status, sent, started, ttfb, outcome)

    def _answer(self, request: Request, path: str, message: str, status: int, started: float, outcome: str) -> None:
        """An error of vramgate's own, in the shape the client's API uses."""
        body = error_body(path, message, status)
        self._send(request, status, body, {"Content-Type": JSON_TYPE})
        self._log(request, status, len(body), started, None, outcome)

    @staticmethod
    def _send(request: Request, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items()).encode("latin-1")
        try:
            request.conn.send_whole(request, status, reason_for(status), lines + b"Content-Length: %d\r\n" % len(body), body)
        except ClientGone:
            pass

    def _log(self, request: Request, status: int, sent: int, started: float, ttfb: float | None, outcome: str) -> None:
        self._access.record(request.method, request.path, status, sent, perf_counter() - started,
                            request.client, ttfb, outcome)


async def _read_bounded(request: Request, limit: int) -> bytes | None:
    """The whole body, or None when it is larger than ``limit``."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    if request.body is None:
        return b""
    buf = bytearray()
    while chunk := await request.body.read():
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)
