"""vramgate's own endpoints, under ``/vramgate/`` (a prefix Ollama's API never uses).

``/vramgate/health``   200 ``{"status": "ok"}`` or 503 ``{"error": reason}``; always open (healthchecks)
``/vramgate/status``   the status JSON (``schema: 1``)
``/vramgate/metrics``  Prometheus text
``/vramgate/``         the status page (static HTML; its script reads ``status``)
``/vramgate``          308 to ``/vramgate/``, so the page's relative ``status`` resolves under the prefix

Access: status and metrics tell who runs what, so they are open only where vramgate listens on
loopback and the client is on loopback too (any local user may already read ``nvidia-smi``).
Otherwise they need ``Authorization: Bearer <admin_token>``, compared in constant time; with no
``admin_token`` configured they are refused (403) rather than open to the network. The page and
the redirect carry no data (the same bytes for everyone), so they are served to anyone: that is
what lets the page take its token from its own ``#token=`` fragment, which a browser cannot send
on navigation. Only GET and HEAD are answered; everything is ``Cache-Control: no-store``.

The caller runs Ollama's own front checks (Host allow-list, CORS) first, as for any request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web

from proxy.config.log_setup import get_logger
from proxy.edge.host_guard import is_loopback, parse_ip
from proxy.observe.metrics import Metrics
from proxy.observe.page import CSP, PAGE
from proxy.ollama.errors import JSON_TYPE

PREFIX = "/vramgate"
_OPEN = frozenset({PREFIX, PREFIX + "/", PREFIX + "/health"})  # answered to anyone
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_log = get_logger("vramgate.endpoints")


class StatusSource(Protocol):
    """What the endpoints read: the gate's picture, its health, its metrics."""

    metrics: Metrics

    async def status(self) -> Mapping[str, Any]:
        """The status JSON as a mapping (``schema: 1``)."""
        ...

    async def health(self) -> tuple[bool, str]:
        """(serving and the upstream answers, the reason when not)."""
        ...


class Endpoints:
    def __init__(self, source: StatusSource, admin_token: str | None, listen_loopback: bool) -> None:
        self._source = source
        self._token = admin_token.encode() if admin_token else None
        self._listen_loopback = listen_loopback

    @staticmethod
    def handles(path: str) -> bool:
        """Whether ``path`` (the decoded request path) is one of vramgate's own."""
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def handle(self, request: web.BaseRequest, path: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            response = _error(405, f"method {request.method} not allowed on {path}")
            response.headers["Allow"] = "GET, HEAD"
            return response
        if path not in _OPEN:
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
        if path == PREFIX:
            return web.Response(status=308, headers={"Location": PREFIX + "/", "Cache-Control": "no-store"})
        if path == PREFIX + "/":
            return web.Response(body=PAGE, content_type="text/html", charset="utf-8",
                                headers={"Cache-Control": "no-store", **_PAGE_HEADERS})
        if path == PREFIX + "/health":
            return await self._health()
        if path == PREFIX + "/status":
            return await self._status()
        if path == PREFIX + "/metrics":
            try:
                await self._source.status()  # the GPU gauges come from a fresh picture, as a scrape expects
            except Exception as exc:  # the live counters still answer
                _log.warning("status.failed", error=repr(exc))
            body, content_type = self._source.metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
        return _error(404, f"{path} not found (vramgate serves {PREFIX}/, /status, /metrics and /health)")

    def _refusal(self, request: web.BaseRequest) -> web.Response | None:
        """None when this client may read status and metrics, else the answer saying why not."""
        if self._listen_loopback and _peer_is_loopback(request):
            return None
        if self._token is None:
            return _error(403, "vramgate listens beyond loopback: set admin_token (VRAMGATE_ADMIN_TOKEN) "
                               "and send it as 'Authorization: Bearer <token>' to read this")
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token):
            return None
        response = _error(401, "this needs vramgate's admin token: 'Authorization: Bearer <admin_token>'")
        response.headers["WWW-Authenticate"] = 'Bearer realm="vramgate"'
        return response

    async def _health(self) -> web.Response:
        try:
            ok, reason = await self._source.health()
        except Exception as exc:  # a failing check is itself a reason to be unhealthy
            ok, reason = False, f"health check failed: {exc!r}"
        return _json(200, {"status": "ok"}) if ok else _error(503, reason)

    async def _status(self) -> web.Response:
        try:
            status = await self._source.status()
        except Exception as exc:
            _log.warning("status.failed", error=repr(exc))
            return _error(503, f"vramgate cannot build its status now: {exc}")
        return _json(200, status)


def _peer_is_loopback(request: web.BaseRequest) -> bool:
    """The TCP peer's address (not any forwarded header) is 127/8, ::1 or IPv4-mapped loopback."""
    parsed = parse_ip(request.remote or "")
    return parsed is not None and is_loopback(parsed[0])


def _json(status: int, payload: Mapping[str, Any]) -> web.Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=_plain).encode()
    return web.Response(status=status, body=body, headers={"Content-Type": JSON_TYPE, "Cache-Control": "no-store"})


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


def _plain(value: object) -> object:
    """json.dumps' fallback: a source may hand back read-only mappings (MappingProxyType) or sets."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
