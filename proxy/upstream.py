"""A minimal HTTP/1.1 client for the one upstream, built for relaying rather than for general use.

aiohttp's ClientSession does a lot per request (URL objects, header multidicts, cookie and trace
hooks, timers) that a proxy to one fixed host does not need; on loopback that work was most of the
latency vramgate added. This client keeps a pool of keep-alive connections to the upstream, writes
the request head as one byte string from the client's raw headers, parses responses with
``httptools`` (llhttp, C) and hands body chunks over exactly as they arrive.

Flow control both ways: request bodies are written with drain (``pause_writing``), and response
reading pauses when the client is slower than the upstream (``proxy.chunk_queue``).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httptools

from proxy.chunk_queue import ChunkQueue
from proxy.whole_answer import WholeAnswer, split_whole_answer

MAX_IDLE = 64


class UpstreamUnreachable(Exception):
    """No response could be had: refused, unreachable, timed out, or closed before answering."""


AnswerListener = Callable[["UpstreamResponse | WholeAnswer | UpstreamUnreachable"], None]


class UpstreamClosedIdle(UpstreamUnreachable):
    """A kept-alive connection the upstream had closed before it sent a byte: safe to retry on a fresh one."""


class UpstreamNoAnswer(UpstreamUnreachable):
    """Connected and sent, but no response headers within read_timeout."""


class UpstreamBodyError(Exception):
    """The upstream went away (or broke the framing) in the middle of a response body."""


class UpstreamTimeout(UpstreamBodyError):
    """No byte from the upstream for read_timeout seconds."""


class UpstreamResponse(ChunkQueue):
    """Status, headers and a body read chunk by chunk; ``close()`` when done (always)."""

    __slots__ = ("status", "reason", "headers", "chunked", "content_length", "_conn", "_error", "_released",
                 "_read_timeout")

    def __init__(self, conn: _Connection, status: int, reason: str, headers: list[tuple[bytes, bytes]],
                 chunked: bool, content_length: int | None, read_timeout: float | None) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers  # raw (name, value) pairs as received
        self.chunked = chunked
        self.content_length = content_length
        super().__init__()
        self._conn = conn
        self._error: BaseException | None = None
        self._released = False
        self._read_timeout = read_timeout

    def header(self, name: bytes) -> bytes | None:
        """First value of a header, by lower-case name."""
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    async def read(self) -> bytes:
        """The next body chunk as it arrived; b"" at the end. Raises UpstreamBodyError if cut off."""
        while (chunk := self._pop()) is None:
            if self._complete:
                return b""
            if self._error is not None:
                raise UpstreamBodyError(str(self._error) or "the upstream closed the connection") from self._error
            if self._read_timeout:
                try:
                    await asyncio.wait_for(self._wait(self._conn.loop), self._read_timeout)
                except TimeoutError:
                    raise UpstreamTimeout(f"no data from the upstream for {self._read_timeout:g} s") from None
            else:
                await self._wait(self._conn.loop)
        return chunk

    def body_if_complete(self) -> bytes | None:
        """The whole body when it has already arrived in full (small answers), else None."""
        if not self._complete:
            return None
        body = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        self._chunks.clear()
        self._buffered = 0
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read():
            yield chunk

    def close(self) -> None:
        """Return the connection to the pool if the response was read to its end, else drop it."""
        if self._released:
            return
        self._released = True
        self._conn.release(reusable=self._complete and not self._chunks)

    # --- fed by the connection ------------------------------------------------------------
    def _pause_producer(self) -> None:
        self._conn.pause_reading()

    def _resume_producer(self) -> None:
        self._conn.resume_reading()

    def _fail(self, exc: BaseException) -> None:
        if not self._complete:
            self._error = exc
        self._wake()


class _Connection(asyncio.Protocol):
    """One keep-alive connection; parses responses with httptools callbacks."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.keep_alive = True
        self.head_request = False
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._length: int | None = None
        self._chunked = False
        self._headers_waiter: asyncio.Future[UpstreamResponse] | None = None
        self.response: UpstreamResponse | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self.got_bytes = False
        # the fast path's listener instead of a headers future: called once, with the response
        # (its headers arrived; the body may be complete too) or the reason there is none
        self.on_answer: AnswerListener | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self.on_answer is not None and self.response is None and not self.head_request:
            whole = split_whole_answer(data)
            if whole is not None:  # the common small answer: no parser callbacks needed
                on_answer, self.on_answer = self.on_answer, None
                self.keep_alive = True  # HTTP/1.1 without a Connection header
                self.release(reusable=True)
                on_answer(whole)
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._broken(UpstreamBodyError(f"invalid HTTP from the upstream: {exc}"))
        if self.head_request and self.response is not None and not self.response._complete:
            # a HEAD answer has no body whatever its Content-Length says; never reuse this one
            self.keep_alive = False
            self.response._finish()
        if self.on_answer is not None and self.response is not None:
            on_answer, self.on_answer = self.on_answer, None
            on_answer(self.response)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        error = exc or ConnectionResetError("the upstream closed the connection")
        if self.on_answer is not None:
            on_answer, self.on_answer = self.on_answer, None
            kind = UpstreamUnreachable if self.got_bytes else UpstreamClosedIdle
            on_answer(kind(f"the upstream closed the connection before answering ({error})"))
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(UpstreamUnreachable(f"the upstream closed the connection before answering ({error})"))
        response = self.response
        if response is not None and not response._complete:
            if not response.chunked and response.content_length is None and self.parser.get_status_code() not in (204, 304):
                response._finish()  # body delimited by the connection's end
            else:
                response._fail(error)
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("the upstream closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- httptools callbacks ----------------------------------------------------------------
    # (no on_message_begin: a call per response saved; the state is reset after each head instead)
    def on_status(self, status: bytes) -> None:
        if self._headers_waiter is None and self.on_answer is None:  # bytes nobody asked for: this connection is unusable
            self.keep_alive = False
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        if len(name) in (14, 17):  # the two framing headers, checked without lower-casing every name
            lower = name.lower()
            if lower == b"content-length":
                try:
                    self._length = int(value)
                except ValueError:
                    self._length = None
            elif lower == b"transfer-encoding" and b"chunked" in value.lower():
                self._chunked = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200:
            self._headers = []
            self._reason = b""
            return  # interim answer; the real one follows
        self.keep_alive = parser.should_keep_alive()
        response = UpstreamResponse(self, status, self._reason.decode("latin-1"), self._headers, self._chunked,
                                    self._length, self.pool.read_timeout)
        self._headers = []
        self._reason = b""
        self._length = None
        self._chunked = False
        self.response = response
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        if self.response is not None:
            self.response._finish()

    # --- used by the pool and the response ------------------------------------------------
    def _broken(self, exc: BaseException) -> None:
        self.keep_alive = False
        if self.response is not None:
            self.response._fail(exc)
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def release(self, *, reusable: bool) -> None:
        if reusable and self.keep_alive and not self.closed and not self.head_request:
            self.response = None
            self._headers_waiter = None
            self.on_answer = None
            self.got_bytes = False
            self.pool.put_back(self)
        else:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    async def drain(self) -> None:
        if self._write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.closed:
            raise ConnectionResetError("the upstream closed the connection")

    def start_with(self, head_request: bool, on_answer: AnswerListener) -> None:
        self.head_request = head_request
        self.response = None
        self.on_answer = on_answer

    def start(self, head_request: bool) -> asyncio.Future[UpstreamResponse]:
        self.head_request = head_request
        self.response = None
        self._headers_waiter = self.loop.create_future()
        return self._headers_waiter


class UpstreamPool:
    """Keep-alive connections to one ``http://host:port`` upstream."""

    def __init__(self, base_url: str, *, connect_timeout: float, read_timeout: float = 0.0) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported upstream scheme {parts.scheme!r}")
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.ssl else 80)
        self.prefix = parts.path.rstrip("/").encode()
        self.host_header = parts.netloc.encode("idna")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout or None
        self._idle: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def put_back(self, conn: _Connection) -> None:
        if len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()

    def forget(self, conn: _Connection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def send_now(self, method: str, target: bytes, headers: list[bytes],
                 on_answer: AnswerListener) -> _Connection | None:
        """Fast path for a body-less request: written at once on an idle kept-alive connection, the
        answer reported to ``on_answer`` from the connection's callbacks (no future, no task).
        None when no connection is idle or a read timeout applies (``request`` handles those)."""
        if not self._idle or self.read_timeout:
            return None
        conn = self._idle.pop()
        conn.start_with(method == "HEAD", on_answer)
        assert conn.transport is not None
        conn.transport.write(b"".join([method.encode(), b" ", self.prefix, target, b" HTTP/1.1\r\nHost: ",
                                       self.host_header, b"\r\n", *headers, b"\r\n"]))
        return conn

    async def _connect(self) -> _Connection:
        loop = self.loop
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout)
        except TimeoutError:
            raise UpstreamUnreachable(f"no connection within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise UpstreamUnreachable(exc.strerror or str(exc)) from exc
        return conn

    async def request(self, method: str, target: bytes, headers: list[bytes],
                      body: bytes | AsyncIterator[bytes] | None, *, chunked: bool = False) -> UpstreamResponse:
        """Send one request; ``headers`` are complete ``b"Name: value\\r\\n"`` lines (no Host).

        ``body`` bytes are sent with the head (the caller put Content-Length in ``headers``); an
        async iterator is streamed, with chunked framing when ``chunked`` (else the caller's
        Content-Length applies). Returns once the response headers arrived.
        """
        head = b"".join([method.encode(), b" ", self.prefix, target, b" HTTP/1.1\r\nHost: ", self.host_header,
                         b"\r\n", *([b"Transfer-Encoding: chunked\r\n"] if chunked else []), *headers, b"\r\n"])
        replayable = not (body is not None and not isinstance(body, bytes))
        for attempt in (0, 1):
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await self._connect()
            waiter = conn.start(method == "HEAD")
            try:
                if isinstance(body, bytes) or body is None:
                    assert conn.transport is not None
                    if body and len(body) > 65536:
                        conn.transport.writelines((head, body))  # no copy of a large rewritten body
                    else:
                        conn.transport.write(head + body if body else head)
                else:
                    await self._send_streamed(conn, head, body, chunked)
                if self.read_timeout:
                    try:
                        return await asyncio.wait_for(asyncio.shield(waiter), self.read_timeout)
                    except TimeoutError:
                        raise UpstreamNoAnswer(f"no answer within {self.read_timeout:g} s") from None
                return await waiter
            except UpstreamUnreachable as exc:
                conn.release(reusable=False)
                # a kept-alive connection the upstream had just closed: try once on a fresh one
                if attempt == 0 and reused and replayable and not conn.got_bytes and not isinstance(exc, UpstreamNoAnswer):
                    continue
                raise
            except BaseException:
                conn.release(reusable=False)
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # consumed: no "exception never retrieved" noise
                raise
        raise AssertionError("unreachable")

    async def _send_streamed(self, conn: _Connection, head: bytes, body: AsyncIterator[bytes], chunked: bool) -> None:
        transport = conn.transport
        assert transport is not None
        transport.write(head)
        try:
            async for chunk in body:
                if conn.closed:
                    break
                if chunked:
                    transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
                else:
                    transport.write(chunk)
                await conn.drain()
            if chunked and not conn.closed:
                transport.write(b"0\r\n\r\n")
        except ConnectionResetError:
            pass  # the upstream answered early or went away: its response (if any) tells

    async def close(self) -> None:
        for conn in self._idle:
            conn.closed = True
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
