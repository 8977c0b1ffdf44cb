"""Forward one client request to Ollama and stream the answer back, chunk by chunk.

Everything the admission does not inspect is streamed both ways with aiohttp's flow control: the
request body as it arrives (multi-GB blob uploads stay flat in memory), the response as the
upstream flushes it (never buffered, never re-parsed). Only hop-by-hop headers change, and
``Host``: the client's was checked against Ollama's allow-list first (``proxy.host_guard``), then
the upstream's is sent, because Ollama behind vramgate listens on loopback and would refuse it.

Failures keep Ollama's shapes: unreachable upstream -> 502 naming it; an NDJSON stream that dies
before its ``done`` line gets one ``{"error": ...}`` line, as Ollama itself does for in-stream
errors; any other truncated body is cut off (the connection is aborted) so the client sees it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from time import perf_counter
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import CIMultiDict
from yarl import URL

from proxy.config.log_setup import get_logger
from proxy.config.settings import Settings
from proxy.edge.access_log import AccessLog
from proxy.edge.cors import Cors, EarlyAnswer, guard
from proxy.edge.headers import request_headers, response_headers
from proxy.edge.host_guard import HostGuard
from proxy.edge.target import BadTarget, Target, parse_target
from proxy.gate.admission import (
    Admission,
    AdmissionRequest,
    Forward,
    PassThrough,
    Respond,
)
from proxy.identity.identify import Identity
from proxy.observe.metrics import Metrics
from proxy.ollama.errors import JSON_TYPE, error_body, stream_error_line

WHOLE_ANSWER = 64 * 1024  # answers of known length up to this are read whole, then sent in one write
DONE_MARK = b'"done":true'
NDJSON = "application/x-ndjson"
_STREAMED_TYPES = ("application/x-ndjson", "text/event-stream")
# per request: the CORS headers every answer to this request carries (Ollama's, for the client's Origin)
CORS_HEADERS: web.RequestKey[Iterable[tuple[str, str]]] = web.RequestKey("vramgate.cors", tuple)
WHO: web.RequestKey[Identity] = web.RequestKey("vramgate.who", Identity)  # who asked
_log = get_logger("vramgate.relay")


class BodyTooLarge(Exception):
    pass


BODY_ERRORS = (HttpProcessingError, RequestPayloadError)  # the client's body is malformed


class BodyStalled(Exception):
    pass


class Relay:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, access: AccessLog, cors: Cors,
                 hosts: HostGuard, admission: Admission | None = None) -> None:
        self.upstream = settings.upstream
        self._cors = cors
        self._hosts = hosts
        self._session = session
        self._access = access
        self._admission: Admission = admission or PassThrough()
        self._max_inspected = settings.max_inspected_body
        self._body_timeout = settings.body_timeout
        self._read_timeout = settings.read_timeout
        self._require_identity = settings.require_identity
        self.endpoints: Any = None  # vramgate's own /vramgate/... (proxy.edge.endpoints), set at start
        self.metrics: Metrics = Metrics()  # the start-up replaces it with the one the status source exports

    def attach(self, admission: Admission) -> None:
        """Set the admission once the event loop runs (start-up)."""
        self._admission = admission

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve one request to its end. aiohttp cancels this task when the client goes away."""
        started = perf_counter()
        front = guard(request.method, request.raw_path, request.raw_headers, cors=self._cors, hosts=self._hosts,
                      http_version=f"{request.version.major}.{request.version.minor}")
        if isinstance(front, EarlyAnswer):  # what Ollama's own front (net/http, CORS, Host list) would answer
            return self._early(request, front, started)
        request[CORS_HEADERS] = front.headers
        target = parse_target(request.raw_path)
        if isinstance(target, BadTarget):
            return self._answer(request, request.path, target.message, 400, started, "bad_target")
        if self.endpoints is not None and self.endpoints.handles(target.path):  # vramgate's own: never Ollama's
            response = await self.endpoints.handle(request, target.path)
            self._log(request, target.path, response.status, response.body_length, started, None, "vramgate")
            return response
        who = request[WHO] = self._identify(request)
        if who.anonymous and self._require_identity:
            return self._unidentified(request, target.path, started)
        if (screened := self._admission.screen(request.method, target.path, who)) is not None:
            return self._respond(request, target.path, screened, started)
        try:
            if self._admission.inspects(request.method, target.path):
                return await self._admitted(request, target, started)
            body = _streamed_body(request, self._body_timeout) if request.body_exists else None
            headers = request_headers(request.raw_headers, drop_token=who.source == "token")
            return await self._forward(request, target, headers, body, None, started)
        except BodyStalled:
            response = self._answer(request, target.path, f"the request body stalled: nothing arrived for "
                                    f"{self._body_timeout:g} s", 408, started, "body_timeout", close=True)
            return await _send_and_close(request, response)
        except BodyTooLarge:
            return self._answer(request, target.path, f"request body too large for vramgate to inspect "
                                f"(limit {self._max_inspected // 1024**2} MiB)", 413, started, "too_large",
                                close=True)
        except BODY_ERRORS as exc:  # a malformed body (bad chunk framing), or one cut short
            response = self._answer(request, target.path, f"malformed request body: {getattr(exc, 'message', exc)}",
                                    400, started, "bad_body", close=True)
            return await _send_and_close(request, response)
        except asyncio.CancelledError:
            self._log(request, target.path, 0, 0, started, None, "client_gone")
            raise

    async def _admitted(self, request: web.BaseRequest, target: Target, started: float) -> web.StreamResponse:
        inspected = await _read_whole(request, self._max_inspected, self._body_timeout)
        deciding = perf_counter()
        try:
            decision = await self._admission.admit(
                AdmissionRequest(request.method, target.path, request.headers, inspected, _client(request),
                                 target.query.removeprefix("?"), request[WHO]))
        except Exception as exc:  # a bug in the gate must not look like a crash to the client
            _log.exception("admission.failed", method=request.method, path=target.path)
            return self._answer(request, target.path, f"vramgate could not decide on this request: "
                                f"{type(exc).__name__}: {exc}", 500, started, "admission_failed")
        self.metrics.decision_latency(perf_counter() - deciding)  # (a queued load's wait included)
        if isinstance(decision, Respond):
            return self._respond(request, target.path, decision, started)
        headers = request_headers(request.raw_headers, body_replaced=True, drop_token=request[WHO].source == "token")
        if decision.query is not None:
            target = replace(target, query="?" + decision.query if decision.query else "")
        try:
            return await self._forward(request, target, headers, decision.body, decision, started)
        finally:
            if decision.on_done is not None:
                decision.on_done()

    async def _forward(self, request: web.BaseRequest, target: Target, headers: CIMultiDict[str],
                       body: bytes | AsyncIterator[bytes] | None, forward: Forward | None,
                       started: float) -> web.StreamResponse:
        on_response = forward.on_response if forward is not None else None
        url = URL(self.upstream + target.origin_form, encoded=True)
        try:
            async with self._session.request(request.method, url, headers=headers, data=body,
                                             allow_redirects=False) as upstream:
                if on_response is not None:
                    on_response(upstream.status)
                    on_response = None
                ttfb = perf_counter() - started
                self.metrics.ttfb(ttfb)
                return await self._relay(request, target, upstream, forward, started, ttfb)
        except (BodyStalled, BodyTooLarge, *BODY_ERRORS):
            raise
        except TimeoutError:
            self.metrics.upstream_error("timeout")
            return self._answer(request, target.path, f"vramgate got no answer from the upstream Ollama at "
                                f"{self.upstream} in time", 504, started, "upstream_timeout")
        except aiohttp.ClientError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, (BodyStalled, BodyTooLarge, *BODY_ERRORS)):
                raise cause from None  # the client's body failed, not the upstream
            self.metrics.upstream_error("unreachable")
            return self._answer(request, target.path, f"vramgate cannot reach the upstream Ollama at "
                                f"{self.upstream}: {_reason(exc)}", 502, started, "upstream_unreachable")
        finally:
            if on_response is not None:
                on_response(0)

    async def _relay(self, request: web.BaseRequest, target: Target, upstream: aiohttp.ClientResponse,
                     forward: Forward | None, started: float, ttfb: float) -> web.StreamResponse:
        headers = response_headers(upstream.raw_headers)
        if forward is not None and forward.response_headers:
            headers.update(forward.response_headers)
        content_type = upstream.headers.get("Content-Type", "").lower()
        if content_type.startswith(_STREAMED_TYPES) and "X-Accel-Buffering" not in headers:
            headers["X-Accel-Buffering"] = "no"  # an nginx in front must not buffer streams
        headers.extend(request[CORS_HEADERS])  # the Origin was checked here and not forwarded
        length = upstream.content_length
        if length is not None and length <= WHOLE_ANSWER and request.method != "HEAD":
            return await self._whole(request, target, upstream, headers, started, ttfb)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = length
        ndjson = content_type.startswith(NDJSON)
        sent = 0
        done_seen = False
        tail = b""
        last = b"\n"
        outcome = "ok"
        self.metrics.stream_opened()
        try:
            await response.prepare(request)
            read, write = upstream.content.readany, response.write
            while chunk := await read():  # each chunk as it arrives: never gathered, never parsed
                await write(chunk)
                sent += len(chunk)
                if ndjson and not done_seen:
                    # cheap: a substring search per chunk, plus the few bytes around chunk borders
                    done_seen = DONE_MARK in chunk or DONE_MARK in tail + chunk[:16]
                    tail = chunk[-16:]
                last = chunk
            await response.write_eof()
        except ConnectionError:
            outcome = "client_gone"
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError) as exc:
            outcome = "upstream_failed"
            self.metrics.upstream_error("stream_broken")
            if ndjson and length is None and not done_seen:
                why = (f"no data from the upstream for {self._read_timeout:g} s" if isinstance(exc, TimeoutError)
                       else _reason(exc))
                line = stream_error_line(f"vramgate: the upstream Ollama at {self.upstream} ended the stream "
                                         f"early: {why}")
                extra = line if last.endswith(b"\n") else b"\n" + line
                try:
                    await response.write(extra)
                    sent += len(extra)
                    await response.write_eof()
                except ConnectionError:
                    outcome = "client_gone"
            elif ndjson and length is None:
                try:
                    await response.write_eof()  # the stream had finished: end it cleanly
                except ConnectionError:
                    outcome = "client_gone"
            elif request.transport is not None:
                request.transport.abort()  # a truncated body must not look complete: cut the client off
        finally:
            self.metrics.stream_closed()
        self._log(request, target.path, upstream.status, sent, started, ttfb, outcome)
        return response

    async def _whole(self, request: web.BaseRequest, target: Target, upstream: aiohttp.ClientResponse,
                     headers: CIMultiDict[str], started: float, ttfb: float) -> web.StreamResponse:
        """A small answer of known length (most of Ollama's non-streamed ones): read it, then send head
        and body in one write, one wakeup for the client instead of two."""
        try:
            body = await upstream.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError):
            if request.transport is not None:
                request.transport.abort()  # a truncated body must not look complete: cut the client off
            self._log(request, target.path, upstream.status, 0, started, ttfb, "upstream_failed")
            return web.Response(status=upstream.status)
        response = web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
        self._log(request, target.path, upstream.status, len(body), started, ttfb, "ok")
        return response

    def _answer(self, request: web.BaseRequest, path: str, message: str, status: int, started: float,
                outcome: str, *, close: bool = False) -> web.Response:
        """An error of vramgate's own, in the shape the client's API uses."""
        body = error_body(path, message, status)
        response = web.Response(status=status, body=body, headers={"Content-Type": JSON_TYPE})
        _add(response, request.get(CORS_HEADERS, ()))  # a browser app can read vramgate's errors too
        if close:
            response.force_close()
        self._log(request, path, status, len(body), started, None, outcome)
        return response

    def _respond(self, request: web.BaseRequest, path: str, answer: Respond, started: float) -> web.Response:
        """The gate answered the client itself (a refusal): nothing reached Ollama."""
        response = web.Response(status=answer.status, body=answer.body, headers=answer.headers)
        _add(response, request[CORS_HEADERS])
        self._log(request, path, answer.status, len(answer.body), started, None, "answered")
        return response

    def _identify(self, request: web.BaseRequest) -> Identity:
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        ours = transport.get_extra_info("sockname") if transport is not None else None
        return self._admission.identify(request.headers.get("Authorization"),
                                        tuple(peer[:2]) if isinstance(peer, tuple) else None,
                                        tuple(ours[:2]) if isinstance(ours, tuple) else None, request.protocol)

    def _unidentified(self, request: web.BaseRequest, path: str, started: float) -> web.Response:
        """``require_identity``: a client known only by its address is refused, saying how to be known."""
        message = ("vramgate requires an identity on this server: set OLLAMA_API_KEY to your vramgate token (the"
                   " client sends it as Authorization: Bearer), or connect from your own account on this machine."
                   " Ask the admin for a token (vramgate token add NAME).")
        response = self._answer(request, path, message, 401, started, "no_identity")
        response.headers["WWW-Authenticate"] = 'Bearer realm="vramgate"'
        return response

    def _early(self, request: web.BaseRequest, front: EarlyAnswer, started: float) -> web.Response:
        response = web.Response(status=front.status, reason=front.reason, body=front.body)
        _add(response, front.headers)
        if front.close:
            response.force_close()
        self._log(request, request.path, front.status, len(front.body), started, None, "refused_by_front")
        return response

    def _log(self, request: web.BaseRequest, path: str, status: int, sent: int, started: float,
             ttfb: float | None, outcome: str) -> None:
        who = request.get(WHO)
        self._access.record(request.method, path, status, sent, perf_counter() - started, _client(request),
                            ttfb, outcome, who.user if who is not None else None)


def _add(response: web.StreamResponse, headers: Iterable[tuple[str, str]]) -> None:
    for name, value in headers:
        response.headers.add(name, value)


async def _send_and_close(request: web.BaseRequest, response: web.Response) -> web.Response:
    """Answer, then close at once: the rest of this body will never come, so there is nothing to
    drain (aiohttp would otherwise wait its lingering time for it)."""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _client(request: web.BaseRequest) -> str:
    return request.remote or ""


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _send_continue(request: web.BaseRequest) -> None:
    """Answer ``Expect: 100-continue`` once vramgate really wants the body (not before a 413)."""
    if request.version >= (1, 1) and request.headers.get("Expect", "").lower() == "100-continue":
        transport = request.transport
        if transport is not None and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")


async def _read_whole(request: web.BaseRequest, limit: int, timeout: float) -> bytes:
    """The whole body of an inspected request, within ``limit`` bytes and ``timeout`` between reads."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    if not request.body_exists:
        return b""
    _send_continue(request)
    buf = bytearray()
    while chunk := await _next_chunk(request, timeout):
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge
    return bytes(buf)


async def _streamed_body(request: web.BaseRequest, timeout: float) -> AsyncIterator[bytes]:
    """The client's body as it arrives, for the upstream request (aiohttp pauses the client when
    the upstream is slow to take it)."""
    _send_continue(request)
    while chunk := await _next_chunk(request, timeout):
        yield chunk


async def _next_chunk(request: web.BaseRequest, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            return await request.content.readany()
    except TimeoutError:
        raise BodyStalled from None
