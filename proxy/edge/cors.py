"""Ollama's CORS rules (gin-contrib/cors v1.7.2 as Ollama configures it), and the combined guard.

vramgate must answer browsers exactly as Ollama would, including on its own answers (refusals,
502s), or a web app cannot read them. Ollama's ``GenerateRoutes`` runs ``cors.New(config)`` and
then ``allowedHostsMiddleware`` before every handler (also for 404/405), with DefaultConfig's
methods and MaxAge, its own AllowHeaders list, AllowWildcard, AllowBrowserExtensions and
``AllowOrigins = envconfig.AllowedOrigins()`` (OLLAMA_ORIGINS split on "," then the defaults).

gin-contrib/cors v1.7.2, per request with a non-empty ``Origin``:

- ``Origin == "http://" + req.Host`` or ``"https://" + req.Host`` (byte for byte): not CORS,
  nothing is added (the host check still runs).
- Origin not allowed: 403, empty body, no CORS headers; the host check does not run.
- Any OPTIONS (v1.7.2 does not look at Access-Control-Request-Method): 204, empty body, with the
  preflight headers and ``Access-Control-Allow-Origin: <origin>``; the host check does not run.
- Otherwise ``Access-Control-Allow-Origin: <origin>`` and ``Vary: Origin`` are set on the response
  before the handler, so they are on whatever follows (the host check's 403 included).

With ``*`` among the origins every origin is allowed and ``Access-Control-Allow-Origin: *``
replaces the echoed origin and the Vary headers.

Origins match exactly after gin-contrib's normalisation (trimmed, lower-cased; the request's
Origin is compared as sent), or by a wildcard rule made from the configured text as written: one
``*`` means prefix match (``x*``), suffix match (``*x``) or both (``x*y``, no length check).
``AllowBrowserExtensions`` only lets entries without ``*`` use the extension schemes at start-up;
it does not allow any extension origin by itself (Ollama's FAQ: set
``OLLAMA_ORIGINS=chrome-extension://*``). Entries Ollama refuses to start with (no ``*`` and no
allowed scheme, e.g. ``" http://a"`` or ``""`` from ``"a,"``; two ``*``) raise ValueError here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.edge.host_guard import HostGuard, effective_host, host_header_error

# DefaultConfig().AllowMethods, upper-cased and joined as generatePreflightHeaders does.
ALLOW_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
# Ollama's AllowHeaders (it replaces DefaultConfig's), in http.CanonicalHeaderKey form.
ALLOW_HEADERS = (
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
    "Openai-Beta", "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Custom-Poll-Interval",
    "X-Stainless-Helper-Method", "X-Stainless-Lang", "X-Stainless-Os",
    "X-Stainless-Package-Version", "X-Stainless-Poll-Helper", "X-Stainless-Retry-Count",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
)
MAX_AGE = 12 * 3600  # DefaultConfig().MaxAge, in seconds
DEFAULT_SCHEMES = ("http://", "https://")
EXTENSION_SCHEMES = ("chrome-extension://", "safari-extension://", "moz-extension://",
                     "ms-browser-extension://")

Headers = tuple[tuple[str, str], ...]


def ollama_default_origins() -> list[str]:
    """What envconfig.AllowedOrigins appends after OLLAMA_ORIGINS, in its order."""
    out: list[str] = []
    for host in ("localhost", "127.0.0.1", "0.0.0.0"):
        out += [f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*"]
    return out + ["app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*"]


def split_ollama_origins(value: str) -> list[str]:
    """OLLAMA_ORIGINS as Ollama reads it: trimmed, outer quotes dropped, split on "," as is."""
    value = value.strip().strip("\"'")
    return value.split(",") if value else []


@dataclass(frozen=True)
class CorsDecision:
    """``status`` set: answer now with it, these headers and an empty body; else add the headers."""

    status: int | None
    headers: Headers = ()


@dataclass(frozen=True)
class EarlyAnswer:
    """What Ollama (or Go's net/http under it) sends without running a handler.

    The body is empty except for net/http's 400s; ``close`` asks to close the connection after it.
    Go also writes ``Date``, and ``Content-Length: 0`` on an empty 403 (not on 204, not for HEAD).
    """

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    close: bool = False


@dataclass(frozen=True)
class Proceed:
    """Go on (forward, or vramgate's own answer): put ``headers`` on whatever response follows."""

    headers: Headers
    host: str  # req.Host as Go computed it


class Cors:
    """The origin rules Ollama builds at start-up, from the extra origins (OLLAMA_ORIGINS) first."""

    def __init__(self, extra_origins: Iterable[str] = ()) -> None:
        origins = [*extra_origins, *ollama_default_origins()]
        for origin in origins:  # Config.Validate, which panics in Ollama
            if "*" not in origin and not origin.startswith(DEFAULT_SCHEMES + EXTENSION_SCHEMES):
                raise ValueError(
                    f"bad origin {origin!r}: origins must contain '*' or start with "
                    + ", ".join(DEFAULT_SCHEMES + EXTENSION_SCHEMES))
        self.origins = tuple(origins)
        self.allow_all = "*" in origins
        self._exact = frozenset(o.strip().lower() for o in origins)
        self._wildcards: list[tuple[str, str]] = []
        for origin in origins:  # parseWildcardRules: from the raw text, not normalised
            if "*" not in origin:
                continue
            if origin.count("*") > 1:
                raise ValueError(f"bad origin {origin!r}: only one * is allowed")
            before, _, after = origin.partition("*")
            self._wildcards.append((before or "*", after or "*") if before or after else ("*", ""))
        if self.allow_all:
            self.normal_headers: Headers = (("Access-Control-Allow-Origin", "*"),)
            self.preflight_headers: Headers = (
                ("Access-Control-Allow-Headers", ",".join(ALLOW_HEADERS)),
                ("Access-Control-Allow-Methods", ",".join(ALLOW_METHODS)),
                ("Access-Control-Allow-Origin", "*"),
                ("Access-Control-Max-Age", str(MAX_AGE)),
            )
        else:
            self.normal_headers = (("Vary", "Origin"),)
            self.preflight_headers = (
                ("Access-Control-Allow-Headers", ",".join(ALLOW_HEADERS)),
                ("Access-Control-Allow-Methods", ",".join(ALLOW_METHODS)),
                ("Access-Control-Max-Age", str(MAX_AGE)),
                ("Vary", "Origin"),
                ("Vary", "Access-Control-Request-Method"),
                ("Vary", "Access-Control-Request-Headers"),
            )

    def origin_allowed(self, origin: str) -> bool:
        """validateOrigin: all, exact (normalised list vs the Origin as sent), or a wildcard rule."""
        if self.allow_all or origin in self._exact:
            return True
        for before, after in self._wildcards:
            if before == "*" and origin.endswith(after):
                return True
            if after == "*" and origin.startswith(before):
                return True
            if origin.startswith(before) and origin.endswith(after):
                return True
        return False

    def decide(self, method: str, origin: str | None, host: str) -> CorsDecision:
        """applyCors for one request; ``host`` is Go's req.Host (``effective_host``)."""
        if not origin:
            return CorsDecision(None)  # not a CORS request
        if origin in (f"http://{host}", f"https://{host}"):
            return CorsDecision(None)  # same origin, e.g. fetch() from a page Ollama served
        if not self.origin_allowed(origin):
            return CorsDecision(403)
        if method == "OPTIONS":
            return CorsDecision(204, self._with_origin(self.preflight_headers, origin))
        return CorsDecision(None, self._with_origin(self.normal_headers, origin))

    def _with_origin(self, headers: Headers, origin: str) -> Headers:
        if self.allow_all:
            return headers
        # Sorted by name, the order Go writes them in.
        return tuple(sorted((*headers, ("Access-Control-Allow-Origin", origin)), key=lambda h: h[0]))


def _first(headers: Iterable[tuple[str | bytes, str | bytes]], name: str) -> tuple[str | None, list[str]]:
    values = []
    for key, value in headers:
        k = key.decode("latin-1") if isinstance(key, bytes) else key
        if k.lower() == name:
            values.append((value.decode("latin-1") if isinstance(value, bytes) else value).strip(" \t"))
    return (values[0] if values else None), values


def guard(method: str, target: str | bytes, headers: Iterable[tuple[str | bytes, str | bytes]], *,
          cors: Cors, hosts: HostGuard, http_version: str = "1.1") -> EarlyAnswer | Proceed:
    """Ollama's front, in its order, on the request as the client sent it (before Host is rewritten).

    1. net/http: more than one Host, HTTP/1.1 without Host, or a malformed Host -> 400 (text body,
       close). 2. req.Host = an absolute-form target's host, else the Host header. 3. CORS (above).
    4. Host allow-list (``proxy.host_guard``): 403 empty, keeping CORS headers from step 3; OPTIONS
    to an allowed name -> 204 empty. 5. Proceed with step 3's headers.
    """
    headers = list(headers)
    _, host_values = _first(headers, "host")
    error = host_header_error(host_values, http_version=http_version, method=method)
    if error is not None:
        status, reason, body = error
        return EarlyAnswer(status, reason, (("Content-Type", "text/plain; charset=utf-8"),),
                           body, close=True)
    host = effective_host(target, host_values[0] if host_values else None, method)
    origin, _ = _first(headers, "origin")
    decision = cors.decide(method, origin, host)
    if decision.status is not None:
        return EarlyAnswer(decision.status, _REASONS[decision.status], decision.headers)
    verdict = hosts.verdict(method, host)
    if verdict == "forbidden":
        return EarlyAnswer(403, "Forbidden", decision.headers)
    if verdict == "no_content":
        return EarlyAnswer(204, "No Content", decision.headers)
    return Proceed(decision.headers, host)


_REASONS = {204: "No Content", 403: "Forbidden"}
