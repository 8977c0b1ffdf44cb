"""Run an aiohttp app on 127.0.0.1 with a free port, the way the tests need it."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web


@dataclass
class Running:
    runner: web.AppRunner
    url: str  # http://127.0.0.1:PORT
    port: int

    async def close(self) -> None:
        await self.runner.cleanup()


async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0, *, shutdown_timeout: float = 0.5) -> Running:
    """Start ``app``; handler cancellation is on so a vanished client cancels the handler (like Go's context)."""
    # auto_decompress off: Go's net/http never decompresses a request body (Ollama does for zstd on /v1 only)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_timeout,
                           auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return Running(runner, f"http://{host}:{bound}", bound)
