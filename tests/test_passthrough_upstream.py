"""The relay's upstream connection handling, against small hand-made upstreams where the emulator
cannot misbehave in the needed way (raw sockets, split writes, stale keep-alive connections)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import StartProxy
from tests.emulator import Emulator, Fault, serve

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"


async def raw_upstream(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]) -> tuple[asyncio.AbstractServer, str, list[int]]:
    """A socket server; ``handle(reader, writer, connection_number)``. Returns (server, url, connections)."""
    connections: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(len(connections))
        try:
            await handle(reader, writer, len(connections) - 1)
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", connections


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def test_a_kept_alive_connection_closed_by_the_upstream_is_retried_once(start_proxy: StartProxy) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_head(reader)
        writer.write(OK)  # answers the first request and keeps the connection "alive"...
        await writer.drain()
        await read_head(reader)  # ...then drops the next request on it without a word

    server, url, connections = await raw_upstream(handle)
    try:
        proxy = await start_proxy(upstream=url)
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.get(proxy + "/api/tags") as resp:
                    assert (resp.status, await resp.read()) == (200, b'{"ok":true}')
        assert len(connections) == 2  # the second request went out again on a fresh connection
    finally:
        server.close()


async def test_a_final_line_split_across_writes_still_counts_as_done(start_proxy: StartProxy) -> None:
    parts = [b'{"model":"m","response":"a","done":false}\n{"model":"m","created_at":"x","response":"","done"',
             b':true,"done_reason":"stop","context":[' + b"1," * 3000 + b'1]}\n']

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.transport.abort()  # dies after the done line, before the last chunk

    server, url, _ = await raw_upstream(handle)
    try:
        proxy = await start_proxy(upstream=url)
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy + "/api/generate", json={"model": "m", "prompt": "x"}) as resp:
                body = await resp.read()
        assert body == b"".join(parts)  # no error line appended: the stream had finished
    finally:
        server.close()


async def test_no_answer_within_read_timeout_is_504(emulator: Emulator, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(read_timeout=0.3)
    emulator.inject(Fault("/api/generate", "hang"))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy + "/api/generate", json={"model": "llama3:8b", "prompt": "x"}) as resp:
            assert resp.status == 504
            assert "no answer" in (await resp.json())["error"]
        emulator.inject(Fault("/api/generate", "hang", after=2))
        async with session.post(proxy + "/api/generate", json={"model": "llama3:8b", "prompt": "x"}) as resp:
            lines = (await resp.read()).splitlines()
    assert len(lines) == 3 and "no data from the upstream" in json.loads(lines[-1])["error"]
    assert await emulator.wait_for(lambda: len(emulator.disconnects) == 2, timeout=1.0)


async def test_head_answers_match_direct(emulator_url: str, proxy_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        seen = []
        for url in (emulator_url, proxy_url, proxy_url):  # twice: the connection after a HEAD is not reused
            async with session.head(url + "/api/tags") as resp:
                seen.append((resp.status, resp.headers.get("Content-Length"), await resp.read()))
        async with session.get(proxy_url + "/api/version") as resp:
            assert resp.status == 200
    assert seen[0] == seen[1] == seen[2] and seen[0][0] == 200 and int(seen[0][1]) > 0 and seen[0][2] == b""


async def test_chunked_request_body_is_relayed(emulator: Emulator, proxy_url: str) -> None:
    payload = json.dumps({"model": "llama3:8b", "prompt": "in pieces", "stream": False}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 7):
            yield payload[i:i + 7]

    async with aiohttp.ClientSession() as session:
        async with session.post(proxy_url + "/api/generate", data=pieces()) as resp:
            assert resp.status == 200 and (await resp.json())["done"] is True
    seen = emulator.received(path="/api/generate")[0]
    assert seen.body == payload and "Content-Length" not in seen.headers


async def test_no_content_and_empty_bodies(start_proxy: StartProxy) -> None:
    async def no_content(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_delete("/api/delete", no_content)
    app.router.add_post("/api/copy", empty)
    upstream = await serve(app)
    try:
        proxy = await start_proxy(upstream=upstream.url)
        async with aiohttp.ClientSession() as session:
            for _ in range(2):
                async with session.delete(proxy + "/api/delete", json={"model": "x"}) as resp:
                    assert (resp.status, await resp.read()) == (204, b"")
                async with session.post(proxy + "/api/copy", json={"source": "a", "destination": "b"}) as resp:
                    assert (resp.status, resp.headers["Content-Length"], await resp.read()) == (200, "0", b"")
    finally:
        await upstream.close()


@pytest.mark.parametrize("chunk_count", [1, 200])
async def test_large_streamed_response_is_complete(start_proxy: StartProxy, chunk_count: int) -> None:
    """Many MiB through the proxy's flow control (the client reads slower than loopback writes)."""
    chunk = bytes(range(256)) * 4096  # 1 MiB

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for _ in range(chunk_count):
            await response.write(chunk)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/big", big)
    upstream = await serve(app)
    try:
        proxy = await start_proxy(upstream=upstream.url)
        async with aiohttp.ClientSession() as session:
            async with session.get(proxy + "/big") as resp:
                total = 0
                async for piece in resp.content.iter_chunked(65536):
                    total += len(piece)
                    if total % (8 * 1024 * 1024) == 0:
                        await asyncio.sleep(0.01)  # a slow reader
        assert total == chunk_count * len(chunk)
    finally:
        await upstream.close()


async def test_http_1_0_clients_get_bodies_delimited_by_close(proxy_url: str) -> None:
    host, port = proxy_url.removeprefix("http://").split(":")
    body = json.dumps({"model": "llama3:8b", "prompt": "x"}).encode()
    for request in (b"GET /api/version HTTP/1.0\r\n\r\n",
                    b"POST /api/generate HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                    % (len(body), body)):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # until the proxy closes
        writer.close()
        head, _, content = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
        if request.startswith(b"GET"):
            assert content == b'{"version":"0.33.0"}'
        else:
            assert json.loads(content.splitlines()[-1])["done"] is True
