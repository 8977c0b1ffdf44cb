"""Streaming fidelity and failure behaviour of the relay, checked on the wire with raw HTTP."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import aiohttp
import ollama
import pytest
from aiohttp import web

from tests.conftest import StartProxy
from tests.emulator import Emulator, Fault, serve

GEN = {"model": "llama3:8b", "prompt": "Why is the sky blue?"}


async def post_raw(url: str, path: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(url + path, json=body) as resp:
            return resp.status, dict(resp.headers), await resp.read()


@pytest.mark.parametrize("path,body", [
    ("/api/generate", GEN),
    ("/api/chat", {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/pull", {"model": "llama3:8b"}),
    ("/api/generate", {**GEN, "stream": False}),
    ("/api/show", {"model": "llama3:8b"}),
])
async def test_bodies_are_byte_identical(emulator: Emulator, emulator_url: str, proxy_url: str, path: str, body: Any) -> None:
    emulator.frozen_time = 1_790_000_000.5
    d_status, d_headers, direct = await post_raw(emulator_url, path, body)
    p_status, p_headers, proxied = await post_raw(proxy_url, path, body)
    assert (p_status, proxied) == (d_status, direct)
    assert p_headers["Content-Type"] == d_headers["Content-Type"]
    if d_headers["Content-Type"] == "application/x-ndjson":
        assert b"\n\n" not in proxied and proxied.endswith(b"}\n")
        last = json.loads(proxied.splitlines()[-1])
        assert last.get("done") is True or last.get("status") == "success"
        assert p_headers.get("Transfer-Encoding") == "chunked"
    else:
        assert p_headers["Content-Length"] == d_headers["Content-Length"] == str(len(direct))


async def test_chunks_are_relayed_as_they_arrive(emulator: Emulator, proxy_url: str) -> None:
    """With 0.2 s between upstream lines, the client must see each line long before the end."""
    emulator.inject(Fault("/api/generate", "slow", delay=0.2))
    arrivals: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy_url + "/api/generate", json=GEN) as resp:
            started = time.monotonic()
            async for _line in resp.content:
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == 6
    # the first line arrives about one delay in, not after all six
    assert arrivals[0] < arrivals[-1] - 0.6


async def test_client_abort_after_two_chunks_closes_upstream(emulator: Emulator, proxy_url: str) -> None:
    emulator.inject(Fault("/api/generate", "hang", after=2))
    async with aiohttp.ClientSession() as session:
        resp = await session.post(proxy_url + "/api/generate", json=GEN)
        first = await resp.content.readline()
        second = await resp.content.readline()
        assert json.loads(first)["response"] == "The" and json.loads(second)["response"] == " sky"
        resp.close()  # drops the connection: the client went away
        closed_at = time.monotonic()
    assert await emulator.wait_for(lambda: bool(emulator.disconnects), timeout=1.0)
    gone = emulator.disconnects[0]
    assert gone.path == "/api/generate" and gone.chunks_sent == 2
    assert gone.at - closed_at < 1.0


async def test_client_abort_while_upstream_still_loading_closes_upstream(emulator: Emulator, proxy_url: str) -> None:
    emulator.inject(Fault("/api/generate", "hang"))  # never answers: a cold load
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.post(proxy_url + "/api/generate", json=GEN, timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
    assert await emulator.wait_for(lambda: bool(emulator.disconnects), timeout=1.0)
    assert emulator.disconnects[0].chunks_sent == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_upstream_down_gives_502_naming_it(start_proxy: StartProxy) -> None:
    upstream = f"http://127.0.0.1:{_closed_port()}"
    url = await start_proxy(upstream=upstream)
    status, headers, body = await post_raw(url, "/api/generate", GEN)
    assert status == 502 and headers["Content-Type"].startswith("application/json")
    message = json.loads(body)["error"]
    assert upstream in message and "vramgate" in message
    status, _, body = await post_raw(url, "/v1/chat/completions", {"model": "x", "messages": []})
    error = json.loads(body)["error"]
    assert status == 502 and upstream in error["message"] and error["type"] == "api_error"
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama.AsyncClient(host=url).list()
    assert raised.value.status_code == 502 and upstream in raised.value.error


async def test_upstream_dying_mid_ndjson_stream_appends_error_line(emulator: Emulator, proxy_url: str) -> None:
    emulator.inject(Fault("/api/generate", "drop", after=2))
    status, headers, body = await post_raw(proxy_url, "/api/generate", GEN)
    lines = body.split(b"\n")
    assert status == 200 and lines[-1] == b"" and len(lines) == 4
    assert [json.loads(x)["response"] for x in lines[:2]] == ["The", " sky"]
    error = json.loads(lines[2])["error"]
    assert emulator_url_in(error, proxy_url) is False and "ended the stream early" in error
    # the official client turns that line into an error, as with Ollama's own in-stream errors
    emulator.inject(Fault("/api/chat", "drop", after=1))
    with pytest.raises(ollama.ResponseError, match="ended the stream early"):
        async for _ in await ollama.AsyncClient(host=proxy_url).chat(
                model="llama3:8b", messages=[{"role": "user", "content": "x"}], stream=True):
            pass


def emulator_url_in(message: str, proxy_url: str) -> bool:
    return proxy_url in message  # the message names the upstream, not the proxy


async def test_upstream_dying_mid_sse_stream_cuts_the_client_off(emulator: Emulator, proxy_url: str) -> None:
    emulator.inject(Fault("/v1/chat/completions", "drop", after=2))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy_url + "/v1/chat/completions",
                                json={"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}], "stream": True}) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()


async def test_in_stream_error_line_passes_through_unchanged(emulator: Emulator, emulator_url: str, proxy_url: str) -> None:
    emulator.frozen_time = 1_790_000_000.0
    emulator.inject(Fault("/api/generate", "error_line", after=3, message="llama-server process has terminated", times=2))
    direct = await post_raw(emulator_url, "/api/generate", GEN)
    proxied = await post_raw(proxy_url, "/api/generate", GEN)
    assert proxied[2] == direct[2]
    assert json.loads(proxied[2].splitlines()[-1]) == {"error": "llama-server process has terminated"}
    assert len(proxied[2].splitlines()) == 4  # three chunks, the error line, no extra line from the proxy


async def test_upstream_error_status_and_body_pass_through(emulator: Emulator, proxy_url: str) -> None:
    emulator.inject(Fault("/api/generate", "status", status=503,
                          message="server busy, please try again.  maximum pending requests exceeded"))
    status, headers, body = await post_raw(proxy_url, "/api/generate", GEN)
    assert status == 503
    assert body == b'{"error":"server busy, please try again.  maximum pending requests exceeded"}'
    emulator.inject(Fault("/api/generate", "status", status=500,
                          message="llama-server reported out-of-memory during startup: cudaMalloc failed"))
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama.AsyncClient(host=proxy_url).generate(model="llama3:8b", prompt="x")
    assert raised.value.status_code == 500 and raised.value.error.startswith("llama-server reported out-of-memory")


async def test_head_and_root_and_unknown_paths(emulator_url: str, proxy_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for url in (emulator_url, proxy_url):
            async with session.head(url + "/") as resp:
                assert resp.status == 200
            async with session.get(url + "/") as resp:
                assert (resp.status, await resp.text()) == (200, "Ollama is running")
            async with session.get(url + "/api/version") as resp:
                assert await resp.json() == {"version": "0.33.0"}
            async with session.get(url + "/no/such/path?x=1") as resp:
                assert (resp.status, await resp.text()) == (404, "404 page not found")


async def test_hop_by_hop_request_headers_dropped_host_rewritten(emulator: Emulator, proxy_url: str, emulator_url: str) -> None:
    headers = {
        "Host": "localhost:11434",  # allowed (checked by vramgate as Ollama would), then replaced
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic eA==",
        "Upgrade": "h2c",
        "Authorization": "Bearer end-to-end",
        "Origin": "http://localhost:3000",
        "X-Custom": "kept",
        "User-Agent": "ollama-python/test",
    }
    async with aiohttp.ClientSession(skip_auto_headers=("Accept", "Accept-Encoding")) as session:
        async with session.get(emulator_url + "/api/tags", headers={"Host": "evil.example.com"}) as resp:
            assert resp.status == 403  # the emulator enforces Ollama's Host allow-list
        async with session.get(proxy_url + "/api/tags?verbose=1", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    seen = emulator.received(path="/api/tags")[-1]
    assert seen.query == "verbose=1"
    assert seen.headers["Host"] == emulator_url.removeprefix("http://")
    for gone in ("X-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "Upgrade"):
        assert gone not in seen.headers, gone
    assert seen.headers.get("Connection", "keep-alive").lower() == "keep-alive"  # the proxy's own
    for kept in ("Authorization", "X-Custom", "User-Agent"):
        assert seen.headers[kept] == headers[kept]
    assert "Origin" not in seen.headers  # checked by vramgate against the client's Host, not re-checked upstream
    assert "Accept-Encoding" not in seen.headers and "Accept" not in seen.headers  # nothing added


async def test_cors_preflight_is_answered_as_ollama_would(emulator: Emulator, proxy_url: str) -> None:
    preflight = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    async with aiohttp.ClientSession() as session:
        async with session.options(proxy_url + "/api/chat", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
            assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        async with session.options(proxy_url + "/api/chat", headers={**preflight, "Origin": "https://evil.example"}) as resp:
            assert resp.status == 403
    # gin-contrib/cors answers preflights before any handler: so does vramgate, from the same rules
    assert emulator.received(path="/api/chat", method="OPTIONS") == []


async def test_hop_by_hop_response_headers_dropped(start_proxy: StartProxy) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": "application/x-ndjson", "Connection": "X-Secret", "X-Secret": "hop",
            "Proxy-Authenticate": "Basic", "X-End": "kept", "Server": "upstream/1.0"})
        await response.prepare(request)
        await response.write(b'{"done":true}\n')
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/x", handler)
    upstream = await serve(app)
    try:
        url = await start_proxy(upstream=upstream.url)
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/x") as resp:
                assert await resp.read() == b'{"done":true}\n'
                assert "X-Secret" not in resp.headers and "Proxy-Authenticate" not in resp.headers
                assert resp.headers["X-End"] == "kept" and resp.headers["Server"] == "upstream/1.0"
                assert resp.headers["X-Accel-Buffering"] == "no"
    finally:
        await upstream.close()


async def test_proxy_adds_no_server_header(emulator_url: str, proxy_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy_url + "/api/version") as resp:
            # the emulator (aiohttp) names itself; the proxy passes that on and adds nothing
            via_proxy = resp.headers.getall("Server", [])
        async with session.get(emulator_url + "/api/version") as resp:
            direct = resp.headers.getall("Server", [])
    assert via_proxy == direct
