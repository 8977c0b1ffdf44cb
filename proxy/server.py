"""The aiohttp application and the ``serve`` command: one listener, one pooled upstream session.

``create_app`` is what tests start (with an admission of their choosing); ``run`` is the process
entry point: logging, the fit gate when it is installed, signals and a bounded graceful drain.
"""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
from aiohttp import web

from proxy.access_log import AccessLog
from proxy.admission import Admission, PassThrough
from proxy.logging_setup import configure_logging, get_logger
from proxy.relay import Relay
from proxy.settings import Settings
from proxy.upstream import UpstreamPool

AdmissionFactory = Callable[[Settings, aiohttp.ClientSession], Admission]

SESSION_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("upstream_session", aiohttp.ClientSession)
ADMISSION_KEY: web.AppKey[Any] = web.AppKey("admission", object)
SETTINGS_KEY: web.AppKey[Settings] = web.AppKey("settings", Settings)


def create_app(
    settings: Settings,
    admission: Admission | None = None,
    *,
    admission_factory: AdmissionFactory | None = None,
) -> web.Application:
    """The proxy as an aiohttp app. ``admission`` wins over ``admission_factory``; neither = pass-through.

    ``admission_factory(settings, session)`` is called at start-up with the shared upstream session
    (the fit gate needs it for its own calls to Ollama). An admission may have ``async start()`` /
    ``async close()``; they run at app start-up and clean-up.
    """
    pool = UpstreamPool(settings.upstream, connect_timeout=settings.connect_timeout,
                        read_timeout=settings.read_timeout)
    access = AccessLog()
    relay = Relay(pool, PassThrough(), access)
    app = web.Application(handler_args={"max_field_size": 65536})
    app[SETTINGS_KEY] = settings

    async def upstream_context(app: web.Application) -> AsyncIterator[None]:
        session = new_upstream_session(settings)
        chosen: Any = admission
        if chosen is None:
            chosen = admission_factory(settings, session) if admission_factory is not None else PassThrough()
        app[SESSION_KEY] = session
        app[ADMISSION_KEY] = chosen
        try:
            if callable(getattr(chosen, "start", None)):
                await chosen.start()
            relay.attach(chosen)
            yield
        finally:
            try:
                if callable(getattr(chosen, "close", None)):
                    await chosen.close()
            finally:
                await pool.close()
                await session.close()
                access.flush()

    app.cleanup_ctx.append(upstream_context)
    app.router.add_route("*", "/{tail:.*}", relay.handle)
    return app


def new_upstream_session(settings: Settings) -> aiohttp.ClientSession:
    """The session the admission uses for its own calls to Ollama (the relay has its own pool)."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                    sock_read=settings.read_timeout or None)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                 cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)


def make_runner(app: web.Application, shutdown_grace: float) -> web.AppRunner:
    """Handler cancellation on: a client that goes away cancels its upstream request at once."""
    return web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=shutdown_grace)


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
    app = create_app(settings, admission_factory=factory)
    runner = make_runner(app, settings.shutdown_grace)
    await runner.setup()
    host, port = settings.listen_address
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", listen=settings.listen, error=str(exc))
        await runner.cleanup()
        return 1
    bound = runner.addresses[0][1] if runner.addresses else port
    gc.collect()
    gc.freeze()  # start-up objects (modules, settings, gate tables) are never garbage: stop rescanning them
    log.info("vramgate started", listen=f"{host}:{bound}", upstream=settings.upstream,
             gate="fit" if factory is not None else "pass-through", event_loop=type(asyncio.get_running_loop()).__module__)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("vramgate stopping", grace_s=settings.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    await runner.cleanup()  # stops accepting, waits up to shutdown_grace for in-flight requests
    log.info("vramgate stopped")
    return 0
