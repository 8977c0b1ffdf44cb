"""Random request heads and bodies at every gated route, through a raw socket.

For every request: an answer comes (no hang, no reset before it), and every error vramgate itself
sends is JSON with an ``error`` (or an empty body where Ollama's own front answers so: 403/204
from its Host and CORS checks). Afterwards the proxy still serves and its
descriptors are back to where they were.
"""

from __future__ import annotations

import asyncio
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.gate.service import GATED, build_admission
from tests.emulator import Emulator
from tests.emulator_gate import (
    GiB,
    GpuModel,
    estimated_size,
    show_llama3_8b,
    show_llama3_70b,
)

GIN_ROUTER_TEXT = {b"404 page not found", b"405 method not allowed"}  # Ollama's router, plain text
STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB"}]
KEYS = ["model", "Model", "MODEL", "options", "Options", "option\u017f", "keep_alive", "prompt", "Prompt",
        "messages", "input", "stream", "insecure", "from", "name", "format", "max_tokens"]
MODELS = ["llama3:8b", "llama3:70b", "nope", "", "127.0.0.1:1/x/y", "../../etc", "a" * 300]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(MODELS) | st.text(max_size=20) | st.sampled_from(["0", "0s", "-1", "5m", "1e3", "0m0s"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["num_ctx", "num_gpu", "num_batch", "role", "content", "x", *KEYS]), children, max_size=4),
    max_leaves=12,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["pairs", "pairs", "pairs", "bytes", "deep", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "empty":
        return b""
    if kind == "deep":
        n = draw(st.sampled_from([10, 300, 9999, 10001]))
        return b'{"model":"llama3:70b","prompt":"x","format":' + b"[" * n + b"]" * n + b"}"
    items = draw(st.lists(st.tuples(st.sampled_from(KEYS), json_values), max_size=6))
    text = "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items) + "}"
    return text.encode() + draw(st.sampled_from([b"", b" ", b" {\"model\":\"llama3:70b\"}", b"garbage"]))


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    route = draw(st.sampled_from(sorted(GATED)))
    target = draw(st.sampled_from([
        route, route + "?x=1", "http://localhost" + route, route.upper(), route + "/", "/" + route,
        route.replace("/", "/./", 1), route.replace("a", "%61", 1),
    ]))
    method = draw(st.sampled_from(["POST", "POST", "POST", "GET", "PUT", "post"]))
    body = draw(bodies())
    framing = draw(st.sampled_from(["length", "length", "chunked", "short", "none"]))
    headers = [f"Host: {draw(st.sampled_from(['localhost', '127.0.0.1:11434', 'evil.example', '']))}"]
    headers += draw(st.lists(st.sampled_from([
        "Content-Type: application/json", "Origin: http://localhost:3000", "Origin: http://evil.example",
        "Expect: 100-continue", "Content-Encoding: zstd", "Content-Encoding: gzip", "X-Custom: 1",
    ]), max_size=3))
    if framing == "length":
        headers.append(f"Content-Length: {len(body)}")
    elif framing == "short":  # claims more than it sends: answered after body_timeout
        headers.append(f"Content-Length: {len(body) + 5}")
    elif framing == "chunked":
        headers.append("Transfer-Encoding: chunked")
        body = (b"%x\r\n" % len(body) + body + b"\r\n" if body else b"") + b"0\r\n\r\n"
    else:
        body = b""
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(h + "\r\n" for h in headers) + "Connection: close\r\n\r\n"
    return head.encode("utf-8") + body


async def _one_answer(reader: asyncio.StreamReader) -> bytes:
    """Read one answer as a client would (then hang up), not until the server closes."""
    head = await reader.readuntil(b"\r\n\r\n")
    while head.split(b" ", 2)[1] == b"100":
        head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    if b"\r\ncontent-length:" in lower:
        length = int(lower.split(b"\r\ncontent-length:", 1)[1].split(b"\r\n", 1)[0])
        return head + await reader.readexactly(length)
    if b"\r\ntransfer-encoding: chunked" in lower:
        body = b""
        while not body.endswith(b"0\r\n\r\n"):
            body += await reader.readuntil(b"\r\n")
        return head + body
    return head + await reader.read()


def _split(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    while head.split(b" ", 2)[1] == b"100":  # an interim 100 Continue, then the answer
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            if n == 0:
                break
            out, rest = out + rest[:n], rest[n + 2:]
        body = out
    return int(lines[0].split()[1]), headers, body


async def test_random_requests_to_gated_routes_are_always_answered(start_proxy, emulator: Emulator) -> None:
    emulator.add_model("llama3:8b", show_llama3_8b())
    emulator.add_model("llama3:70b", show_llama3_70b())
    GpuModel(emulator, 22 * GiB, estimated_size(emulator), cuda_context=500 * 1024**2).install()
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC,
                            body_timeout=0.3, probe_timeout=1.0, registry="http://127.0.0.1:9")
    host, port = url.removeprefix("http://").split(":")

    async def exchange(raw: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(raw)
            await writer.drain()
            return await asyncio.wait_for(_one_answer(reader), timeout=10)
        finally:
            writer.close()

    await exchange(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    baseline = len(os.listdir("/proc/self/fd"))

    seen: list[bytes] = []  # drawn by hypothesis first, then sent (the proxy lives in this event loop)

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(requests())
    def collect(raw: bytes) -> None:
        seen.append(raw)

    collect()
    for raw in seen:
        answer = await exchange(raw)
        assert answer.startswith(b"HTTP/1."), (raw[:200], answer[:200])
        status, headers, body = _split(answer)
        decision = headers.get("x-vramgate-decision", "")
        forwarded = bool(decision) and not decision.startswith("refused")  # the emulator answered it
        if status >= 400 and body and body not in GIN_ROUTER_TEXT and not forwarded:
            try:
                data = json.loads(body)  # every error is JSON ...
            except ValueError:
                raise AssertionError((raw[:300], answer[:400])) from None
            assert isinstance(data, dict) and "error" in data, (raw[:200], body[:200])  # ... with an "error"
    for _ in range(50):  # closes (lingering ones included) finish within a few seconds
        if len(os.listdir("/proc/self/fd")) <= baseline + 4:
            break
        await asyncio.sleep(0.1)
    assert len(os.listdir("/proc/self/fd")) <= baseline + 4
    still = await exchange(b"GET /api/version HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    assert _split(still)[0] == 200
