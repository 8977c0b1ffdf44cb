"""The proxy's process shell: one listener, one upstream pool, the admission and its lifecycle.

``start_server`` is what tests start (with an admission of their choosing); ``run`` is the process
entry point: logging, the fit gate when it is installed, signals and a bounded graceful drain.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable
from typing import Any

import aiohttp

from proxy.access_log import AccessLog
from proxy.admission import Admission, PassThrough
from proxy.http_server import HttpServer
from proxy.logging_setup import configure_logging, get_logger
from proxy.relay import Relay
from proxy.settings import Settings
from proxy.upstream import UpstreamPool

AdmissionFactory = Callable[[Settings, aiohttp.ClientSession], Admission]


class RunningProxy:
    """A started proxy: ``port`` it listens on, ``url``, and ``close()`` (drains for shutdown_grace)."""

    def __init__(self, server: HttpServer, host: str, admission: Any, pool: UpstreamPool,
                 session: aiohttp.ClientSession, access: AccessLog, grace: float) -> None:
        self.server = server
        self.port = server.port
        self.url = f"http://{host}:{server.port}"
        self.admission = admission
        self._pool = pool
        self._session = session
        self._access = access
        self._grace = grace

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), then release everything."""
        try:
            await self.server.close(self._grace)
        finally:
            await _release(self.admission, self._pool, self._session, self._access)


async def start_server(
    settings: Settings,
    admission: Admission | None = None,
    *,
    admission_factory: AdmissionFactory | None = None,
    host: str | None = None,
    port: int | None = None,
) -> RunningProxy:
    """Start the proxy on ``settings.listen`` (or host/port). ``admission`` wins over ``admission_factory``;
    neither = pass-through. Raises OSError when the address cannot be bound.

    ``admission_factory(settings, session)`` is called with a shared aiohttp session (the fit gate
    needs one for its own calls to Ollama; the relay has its own lean pool). An admission may have
    ``async start()`` / ``async close()``; they run here and at ``close()``.
    """
    listen_host, listen_port = settings.listen_address
    host = listen_host if host is None else host
    port = listen_port if port is None else port
    pool = UpstreamPool(settings.upstream, connect_timeout=settings.connect_timeout,
                        read_timeout=settings.read_timeout)
    access = AccessLog()
    session = new_upstream_session(settings)
    chosen: Any = admission
    if chosen is None:
        chosen = admission_factory(settings, session) if admission_factory is not None else PassThrough()
    relay = Relay(pool, PassThrough(), access)
    server = HttpServer(relay.handle, relay.try_fast)
    try:
        if callable(getattr(chosen, "start", None)):
            await chosen.start()
        relay.attach(chosen)
        await server.listen(host, port)
    except BaseException:
        await _release(chosen, pool, session, access)
        raise
    return RunningProxy(server, host, chosen, pool, session, access, settings.shutdown_grace)


async def _release(admission: Any, pool: UpstreamPool, session: aiohttp.ClientSession, access: AccessLog) -> None:
    try:
        if callable(getattr(admission, "close", None)):
            await admission.close()
    finally:
        await pool.close()
        await session.close()
        access.flush()


def new_upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The session the admission uses for its own calls to Ollama (the relay has its own pool)."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                    sock_read=settings.read_timeout or None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)


def gate_factory() -> AdmissionFactory | None:
    """The fit gate's builder when the gate module is installed, else None (pass-through)."""
    try:
        from proxy.gate import build_admission  # type: ignore[import-not-found]
    except ImportError:
        return None
    return build_admission  # type: ignore[no-any-return]


def run(settings: Settings) -> int:
    """``vramgate serve``: run until SIGTERM/SIGINT, then drain in-flight requests for shutdown_grace."""
    configure_logging(settings.log_format, settings.log_level)
    _install_uvloop()
    try:
        return asyncio.run(_serve(settings))
    except KeyboardInterrupt:
        return 130


def _install_uvloop() -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(settings: Settings) -> int:
    log = get_logger("vramgate")
    factory = gate_factory()
    try:
        running = await start_server(settings, admission_factory=factory)
    except OSError as exc:
        log.error("cannot listen", listen=settings.listen, error=str(exc))
        return 1
    gc.collect()
    gc.freeze()  # start-up objects (modules, settings, gate tables) are never garbage: stop rescanning them
    host, _ = settings.listen_address
    log.info("vramgate started", listen=f"{host}:{running.port}", upstream=settings.upstream,
             gate="fit" if factory is not None else "pass-through", event_loop=type(asyncio.get_running_loop()).__module__)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("vramgate stopping", grace_s=settings.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    await running.close()  # stops accepting, waits up to shutdown_grace for in-flight requests
    log.info("vramgate stopped")
    return 0
