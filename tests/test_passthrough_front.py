"""The front end's own duties, on raw sockets: pipelining, keep-alive, body-less requests served on
the fast path (a client that leaves still closes the upstream request), Expect: 100-continue."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from tests.conftest import StartProxy
from tests.emulator import Emulator, Fault


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One Content-Length framed answer: (head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return head, await asyncio.wait_for(reader.readexactly(length), timeout=5)


async def test_pipelined_requests_are_answered_in_order(proxy_url: str) -> None:
    reader, writer = await asyncio.open_connection(*_address(proxy_url))
    try:
        writer.write(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
                     b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n"
                     b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answers = [await _read_answer(reader) for _ in range(3)]
    finally:
        writer.close()
    assert [head.split(b"\r\n", 1)[0] for head, _ in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert json.loads(answers[0][1]) == {"version": "0.33.0"}
    assert "models" in json.loads(answers[1][1])
    assert answers[2][1] == b"Ollama is running"


async def test_keep_alive_connection_serves_many_requests(proxy_url: str) -> None:
    reader, writer = await asyncio.open_connection(*_address(proxy_url))
    try:
        for _ in range(20):
            writer.write(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
            head, body = await _read_answer(reader)
            assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {"version": "0.33.0"}
    finally:
        writer.close()


async def test_client_leaving_a_body_less_request_closes_upstream(emulator: Emulator, proxy_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy_url + "/api/version") as resp:  # an idle upstream connection: the fast path
            assert resp.status == 200
        emulator.inject(Fault("/api/tags", "hang"))
        _reader, writer = await asyncio.open_connection(*_address(proxy_url))
        writer.write(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        assert await emulator.wait_for(lambda: emulator.in_flight > 0, timeout=2.0)
        writer.close()
        closed_at = time.monotonic()
    assert await emulator.wait_for(lambda: bool(emulator.disconnects), timeout=1.0)
    assert emulator.disconnects[0].path == "/api/tags" and emulator.disconnects[0].at - closed_at < 1.0


async def test_expect_100_continue_gets_continue_then_answer(emulator: Emulator, proxy_url: str) -> None:
    body = json.dumps({"model": "llama3:8b", "prompt": "x", "stream": False}).encode()
    reader, writer = await asyncio.open_connection(*_address(proxy_url))
    try:
        writer.write(b"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % len(body))
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        head, answer = await _read_answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") and json.loads(answer)["done"] is True
    seen = emulator.received(path="/api/generate")[0]
    assert seen.body == body and "Expect" not in seen.headers


async def test_malformed_request_gets_400_and_close(proxy_url: str) -> None:
    reader, writer = await asyncio.open_connection(*_address(proxy_url))
    try:
        writer.write(b"GARBAGE\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    # aiohttp answers an unparseable request as HTTP/1.0 (no keep-alive); reader.read() hit EOF: closed
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
    assert "bad request" in json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


async def test_idle_keep_alive_connections_are_closed(start_proxy: StartProxy) -> None:
    url = await start_proxy(keep_alive_timeout=0.3)
    reader, writer = await asyncio.open_connection(*_address(url))
    idle, _ = await asyncio.open_connection(*_address(url))  # never sends a byte
    try:
        writer.write(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _ = await _read_answer(reader)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(reader.read(), timeout=3) == b""  # closed by the proxy once idle
        assert await asyncio.wait_for(idle.read(), timeout=3) == b""
    finally:
        writer.close()
