"""``vramgate status`` against a running server (Endpoints with a fake source), and its failures."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from proxy.edge.endpoints import Endpoints
from proxy.observe.status_command import main, status_url
from tests.observe_status import STATUS, FakeSource

TOKEN = "t0ken"


async def start(token: str | None, listen_loopback: bool) -> RawTestServer:
    endpoints = Endpoints(FakeSource(), token, listen_loopback)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return await endpoints.handle(request, request.path)

    server = RawTestServer(handler, host="127.0.0.1")
    await server.start_server()
    return server


async def run(argv: list[str], default_url: str, token: str | None = None) -> int:
    """main() runs its own event loop: in a thread, while this loop serves."""
    return await asyncio.to_thread(main, argv, default_url, token)


def base(server: RawTestServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("given,url", [
    ("127.0.0.1:11435", "http://127.0.0.1:11435/vramgate/status"),
    ("http://box:8080/", "http://box:8080/vramgate/status"),
    ("0.0.0.0:11435", "http://127.0.0.1:11435/vramgate/status"),
    ("http://[::]:11435", "http://[::1]:11435/vramgate/status"),
    ("https://gpu.example/prefix", "https://gpu.example/prefix/vramgate/status"),
])
def test_status_url(given: str, url: str) -> None:
    assert status_url(given) == url


async def test_prints_the_view_and_the_json(capsys: pytest.CaptureFixture[str]) -> None:
    server = await start(None, True)
    try:
        assert await run([], base(server)) == 0
        out = capsys.readouterr().out
        assert "GPU 0  NVIDIA GeForce RTX 4090" in out and "load.refused" in out and "\x1b[" not in out
        assert await run(["--json", "--url", f"http://{base(server)}"], "127.0.0.1:1") == 0
        assert json.loads(capsys.readouterr().out) == STATUS
    finally:
        await server.close()


async def test_the_token_from_the_settings_or_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    server = await start(TOKEN, False)
    try:
        assert await run([], base(server)) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("vramgate status: ") and "401" in err and "--token or VRAMGATE_ADMIN_TOKEN" in err
        assert len(err.splitlines()) == 1
        assert await run(["--token", "wrong"], base(server)) == 1
        assert "the admin token was refused" in capsys.readouterr().err
        assert await run(["--json"], base(server), TOKEN) == 0
        assert await run(["--json", "--token", TOKEN], base(server)) == 0
    finally:
        await server.close()


async def test_forbidden_without_an_admin_token_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    server = await start(None, False)
    try:
        assert await run([], base(server)) == 1
        err = capsys.readouterr().err
        assert "403" in err and "admin_token" in err
    finally:
        await server.close()


async def test_unreachable_is_one_line_and_status_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert await run([], f"127.0.0.1:{port}") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot reach vramgate at http://127.0.0.1:{port}/vramgate/status" in err


async def test_something_else_than_vramgate(capsys: pytest.CaptureFixture[str]) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="hello" if request.path == "/vramgate/status" else "404 page not found",
                            status=200 if request.path == "/vramgate/status" else 404)

    server = RawTestServer(handler, host="127.0.0.1")
    await server.start_server()
    try:
        assert await run([], base(server)) == 1
        assert "did not answer JSON" in capsys.readouterr().err
    finally:
        await server.close()
