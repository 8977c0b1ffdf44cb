"""The client side: a lean HTTP/1.1 server on asyncio.Protocol and httptools (llhttp, C).

A general web framework builds request objects, header multidicts, routers and response state
machines for every request; a proxy that hands raw headers to one upstream needs none of that,
and on loopback that work was most of what vramgate added to a request. This module only parses
(``HttpRequestParser`` callbacks), queues requests per connection (pipelining-safe: answered in
order, one at a time) and writes what the relay gives it, with flow control both ways:

- request bodies: reading pauses while too much waits for the upstream (``proxy.chunk_queue``);
- responses: ``write`` waits (``drain``) while the client's socket buffer is full.

A client that goes away cancels the request being served (``connection_lost``), so the relay
closes its upstream request at once (Ollama keeps generating otherwise).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import httptools

from proxy.chunk_queue import ChunkQueue
from proxy.logging_setup import get_logger

MAX_HEAD = 256 * 1024  # request line + headers; larger is answered 431
MAX_QUEUED = 16  # pipelined requests waiting; reading pauses beyond this
KEEP_ALIVE_TIMEOUT = 75.0  # an idle client connection is closed after this long (as aiohttp did)
_log = get_logger("vramgate.http")
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def reason_for(status: int) -> bytes:
    """The standard reason phrase (for answers vramgate writes itself)."""
    return _REASONS.get(status, b"Unknown")


class ClientGone(Exception):
    """The client's connection is closed: nothing more can be sent to it."""


class RequestBody(ChunkQueue):
    """The request body as the client sends it, read chunk by chunk (``read`` -> b"" at the end)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: ClientConnection) -> None:
        super().__init__()
        self._conn = conn

    @property
    def complete(self) -> bool:
        """All of it arrived and was read (the connection can serve the next request)."""
        return self._complete and not self._chunks

    async def read(self) -> bytes:
        while (chunk := self._pop()) is None:
            if self._complete:
                return b""
            if self._conn.closed:
                raise ClientGone("the client closed the connection during the request body")
            self._conn.expect_continue()
            await self._wait(self._conn.loop)
        return chunk

    def __aiter__(self) -> RequestBody:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    # --- fed by the connection ------------------------------------------------------------
    def _pause_producer(self) -> None:
        self._conn.pause_body()

    def _resume_producer(self) -> None:
        self._conn.resume_body()


class Request:
    """One parsed request: raw target and headers as sent, plus what the relay needs to decide."""

    __slots__ = (
        "_path",
        "body",
        "chunked",
        "conn",
        "content_length",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(self, conn: ClientConnection, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                 version: str, keep_alive: bool, content_length: int | None, chunked: bool, expect: bool) -> None:
        self.conn = conn
        self.method = method
        self.target = target  # path and query, raw bytes as the client sent them
        self.headers = headers  # raw (name, value) pairs in order
        self.version = version  # "1.1" or "1.0"
        self.keep_alive = keep_alive
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect
        has_body = chunked or bool(content_length)
        self.body: RequestBody | None = RequestBody(conn) if has_body else None
        self._path: str | None = None

    @property
    def path(self) -> str:
        """The path without the query string, percent-decoded (what routes and logs use)."""
        if self._path is None:
            raw = self.target.split(b"?", 1)[0].decode("latin-1")
            self._path = unquote(raw) if "%" in raw else raw
        return self._path

    @property
    def client(self) -> str:
        return self.conn.peer


Handler = Callable[[Request], Coroutine[Any, Any, None]]
FastPath = Callable[[Request], bool]


class ClientConnection(asyncio.Protocol):
    """One client connection: parse, queue, serve requests in order, write answers."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.closed = False
        self.closing = False  # finish the current request, then close
        self._queue: deque[Request] = deque()
        self._reading: Request | None = None  # the request whose body is being parsed
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # a request is being served (by a task, or by callbacks on the fast path)
        self._on_gone: Callable[[], None] | None = None  # the fast path's clean-up if the client leaves
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_size = 0
        self._length: int | None = None
        self._chunked = False
        self._expect = False
        self._body_paused = False
        self._queue_paused = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._continue_pending = False
        self.framing_chunked = False  # the response being written is chunk-encoded
        self.idle_since = 0.0  # loop time the last answer ended (or the connection opened)

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.server.connections.add(self)
        self.idle_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # no upgrades: the upgraded bytes are ignored, the request is served as plain HTTP
        except httptools.HttpParserError as exc:
            self._refuse(400, f"bad request: {exc}")
        except _HeadTooLarge:
            self._refuse(431, "request headers too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._reading is not None and self._reading.body is not None:
            self._reading.body._wake()
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._task is not None:
            self._task.cancel()  # the client went away: stop serving it (closes the upstream request)
        elif self._on_gone is not None:
            on_gone, self._on_gone = self._on_gone, None
            on_gone()
        self.server.connection_closed()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- httptools callbacks (no on_message_begin: the state is reset after each head instead) ----
    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value)
        if self._head_size > MAX_HEAD:
            raise _HeadTooLarge
        size = len(name)
        if size in (6, 14, 17):  # the framing headers and Expect, without lower-casing every name
            lower = name.lower()
            if lower == b"content-length":
                try:
                    self._length = int(value)
                except ValueError:
                    self._length = None
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True
            elif lower == b"expect" and value.lower() == b"100-continue":
                self._expect = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        request = Request(self, parser.get_method().decode("ascii"), self._url, self._headers, version,
                          parser.should_keep_alive(), self._length, self._chunked, self._expect and version == "1.1")
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._length = None
        self._chunked = False
        self._expect = False
        self._reading = request
        self._queue.append(request)
        if len(self._queue) > MAX_QUEUED and not self._queue_paused and self.transport is not None:
            self._queue_paused = True
            self.transport.pause_reading()
        if not self._busy:
            self._dispatch()

    def on_body(self, body: bytes) -> None:
        request = self._reading
        if request is not None and request.body is not None:
            request.body._feed(body)

    def on_message_complete(self) -> None:
        request = self._reading
        if request is not None and request.body is not None:
            request.body._finish()
        self._reading = None

    # --- serving ----------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Start the next queued request: on the server's fast path if it takes it, else in a task."""
        if self.closed or not self._queue:
            return
        request = self._queue.popleft()
        if self._queue_paused and len(self._queue) <= MAX_QUEUED // 2 and not self._body_paused:
            self._queue_paused = False
            if self.transport is not None:
                self.transport.resume_reading()
        self._busy = True
        self._continue_pending = request.expect_continue
        fast = self.server.fast
        if fast is None or not fast(request):
            self.run_in_task(self.server.handler(request), request)

    def run_in_task(self, work: Coroutine[Any, Any, None], request: Request) -> None:
        """Serve (the rest of) ``request`` in a task; a client that goes away cancels it."""
        self._on_gone = None
        self._task = self.loop.create_task(self._run(work, request))

    async def _run(self, work: Coroutine[Any, Any, None], request: Request) -> None:
        try:
            await work
        except asyncio.CancelledError:
            self._close()
            raise
        except ClientGone:
            self.abort()
            return
        except Exception:  # noqa: BLE001 -- a bug in one request must not stop the server
            _log.exception("request.failed", method=request.method)
            self.abort()
            return
        finally:
            self._task = None
        self.finished(request)

    def on_gone(self, callback: Callable[[], None] | None) -> None:
        """The fast path's clean-up should the client leave before ``finished``."""
        self._on_gone = callback

    def finished(self, request: Request) -> None:
        """The answer to ``request`` is complete: keep the connection for the next one, or close it."""
        self._busy = False
        self.idle_since = self.loop.time()
        self._on_gone = None
        if self.closed:
            return
        if self.closing or not request.keep_alive or (request.body is not None and not request.body.complete):
            self._close()  # an unread body would be parsed as the next request: start afresh
            return
        self._dispatch()

    def expect_continue(self) -> None:
        """``Expect: 100-continue``: tell the client to send its body, once, when it is first wanted."""
        if self._continue_pending:
            self._continue_pending = False
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def pause_body(self) -> None:
        self._body_paused = True
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_body(self) -> None:
        self._body_paused = False
        if self.transport is not None and not self.closed and not self._queue_paused:
            self.transport.resume_reading()

    def close_if_idle(self, since: float) -> None:
        """Close a connection that has had nothing to do since ``since`` (no request, or half a head)."""
        if not self._busy and not self._queue and self.idle_since < since:
            self._close()

    def stop_after_current(self) -> None:
        """Graceful shutdown: an idle connection closes now, a busy one after its answer."""
        self.closing = True
        if not self._busy:
            self._close()

    # --- writing answers ----------------------------------------------------------------------
    def send_whole(self, request: Request, status: int, reason: bytes, lines: bytes, body: bytes) -> None:
        """A complete answer in one write; ``lines`` already frame ``body`` (Content-Length)."""
        head = self._status_line(request, status, reason, lines)
        if body and request.method != "HEAD":
            self.write(head + body)
        else:
            self.write(head)

    def start_stream(self, request: Request, status: int, reason: bytes, lines: bytes, *, length_known: bool) -> None:
        """Send the head of an answer whose body follows with ``send``; chunk-encoded when its length is unknown."""
        self.framing_chunked = False
        if not length_known and request.method != "HEAD" and status >= 200 and status not in (204, 304):
            if request.version == "1.1":
                self.framing_chunked = True
                lines += b"Transfer-Encoding: chunked\r\n"
            else:
                request.keep_alive = False  # HTTP/1.0: the body ends when the connection does
        self.write(self._status_line(request, status, reason, lines))

    async def send(self, data: bytes) -> None:
        """One body chunk, as it came; waits while the client reads slower than the upstream writes."""
        if self.framing_chunked:
            if len(data) < 16384:
                self.write(b"%x\r\n%b\r\n" % (len(data), data))
            else:
                self.write(b"%x\r\n" % len(data))
                self.write(data)
                self.write(b"\r\n")
        else:
            self.write(data)
        if self._write_paused:
            await self.drain()

    def end_stream(self) -> None:
        if self.framing_chunked:
            self.framing_chunked = False
            self.write(b"0\r\n\r\n")

    def _status_line(self, request: Request, status: int, reason: bytes, lines: bytes) -> bytes:
        if self.closing or (request.body is not None and not request.body.complete):
            request.keep_alive = False  # closing after this answer (an unread body cannot be skipped safely)
        if request.version == "1.1":
            connection = b"" if request.keep_alive else b"Connection: close\r\n"
            return b"HTTP/1.1 %d %b\r\n%b%b\r\n" % (status, reason, lines, connection)
        connection = b"Connection: keep-alive\r\n" if request.keep_alive else b""
        return b"HTTP/1.0 %d %b\r\n%b%b\r\n" % (status, reason, lines, connection)

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ClientGone("the client closed the connection")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the client's socket buffer is full (a slow reader)."""
        if self._write_paused and not self.closed:
            self._drain = self.loop.create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self.closed:
            raise ClientGone("the client closed the connection")

    def abort(self) -> None:
        """Cut the connection: the client must not take a truncated body for a complete one."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer it and close (after the answer in progress, if any)."""
        if self.transport is None or self.closed:
            return
        self.transport.pause_reading()
        self.closing = True
        if self._busy or self._queue:
            return  # an answer is still being written: writing ours now would interleave the two
        body = b'{"error":"%s"}' % message.replace('"', "'").encode("latin-1", "replace")
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (status, reason_for(status), len(body), body))
        self._close()


class _HeadTooLarge(Exception):
    pass


class HttpServer:
    """The listening socket and its connections; ``close`` drains in-flight requests for a bounded time."""

    def __init__(self, handler: Handler, fast: FastPath | None = None) -> None:
        """``handler`` serves any request in a task; ``fast``, when given, may take a request first and
        serve it with callbacks alone (no task), calling ``conn.finished(request)`` at its end."""
        self.handler = handler
        self.fast = fast
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._all_closed: asyncio.Future[None] | None = None
        self.port = 0
        self._sweeper: asyncio.TimerHandle | None = None

    async def listen(self, host: str, port: int) -> None:
        self._server = await self.loop.create_server(lambda: ClientConnection(self), host, port,
                                                     reuse_address=True, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = self.loop.call_later(KEEP_ALIVE_TIMEOUT / 5, self._sweep)

    def _sweep(self) -> None:
        """Close idle keep-alive connections; one timer for all of them, not one per request."""
        since = self.loop.time() - KEEP_ALIVE_TIMEOUT
        for conn in list(self.connections):
            conn.close_if_idle(since)
        self._sweeper = self.loop.call_later(KEEP_ALIVE_TIMEOUT / 5, self._sweep)

    def connection_closed(self) -> None:
        if not self.connections and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    async def close(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` s, then cut the rest."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.stop_after_current()
        if self.connections:
            self._all_closed = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._all_closed), grace)
            except TimeoutError:
                pass
        tasks = [conn._task for conn in self.connections if conn._task is not None]
        for conn in list(self.connections):
            conn.abort()  # connection_lost follows: busy requests are cancelled, upstreams closed
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
