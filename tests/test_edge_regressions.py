"""Each finding against the old home-made HTTP edge, reproduced through a real socket.

Raw bytes where a client library would normalise the request: absolute-form and non-canonical
targets, trailers both ways, malformed chunks (answered, closed, no descriptor left behind),
oversized heads (431), a stalled body (408), a 413 the client can read, pipelined garbage, and a
foreign Host header (403, as Ollama answers it).
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from proxy.gate.service import build_admission
from tests.conftest import StartProxy
from tests.emulator import Emulator
from tests.emulator_gate import (
    GpuModel,
    estimated_size,
    small_and_big,
)

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB", "bandwidth": "1008GB/s"}]
GiB = 1024**3


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


async def _exchange(url: str, raw: bytes, *, timeout: float = 5.0) -> bytes:
    """Send ``raw``, half-close, and read everything until the proxy closes the connection."""
    reader, writer = await asyncio.open_connection(*_address(url))
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout=timeout)
    finally:
        writer.close()


def _answers(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split Content-Length framed answers (what vramgate sends for small bodies)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:length]))
        raw = rest[length:]
    return out


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return int(head.split()[1]), await asyncio.wait_for(reader.readexactly(length), timeout=5)


def _forwarded(emulator: Emulator) -> list:
    """What reached the emulator, less the gate's own start-up question (its version)."""
    return [r for r in emulator.requests if r.path != "/api/version"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def emulator() -> Emulator:
    return small_and_big()


@pytest.fixture
async def gate_url(start_proxy: StartProxy, emulator: Emulator) -> str:
    GpuModel(emulator, 22 * GiB, estimated_size(emulator), cuda_context=500 * 1024**2).install()
    return await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, body_timeout=0.5)


def _post(target: str, body: bytes, host: str = "localhost", extra: str = "") -> bytes:
    return (f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n").encode() + body


BIG = json.dumps({"model": "llama3:70b", "prompt": "hi", "stream": False}).encode()


async def test_absolute_form_target_is_judged_like_its_path(gate_url: str, emulator: Emulator) -> None:
    raw = await _exchange(gate_url, _post("http://127.0.0.1/api/generate", BIG))
    [(status, headers, body)] = _answers(raw)
    assert status == 507 and "refused to load llama3:70b" in json.loads(body)["error"]
    assert emulator.received("/api/generate") == []


async def test_absolute_form_with_a_foreign_host_is_403(gate_url: str, emulator: Emulator) -> None:
    raw = await _exchange(gate_url, _post("http://attacker.example/api/tags", b""))
    assert _answers(raw)[0][0] == 403
    assert emulator.received("/api/tags") == []


@pytest.mark.parametrize("target", [
    "/api/%67enerate", "//api/generate", "/api/./generate", "/v1/../api/generate", "/api/generate#x",
    "/%61pi/generate", "/api/generate/../generate", "/api//generate", "/v1/chat%2Fcompletions",
])
async def test_non_canonical_api_targets_are_400(gate_url: str, emulator: Emulator, target: str) -> None:
    raw = await _exchange(gate_url, _post(target, BIG))
    [(status, headers, body)] = _answers(raw)
    error = json.loads(body)["error"]
    message = error["message"] if isinstance(error, dict) else error  # OpenAI's shape on /v1
    assert status == 400 and "canonical" in message
    assert _forwarded(emulator) == []


async def test_odd_targets_outside_the_api_pass_unchanged(start_proxy: StartProxy) -> None:
    plain = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    server, upstream, seen = await _raw_upstream([plain])
    try:
        url = await start_proxy(upstream=upstream)
        raw = await _exchange(url, b"GET /static/a%20b?x=%2F&y=%41 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    finally:
        server.close()
    assert _answers(raw)[0][0] == 404
    assert seen[0].startswith(b"GET /static/a%20b?x=%2F&y=%41 HTTP/1.1\r\n")  # byte for byte on the wire


async def test_foreign_host_header_is_403_like_ollama(proxy_url: str, emulator: Emulator) -> None:
    raw = await _exchange(proxy_url, b"GET /api/tags HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n")
    status, headers, body = _answers(raw)[0]
    assert status == 403 and body == b""  # Ollama's allowedHostsMiddleware aborts with an empty 403
    raw = await _exchange(proxy_url, b"GET /api/tags HTTP/1.1\r\nHost: localhost:11434\r\nConnection: close\r\n\r\n")
    assert _answers(raw)[0][0] == 200
    assert len(emulator.received("/api/tags")) == 1


async def test_client_trailers_do_not_leak_into_the_next_request(proxy_url: str, emulator: Emulator) -> None:
    chunked = (b"POST /api/blobs/sha256:abc HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\nX-Leak: trailer\r\n\r\n")
    second = b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    reader, writer = await asyncio.open_connection(*_address(proxy_url))
    try:
        writer.write(chunked + second)
        await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    version = emulator.received("/api/version")
    assert len(version) == 1 and "X-Leak" not in version[0].headers
    assert all("X-Leak" not in r.headers for r in emulator.requests)


async def _raw_upstream(answers: list[bytes]) -> tuple[asyncio.Server, str, list[bytes]]:
    """An upstream that answers each request on a connection with the next canned answer."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(answers.pop(0))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", seen


async def test_upstream_trailers_do_not_appear_in_the_next_response(start_proxy: StartProxy) -> None:
    with_trailer = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"2\r\nok\r\n0\r\nX-Upstream-Leak: yes\r\n\r\n")
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    server, upstream, seen = await _raw_upstream([with_trailer, plain])
    try:
        url = await start_proxy(upstream=upstream)
        first = await _exchange(url, b"GET /a HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        second = await _exchange(url, b"GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    finally:
        server.close()
    assert len(seen) == 2 and seen[1].startswith(b"GET /b")  # the pooled connection was reused
    assert b"ok" in first and b"X-Upstream-Leak" not in first
    assert second.endswith(b"hi") and b"X-Upstream-Leak" not in second


async def test_malformed_chunk_sizes_are_answered_and_closed_without_leaking(proxy_url: str) -> None:
    bad = (b"POST /api/blobs/sha256:abc HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"zz\r\nhello\r\n0\r\n\r\n")
    await _exchange(proxy_url, bad)  # warm up: the pooled upstream connection exists from here on
    baseline = _open_fds()
    for _ in range(40):
        raw = await _exchange(proxy_url, bad)
        assert raw.startswith(b"HTTP/1.1 400") or raw.startswith(b"HTTP/1.0 400"), raw[:80]
        assert b'"error"' in raw
    await asyncio.sleep(0.2)
    assert _open_fds() <= baseline + 2


async def test_an_oversized_header_value_is_431(proxy_url: str) -> None:
    raw = await _exchange(proxy_url, b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    status, _, body = _answers(raw)[0]
    assert status == 431 and "too large" in json.loads(body)["error"]


async def test_too_many_headers_is_431(proxy_url: str) -> None:
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
    raw = await _exchange(proxy_url, b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\n" + many + b"\r\n")
    assert _answers(raw)[0][0] == 431


async def test_a_long_request_line_is_431(proxy_url: str) -> None:
    raw = await _exchange(proxy_url, b"GET /api/tags?" + b"x" * 20_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert _answers(raw)[0][0] == 431


@pytest.mark.parametrize("path", ["/api/generate", "/api/blobs/sha256:abc"])  # inspected and streamed
async def test_a_stalled_body_gets_408(gate_url: str, emulator: Emulator, path: str) -> None:
    reader, writer = await asyncio.open_connection(*_address(gate_url))
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".encode() + b'{"model"')
        status, body = await _read_answer(reader)  # body_timeout is 0.5 s here
    finally:
        writer.close()
    assert status == 408 and "stalled" in json.loads(body)["error"]
    assert emulator.received("/api/generate") == []


async def test_a_413_is_readable_by_a_client_that_sends_its_whole_body(start_proxy: StartProxy, emulator: Emulator) -> None:
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC,
                            max_inspected_body=64 * 1024)
    body = b'{"model": "llama3:8b", "prompt": "' + b"x" * 2_000_000 + b'"}'
    reader, writer = await asyncio.open_connection(*_address(url))
    try:
        writer.write(f"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 65536):  # the client keeps sending after the answer is written
            writer.write(body[i:i + 65536])
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status, _, answer = _answers(raw)[0]
    assert status == 413 and "too large" in json.loads(answer)["error"]
    assert emulator.received("/api/generate") == []


async def test_pipelined_get_post_then_garbage_answers_both_requests(proxy_url: str, emulator: Emulator) -> None:
    post = b'{"model": "llama3:8b", "prompt": "hi", "stream": false}'
    raw = await _exchange(proxy_url, (
        b"GET /api/version HTTP/1.1\r\nHost: localhost\r\n\r\n"
        + f"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(post)}\r\n\r\n".encode() + post
        + b"GARBAGE\r\n\r\n"))
    statuses = [status for status, _, _ in _answers(raw)]
    assert statuses == [200, 200, 400]
    assert len(emulator.received("/api/generate")) == 1


@pytest.mark.parametrize("method", ["post", "Post"])
async def test_a_lower_case_method_is_judged_like_post(gate_url: str, emulator: Emulator, method: str) -> None:
    """aiohttp's client sends methods upper-cased: whatever reaches Ollama as POST was judged as POST."""
    raw = await _exchange(gate_url, _post("/api/generate", BIG).replace(b"POST", method.encode(), 1))
    assert _answers(raw)[0][0] == 507
    assert emulator.received("/api/generate") == []
