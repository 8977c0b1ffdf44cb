"""The proxy's process shell: aiohttp's server in front, one aiohttp client session to Ollama.

``start_server`` is what tests start (with an admission of their choosing); ``run`` is the process
entry point: logging, the fit gate (built at start, or vramgate exits saying why: it never
degrades to a pass-through), signals and a bounded graceful drain.

The limits a client can hit before the relay sees a request (request line, header size and count,
keep-alive idle) are aiohttp's parser limits, set from the settings; a breach is answered in
Ollama's JSON shape (431 for an oversized head, as Go's server does) by ``_Protocol.handle_error``.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.http_parser import HttpRequestParserPy
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from proxy.config.log_setup import configure_logging, get_logger
from proxy.config.settings import Settings
from proxy.edge.access_log import AccessLog
from proxy.edge.cors import Cors
from proxy.edge.endpoints import Endpoints
from proxy.edge.host_guard import HostGuard, LocalNames
from proxy.edge.relay import Relay
from proxy.gate.admission import Admission, PassThrough
from proxy.gate.service import (  # part of vramgate: an import error is a crash, never a mode
    Gate,
    build_admission,
)
from proxy.gate.status import GateStatus
from proxy.observe.metrics import Metrics
from proxy.ollama import client as ollama_client
from proxy.ollama.client import new_session
from proxy.ollama.errors import JSON_TYPE, error_body

AdmissionFactory = Callable[[Settings, aiohttp.ClientSession], Admission]
_log = get_logger("vramgate.http")


class StartError(Exception):
    """vramgate cannot start (the fit gate, a setting only checked at start): exit with this one line."""


class _Protocol(RequestHandler):
    """aiohttp's per-connection handler, answering malformed requests in Ollama's JSON shape.

    It parses with aiohttp's pure-Python request parser: the C (llhttp) one, as of aiohttp 3.14,
    keeps a chunked body's trailer field pending and adds it to the *next* pipelined request's
    headers (tests/test_edge_regressions.py shows it), which would let a client smuggle a header
    into a request it does not own. The Python parser drops trailers; it costs a few microseconds
    per request head, nothing next to a model call. It is also told to hand over one request at a
    time, so garbage pipelined behind valid requests costs only itself an answer.
    """

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._max_msg_queue_size, self._msg_queue_resume_size = 1, 0  # (see max_msg_queue_size below)
        self._parser = HttpRequestParserPy(
            self, kwargs["loop"], self._read_bufsize, max_line_size=self.max_line_size,
            max_field_size=self.max_field_size, max_headers=self.max_headers,
            payload_exception=RequestPayloadError, auto_decompress=False,
            # one parsed request at a time: a malformed request pipelined behind good ones then fails
            # alone, after the good ones were handed over (aiohttp drops a whole batch on an error)
            max_msg_queue_size=1,
        )

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the answer had started; the connection is closed instead")
        if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
            status, text = 431, "request header fields too large"
        elif status == 500:
            _log.error("request.failed", exc_info=exc)
            text = "vramgate failed on this request (see its log)"
        else:
            detail = str(getattr(exc, "message", None) or message or "").strip().splitlines()
            text = "bad request: malformed HTTP" + (f" ({detail[0].rstrip(':')})" if detail else "")
        _log.info("request.malformed", status=status, error=str(getattr(exc, "message", exc)), client=request.remote)
        response = web.Response(status=status, body=error_body("/", text, status), headers={"Content-Type": JSON_TYPE})
        response.force_close()
        if self.transport is not None and not isinstance(self.transport, _LingeringClose):
            self.transport = _LingeringClose(self.transport)  # type: ignore[assignment]  # (a wrapper)
        return response

    def data_received(self, data: bytes) -> None:
        if isinstance(self.transport, _LingeringClose):
            return  # after an error answer: what the client still sends is read and dropped
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # (asyncio's signature)
        if isinstance(self.transport, _LingeringClose):
            self.transport.peer_done()
            return False
        # Otherwise the transport closes, and the request in hand is cancelled: a client that ends
        # its side has gone, as Go's server (and so Ollama) takes it, which stops the generation.
        return super().eof_received()


class _LingeringClose:
    """Closes the way RFC 9112 §9.6 asks after an error answer: send, half-close, read what the
    client still sends (aiohttp discards it), then close. Closing at once, with the client's bytes
    still arriving, makes the kernel send a reset that destroys the answer before it is read."""

    LINGER = 2.0

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        if self._timer is not None or self._transport.is_closing():
            return
        try:
            self._transport.write_eof()  # after the answer is flushed
            self._transport.resume_reading()  # (aiohttp may have paused it): keep draining the client
        except (OSError, RuntimeError, NotImplementedError):
            self._transport.close()
            return
        self._timer = asyncio.get_running_loop().call_later(self.LINGER, self._transport.close)

    def peer_done(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._transport.close()


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class RunningProxy:
    """A started proxy: ``port`` it listens on, ``url``, and ``close()`` (drains for shutdown_grace)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, admission: Any,
                 session: aiohttp.ClientSession, access: AccessLog) -> None:
        self.port = port
        self.url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        self.admission = admission
        self._runner = runner
        self._session = session
        self._access = access

    async def close(self) -> None:
        """Stop accepting, let requests in flight finish (bounded), then release everything."""
        try:
            await self._runner.cleanup()
        finally:
            await _release(self.admission, self._session, self._access)


async def start_server(
    settings: Settings,
    admission: Admission | None = None,
    *,
    admission_factory: AdmissionFactory | None = None,
    host: str | None = None,
    port: int | None = None,
) -> RunningProxy:
    """Start the proxy on ``settings.listen`` (or host/port). ``admission`` wins over ``admission_factory``;
    neither = pass-through. Raises OSError when the address cannot be bound; whatever the
    admission's ``start()`` raises propagates (the caller decides to exit).
    """
    listen_host, listen_port = settings.listen_address
    host = listen_host if host is None else host
    port = listen_port if port is None else port
    # Bind first (a busy port is one clear error), but serve only once the admission is ready:
    # connections wait in the kernel's backlog meanwhile, so nothing is ever relayed unjudged.
    sock = _bind(host, port)
    try:
        cors = Cors(settings.origins)
    except ValueError as exc:
        sock.close()
        raise StartError(f"invalid setting VRAMGATE_ORIGINS / OLLAMA_ORIGINS: {exc}") from None
    hosts = HostGuard(sock.getsockname()[0], LocalNames.gather())  # Ollama's Host check, keyed on this listener
    access = AccessLog()
    session = new_session(settings)
    chosen: Any = admission
    if chosen is None:
        try:
            chosen = admission_factory(settings, session) if admission_factory is not None else PassThrough()
        except Exception as exc:
            sock.close()
            await session.close()
            raise StartError(f"cannot build the fit gate: {type(exc).__name__}: {exc}") from exc
    relay = Relay(settings, session, access, cors, hosts)
    server = _Server(
        relay.handle,
        handler_cancellation=True,  # a client that leaves cancels its request, closing the upstream one
        access_log=None,  # vramgate's own access log (proxy.access_log) has the fields that matter
        keepalive_timeout=settings.keep_alive_timeout,
        max_line_size=settings.max_request_line,
        max_field_size=settings.max_header_size,
        max_headers=settings.max_headers,
        lingering_time=5.0,  # read what a refused client still sends, so it sees the answer (no reset)
        auto_decompress=False,  # bodies are relayed as sent: a gzip body stays gzip (Ollama rejects it too)
    )
    runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=settings.shutdown_grace)
    try:
        if callable(getattr(chosen, "start", None)):
            try:
                await chosen.start()
            except Exception as exc:
                raise StartError(f"cannot start the fit gate: {exc}") from exc
        relay.attach(chosen)
        source = GateStatus(chosen) if isinstance(chosen, Gate) else BareStatus(session, settings)
        relay.metrics = source.metrics
        relay.endpoints = Endpoints(source, settings.admin_token, listen_loopback=_loopback(host))
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        await _release(chosen, session, access)
        raise
    bound_port = sock.getsockname()[1]
    return RunningProxy(runner, host, bound_port, chosen, session, access)


class BareStatus:
    """The status source when nothing is gated (tests of the relay alone): health and metrics only."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings) -> None:
        self._session, self._settings = session, settings
        self.metrics = Metrics()

    async def health(self) -> tuple[bool, str]:
        return await ollama_client.health(self._session, self._settings.upstream, self._settings.probe_timeout)

    async def status(self) -> dict[str, Any]:
        return {"schema": 1, "upstream": self._settings.upstream, "gpus": [], "models": [], "queue": [],
                "decisions": [], "problem": "nothing is gated (pass-through)"}


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=1024)


async def _release(admission: Any, session: aiohttp.ClientSession, access: AccessLog) -> None:
    try:
        if callable(getattr(admission, "close", None)):
            await admission.close()
    finally:
        await session.close()


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
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _serve(settings: Settings) -> int:
    log = get_logger("vramgate")
    try:
        running = await start_server(settings, admission_factory=build_admission)
    except OSError as exc:
        print(f"vramgate: cannot listen on {settings.listen}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except StartError as exc:
        print(f"vramgate: {exc}", file=sys.stderr)
        return 1
    gc.collect()
    gc.freeze()  # start-up objects (modules, settings, gate tables) are never garbage: stop rescanning them
    host, _ = settings.listen_address
    log.info("vramgate started", listen=f"{host}:{running.port}", upstream=settings.upstream,
             event_loop=type(asyncio.get_running_loop()).__module__)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if callable(reload := getattr(running.admission, "reload", None)):
        loop.add_signal_handler(signal.SIGHUP, reload)  # reread the policy and tokens files
    await stop.wait()
    log.info("vramgate stopping", grace_s=settings.shutdown_grace)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    await running.close()  # stops accepting, waits up to shutdown_grace for in-flight requests
    log.info("vramgate stopped")
    return 0
