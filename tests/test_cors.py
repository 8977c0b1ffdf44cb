"""CORS and the combined front, with expectations from gin-contrib/cors v1.7.2 and Ollama's routes.go."""

from __future__ import annotations

import pytest

from proxy.edge.cors import (
    ALLOW_HEADERS,
    Cors,
    CorsDecision,
    EarlyAnswer,
    Proceed,
    guard,
    ollama_default_origins,
    split_ollama_origins,
)
from proxy.edge.host_guard import HostGuard, LocalNames

NAMES = LocalNames(hostname="mybox")
LOOPBACK = HostGuard("127.0.0.1", NAMES)
ANYWHERE = HostGuard("0.0.0.0", NAMES)

PREFLIGHT_VARY = (("Vary", "Origin"), ("Vary", "Access-Control-Request-Method"),
                  ("Vary", "Access-Control-Request-Headers"))


def preflight(origin: str) -> tuple[tuple[str, str], ...]:
    """generatePreflightHeaders + the echoed origin, sorted by name as Go writes them."""
    return (
        ("Access-Control-Allow-Headers", ",".join(ALLOW_HEADERS)),
        ("Access-Control-Allow-Methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Max-Age", "43200"),
        *PREFLIGHT_VARY,
    )


def normal(origin: str) -> tuple[tuple[str, str], ...]:
    """generateNormalHeaders (Vary: Origin, no credentials, no expose) + the echoed origin."""
    return (("Access-Control-Allow-Origin", origin), ("Vary", "Origin"))


def test_defaults_are_ollamas() -> None:
    # envconfig.AllowedOrigins: localhost/127.0.0.1/0.0.0.0 x http/https x bare/":*", then schemes.
    assert ollama_default_origins() == [
        "http://localhost", "https://localhost", "http://localhost:*", "https://localhost:*",
        "http://127.0.0.1", "https://127.0.0.1", "http://127.0.0.1:*", "https://127.0.0.1:*",
        "http://0.0.0.0", "https://0.0.0.0", "http://0.0.0.0:*", "https://0.0.0.0:*",
        "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
    ]
    # Ollama's AllowHeaders through http.CanonicalHeaderKey (OpenAI-Beta -> Openai-Beta).
    assert ALLOW_HEADERS[:6] == ("Authorization", "Content-Type", "User-Agent", "Accept",
                                 "X-Requested-With", "Openai-Beta")
    assert len(ALLOW_HEADERS) == 18


@pytest.mark.parametrize(("origin", "allowed"), [
    ("http://localhost", True),  # exact
    ("https://127.0.0.1", True),
    ("http://localhost:3000", True),  # "http://localhost:*": prefix rule
    ("https://0.0.0.0:8443", True),
    ("http://localhost:3000/x", True),  # a prefix rule checks nothing after the prefix
    ("app://anything", True),
    ("file://", True),
    ("tauri://localhost", True),
    ("vscode-webview://abc", True),
    ("vscode-file://vscode-app", True),
    ("http://evil.example", False),
    ("http://localhost.evil.example", False),  # neither exact nor "http://localhost:" prefix
    ("null", False),  # what browsers send for file:// pages
    ("HTTP://LOCALHOST", False),  # the Origin is compared as sent; only the list is lower-cased
    ("chrome-extension://abc", False),  # AllowBrowserExtensions does not allow extensions by itself
    ("moz-extension://abc", False),
    ("http://[::1]:3000", False),  # not among Ollama's defaults
])
def test_default_origins(origin: str, allowed: bool) -> None:
    assert Cors().origin_allowed(origin) is allowed


@pytest.mark.parametrize(("extra", "origin", "allowed"), [
    # OLLAMA_ORIGINS=https://*.myapp.com -> wildcard rule ("https://", ".myapp.com").
    (["https://*.myapp.com"], "https://app.myapp.com", True),
    (["https://*.myapp.com"], "https://a.b.myapp.com", True),
    (["https://*.myapp.com"], "https://.myapp.com", True),
    (["https://*.myapp.com"], "https://myapp.com", False),
    (["https://*.myapp.com"], "http://app.myapp.com", False),
    (["https://*.myapp.com"], "https://app.myapp.com.evil", False),
    (["https://*.myapp.com"], "https://evilmyapp.com", False),
    (["*.myapp.com"], "anything.myapp.com", True),  # leading *: suffix rule
    (["http://a*a"], "http://a", True),  # prefix and suffix may overlap (no length check)
    (["chrome-extension://abc"], "chrome-extension://abc", True),  # allowed scheme, exact
    (["chrome-extension://*"], "chrome-extension://anything", True),
    (["safari-web-extension://*"], "safari-web-extension://x", True),
    (["http://MyApp.com"], "http://myapp.com", True),  # the list is trimmed and lower-cased...
    (["http://MyApp.com"], "http://MyApp.com", False),  # ...the Origin is not
    (["https://*.MyApp.com"], "https://a.myapp.com", False),  # wildcard rules keep their case
    (["http://a.com", "http://b.com"], "http://b.com", True),
    (["*"], "http://evil.example", True),
])
def test_extra_origins(extra: list[str], origin: str, allowed: bool) -> None:
    assert Cors(extra).origin_allowed(origin) is allowed


@pytest.mark.parametrize("bad", [
    " http://b.com",  # Validate sees the raw text: a space before the scheme
    "",  # from a trailing comma: "a,".split(",")
    "HTTP://A.COM",  # schemes are compared case-sensitively
    "myapp://x",  # not an allowed scheme and no "*"
    "safari-web-extension://x",  # not in ExtensionSchemas
    "http://*.*.com",  # only one * is allowed
])
def test_origins_ollama_refuses_to_start_with(bad: str) -> None:
    with pytest.raises(ValueError, match="bad origin"):
        Cors([bad])


def test_split_ollama_origins() -> None:
    # envconfig.Var trims space and quotes; strings.Split keeps the spaces after commas.
    assert split_ollama_origins(' "https://*.myapp.com,http://a.com" ') == ["https://*.myapp.com",
                                                                            "http://a.com"]
    assert split_ollama_origins("a, b") == ["a", " b"]
    assert split_ollama_origins("  ") == []


def test_decide() -> None:
    cors = Cors()
    host = "localhost:11434"
    assert cors.decide("GET", None, host) == CorsDecision(None)  # no Origin: not CORS
    assert cors.decide("GET", "", host) == CorsDecision(None)
    # Same-origin shortcut: Origin == "http://"+req.Host or "https://"+req.Host, nothing added.
    assert cors.decide("GET", "http://localhost:11434", host) == CorsDecision(None)
    assert cors.decide("OPTIONS", "https://localhost:11434", host) == CorsDecision(None)
    assert cors.decide("GET", "http://mybox:11434", "mybox:11434") == CorsDecision(None)
    # ...even for an origin that is not allowed otherwise, and only byte for byte.
    assert cors.decide("GET", "http://evil.example:11434", "evil.example:11434") == CorsDecision(None)
    assert cors.decide("GET", "http://evil.example", "EVIL.example") == CorsDecision(403)
    # Disallowed: 403, no headers.
    assert cors.decide("GET", "http://evil.example", host) == CorsDecision(403)
    assert cors.decide("OPTIONS", "http://evil.example", host) == CorsDecision(403)
    # Allowed: normal headers; any OPTIONS is a preflight (v1.7.2 ignores Access-Control-Request-*).
    assert cors.decide("POST", "http://localhost:3000", host) == CorsDecision(
        None, normal("http://localhost:3000"))
    assert cors.decide("OPTIONS", "http://localhost:3000", host) == CorsDecision(
        204, preflight("http://localhost:3000"))


def test_decide_allow_all() -> None:
    # "*" -> AllowAllOrigins: Allow-Origin "*" instead of the echo, and no Vary at all.
    cors = Cors(["*"])
    assert cors.decide("GET", "http://evil.example", "localhost") == CorsDecision(
        None, (("Access-Control-Allow-Origin", "*"),))
    assert cors.decide("OPTIONS", "http://evil.example", "localhost") == CorsDecision(204, (
        ("Access-Control-Allow-Headers", ",".join(ALLOW_HEADERS)),
        ("Access-Control-Allow-Methods", "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
        ("Access-Control-Allow-Origin", "*"),
        ("Access-Control-Max-Age", "43200"),
    ))


def run(method: str, headers: list[tuple[str, str]], *, target: str = "/api/tags",
        hosts: HostGuard = LOOPBACK, cors: Cors | None = None, version: str = "1.1"
        ) -> EarlyAnswer | Proceed:
    return guard(method, target, headers, cors=cors or Cors(), hosts=hosts, http_version=version)


@pytest.mark.parametrize(("method", "headers", "hosts", "expected"), [
    # Host allow-list alone (no Origin): 403 empty / go on / 204 for OPTIONS to an allowed name.
    ("GET", [("Host", "attacker.example")], LOOPBACK, EarlyAnswer(403, "Forbidden", ())),
    ("GET", [("Host", "attacker.example")], ANYWHERE, Proceed((), "attacker.example")),
    ("GET", [("Host", "example.com")], LOOPBACK, EarlyAnswer(403, "Forbidden", ())),
    ("GET", [("Host", "localhost:11434")], LOOPBACK, Proceed((), "localhost:11434")),
    ("OPTIONS", [("Host", "localhost:11434")], LOOPBACK, EarlyAnswer(204, "No Content", ())),
    ("OPTIONS", [("Host", "127.0.0.1:11434")], LOOPBACK, Proceed((), "127.0.0.1:11434")),  # IP: next
    ("OPTIONS", [("Host", "localhost:11434")], ANYWHERE, Proceed((), "localhost:11434")),
    # CORS runs first: a bad Origin is 403 whatever the Host.
    ("GET", [("Host", "localhost:11434"), ("Origin", "http://evil.example")], LOOPBACK,
     EarlyAnswer(403, "Forbidden", ())),
    ("GET", [("Host", "localhost:11434"), ("Origin", "http://evil.example")], ANYWHERE,
     EarlyAnswer(403, "Forbidden", ())),
    # Good Origin: headers are set, then the host check; its 403 keeps them.
    ("POST", [("host", "localhost:11434"), ("origin", "http://localhost:3000")], LOOPBACK,
     Proceed(normal("http://localhost:3000"), "localhost:11434")),
    ("POST", [("Host", "attacker.example"), ("Origin", "http://localhost:3000")], LOOPBACK,
     EarlyAnswer(403, "Forbidden", normal("http://localhost:3000"))),
    # A preflight is answered by CORS, so the host check never runs (even for a foreign Host).
    ("OPTIONS", [("Host", "localhost:11434"), ("Origin", "http://localhost:3000"),
                 ("Access-Control-Request-Method", "POST")], LOOPBACK,
     EarlyAnswer(204, "No Content", preflight("http://localhost:3000"))),
    ("OPTIONS", [("Host", "attacker.example"), ("Origin", "http://localhost:3000")], LOOPBACK,
     EarlyAnswer(204, "No Content", preflight("http://localhost:3000"))),
    # Same origin skips CORS; the DNS-rebinding page is then caught by the host check.
    ("GET", [("Host", "attacker.example:11434"), ("Origin", "http://attacker.example:11434")],
     LOOPBACK, EarlyAnswer(403, "Forbidden", ())),
    ("OPTIONS", [("Host", "mybox:11434"), ("Origin", "http://mybox:11434")], LOOPBACK,
     EarlyAnswer(204, "No Content", ())),
    ("GET", [("Host", "mybox:11434"), ("Origin", "http://mybox:11434")], LOOPBACK,
     Proceed((), "mybox:11434")),
    # Header names are case-insensitive; the first Origin counts (Header.Get).
    ("GET", [("HOST", "localhost"), ("ORIGIN", "app://x"), ("Origin", "http://evil.example")],
     LOOPBACK, Proceed(normal("app://x"), "localhost")),
    # net/http's own 400s come before everything.
    ("GET", [("Host", "localhost"), ("Host", "localhost")], LOOPBACK,
     EarlyAnswer(400, "Bad Request", (("Content-Type", "text/plain; charset=utf-8"),),
                 b"400 Bad Request", close=True)),
    ("GET", [("Origin", "http://evil.example")], LOOPBACK,
     EarlyAnswer(400, "Bad Request: missing required Host header",
                 (("Content-Type", "text/plain; charset=utf-8"),),
                 b"400 Bad Request: missing required Host header", close=True)),
])
def test_guard(method: str, headers: list[tuple[str, str]], hosts: HostGuard,
               expected: EarlyAnswer | Proceed) -> None:
    assert run(method, headers, hosts=hosts) == expected


def test_guard_uses_the_absolute_form_host() -> None:
    headers = [("Host", "localhost:11434")]
    assert run("GET", headers, target="http://attacker.example/api/tags") == EarlyAnswer(
        403, "Forbidden", ())
    # The same-origin shortcut compares with that host too.
    answer = run("GET", [("Host", "localhost"), ("Origin", "http://evil:1")],
                 target="http://evil:1/x", hosts=ANYWHERE)
    assert answer == Proceed((), "evil:1")


def test_guard_http10_without_host() -> None:
    assert run("GET", [], version="1.0") == Proceed((), "")  # empty req.Host is allowed


def test_guard_bytes_headers_and_wildcards() -> None:
    cors = Cors(split_ollama_origins("https://*.myapp.com"))
    answer = guard("GET", b"/api/chat", [(b"Host", b"127.0.0.1:11434"), (b"Origin", b"https://x.myapp.com")],
                   cors=cors, hosts=LOOPBACK)
    assert answer == Proceed(normal("https://x.myapp.com"), "127.0.0.1:11434")
    answer = guard("GET", b"/", [(b"Host", b"127.0.0.1"), (b"Origin", b"https://x.other.com")],
                   cors=cors, hosts=LOOPBACK)
    assert answer == EarlyAnswer(403, "Forbidden", ())


def test_settings_read_ollama_origins(monkeypatch: pytest.MonkeyPatch) -> None:
    from proxy.config.settings import load_settings

    for name in ("VRAMGATE_CONFIG", "VRAMGATE_ORIGINS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OLLAMA_ORIGINS", "'https://*.myapp.com,chrome-extension://*'")
    settings = load_settings()
    assert settings.origins == ["https://*.myapp.com", "chrome-extension://*"]
    assert Cors(settings.origins).origin_allowed("chrome-extension://abc")
    monkeypatch.setenv("VRAMGATE_ORIGINS", '["http://a.example"]')  # VRAMGATE_* wins
    assert load_settings().origins == ["http://a.example"]
    monkeypatch.delenv("VRAMGATE_ORIGINS")
    monkeypatch.delenv("OLLAMA_ORIGINS")
    assert load_settings().origins == []
