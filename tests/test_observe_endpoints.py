"""vramgate's own endpoints (proxy.edge.endpoints) on a real aiohttp server with a fake status source.

Access: open on a loopback listener to a loopback peer; otherwise the admin token, or 403 when none
is configured; health and the (data-free) page always open. Plus methods, redirects, headers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from prometheus_client.parser import text_string_to_metric_families

from proxy.edge.endpoints import Endpoints
from proxy.observe.page import CSP, PAGE
from tests.observe_status import STATUS, FakeSource

Serve = Callable[..., Awaitable[str]]
TOKEN = "s3cret-token"
GUARDED = ("/vramgate/status", "/vramgate/metrics")


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start Endpoints on 127.0.0.1; ``peer`` pretends the client came from that address."""
    servers: list[RawTestServer] = []

    async def start(source: FakeSource, *, token: str | None = None, listen_loopback: bool = True,
                    peer: str | None = None) -> str:
        endpoints = Endpoints(source, token, listen_loopback)

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            if peer is not None:
                request = request.clone(remote=peer)
            if not endpoints.handles(request.path):
                return web.Response(status=599)
            return await endpoints.handle(request, request.path)

        server = RawTestServer(handler, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


async def get(url: str, method: str = "GET", headers: dict[str, str] | None = None,
              ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, \
            session.request(method, url, allow_redirects=False, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_handles_only_its_own_prefix() -> None:
    assert Endpoints.handles("/vramgate") and Endpoints.handles("/vramgate/") and Endpoints.handles("/vramgate/x")
    assert not Endpoints.handles("/vramgatex") and not Endpoints.handles("/api/tags")
    assert not Endpoints.handles("/metrics") and not Endpoints.handles("/")


async def test_loopback_listener_and_peer_get_everything_without_a_token(serve: Serve) -> None:
    base = await serve(FakeSource())
    status, headers, body = await get(base + "/vramgate/status")
    assert status == 200 and json.loads(body) == STATUS
    assert headers["Content-Type"] == "application/json; charset=utf-8" and headers["Cache-Control"] == "no-store"
    status, headers, body = await get(base + "/vramgate/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"vramgate_gpu_total_bytes", "vramgate_decisions", "vramgate_open_streams"} <= families


async def test_ipv4_mapped_loopback_is_loopback(serve: Serve) -> None:
    base = await serve(FakeSource(), peer="::ffff:127.0.0.1")
    assert (await get(base + "/vramgate/status"))[0] == 200


@pytest.mark.parametrize("path", GUARDED)
async def test_a_remote_peer_needs_the_token_even_on_a_loopback_listener(serve: Serve, path: str) -> None:
    base = await serve(FakeSource(), token=TOKEN, peer="10.1.2.3")
    status, headers, body = await get(base + path)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert "admin token" in json.loads(body)["error"]
    assert (await get(base + path, headers=bearer(TOKEN)))[0] == 200


@pytest.mark.parametrize("path", GUARDED)
async def test_beyond_loopback_even_a_loopback_peer_needs_the_token(serve: Serve, path: str) -> None:
    """A reverse proxy on this machine makes every client look local: the listener decides."""
    base = await serve(FakeSource(), token=TOKEN, listen_loopback=False)
    assert (await get(base + path))[0] == 401
    for wrong in ("s3cret", TOKEN + "x", "", "Bearer", "é"):
        assert (await get(base + path, headers=bearer(wrong)))[0] == 401
    assert (await get(base + path, headers={"Authorization": f"Basic {TOKEN}"}))[0] == 401
    assert (await get(base + path, headers={"Authorization": f"bearer  {TOKEN} "}))[0] == 200  # scheme case, spaces
    assert (await get(base + path, headers=bearer(TOKEN)))[0] == 200


@pytest.mark.parametrize("path", GUARDED)
async def test_beyond_loopback_without_an_admin_token_is_forbidden(serve: Serve, path: str) -> None:
    base = await serve(FakeSource(), token=None, listen_loopback=False)
    status, headers, body = await get(base + path, headers=bearer("anything"))
    assert status == 403 and "WWW-Authenticate" not in headers
    assert "admin_token" in json.loads(body)["error"]


async def test_health_is_always_open(serve: Serve) -> None:
    source = FakeSource()
    base = await serve(source, token=None, listen_loopback=False, peer="10.1.2.3")
    status, _, body = await get(base + "/vramgate/health")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    source.healthy = (False, "Ollama at http://127.0.0.1:11434 does not answer")
    status, _, body = await get(base + "/vramgate/health")
    assert status == 503 and json.loads(body) == {"error": "Ollama at http://127.0.0.1:11434 does not answer"}
    source.fail = RuntimeError("boom")
    status, _, body = await get(base + "/vramgate/health")
    assert status == 503 and "boom" in json.loads(body)["error"]


async def test_a_failing_status_is_503_json(serve: Serve) -> None:
    source = FakeSource()
    source.fail = RuntimeError("the gate is not started")
    base = await serve(source)
    status, _, body = await get(base + "/vramgate/status")
    assert status == 503 and "the gate is not started" in json.loads(body)["error"]


async def test_the_page_is_served_to_anyone_with_a_strict_policy(serve: Serve) -> None:
    """It holds no data (its script needs the token for that), so a browser can open it to read #token=."""
    base = await serve(FakeSource(), token=TOKEN, listen_loopback=False, peer="10.1.2.3")
    status, headers, body = await get(base + "/vramgate/")
    assert status == 200 and body == PAGE
    assert headers["Content-Type"] == "text/html; charset=utf-8" and headers["Cache-Control"] == "no-store"
    csp = headers["Content-Security-Policy"]
    assert csp == CSP
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'none'" and directives["connect-src"] == "'self'"
    assert directives["script-src"].startswith("'sha256-") and "unsafe" not in csp
    assert directives["frame-ancestors"] == "'none'"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert b"http://" not in PAGE and b"https://" not in PAGE  # no external assets


async def test_the_bare_prefix_redirects_to_the_page(serve: Serve) -> None:
    base = await serve(FakeSource(), token=TOKEN, listen_loopback=False)
    status, headers, _ = await get(base + "/vramgate")
    assert status == 308 and headers["Location"] == "/vramgate/"


async def test_only_get_and_head(serve: Serve) -> None:
    base = await serve(FakeSource())
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        status, headers, body = await get(base + "/vramgate/status", method)
        assert status == 405 and headers["Allow"] == "GET, HEAD" and "error" in json.loads(body)
    status, headers, body = await get(base + "/vramgate/status", "HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == len(json.dumps(STATUS,
                                                                                             separators=(",", ":")))


async def test_unknown_paths_are_404_json_once_allowed(serve: Serve) -> None:
    base = await serve(FakeSource(), token=TOKEN, listen_loopback=False)
    assert (await get(base + "/vramgate/nope"))[0] == 401  # says nothing about what exists
    status, _, body = await get(base + "/vramgate/nope", headers=bearer(TOKEN))
    assert status == 404 and "/vramgate/nope" in json.loads(body)["error"]
