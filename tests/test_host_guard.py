"""The Host allow-list, with expectations taken from Ollama's server/routes.go and Go's parsers."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from proxy.edge.host_guard import (
    HostGuard,
    LocalNames,
    effective_host,
    host_allowed,
    host_check_applies,
    host_header_error,
    host_verdict,
    parse_fib_trie,
    parse_ip,
    split_host,
)

NAMES = LocalNames(hostname="MyBox", ips=frozenset({ipaddress.ip_address("203.0.113.7"),
                                                     ipaddress.ip_address("2001:db8::7")}))
LOOPBACK = HostGuard("127.0.0.1", NAMES)


@pytest.mark.parametrize(("host", "listen", "verdict"), [
    # Off loopback the middleware returns before looking at Host (!addr.IsLoopback() -> c.Next()).
    ("attacker.example", "0.0.0.0", "next"),
    ("attacker.example", "::", "next"),
    ("attacker.example", "", "next"),  # bound to every address: Go's ln.Addr() is [::]
    ("attacker.example", "192.168.1.10", "next"),
    # On loopback the check applies (127/8, ::1, ::ffff:127.x unmapped by netip).
    ("attacker.example", "127.0.0.1", "forbidden"),
    ("attacker.example:11434", "127.0.0.2", "forbidden"),
    ("attacker.example", "::1", "forbidden"),
    ("attacker.example", "[::1]", "forbidden"),
    ("attacker.example", "::ffff:127.0.0.1", "forbidden"),
    # A listen address that does not parse as an IP: ParseAddrPort errs, so the check runs.
    ("attacker.example", "localhost", "forbidden"),
])
def test_check_only_on_loopback(host: str, listen: str, verdict: str) -> None:
    assert host_verdict("GET", host, listen_host=listen, hostname="mybox", local_ips=()) == verdict


@pytest.mark.parametrize(("host", "get", "options"), [
    # IP literals that are loopback / private / unspecified / local -> c.Next() for every method.
    ("127.0.0.1", "next", "next"),
    ("127.0.0.1:11434", "next", "next"),
    ("127.8.9.1:80", "next", "next"),
    ("[::1]:11434", "next", "next"),
    ("::1", "next", "next"),  # SplitHostPort errs (too many colons): the whole value parses as ::1
    ("10.0.0.5", "next", "next"),
    ("172.16.0.1:1", "next", "next"),
    ("172.31.255.255", "next", "next"),
    ("192.168.1.2", "next", "next"),
    ("[fd12::1]:11434", "next", "next"),  # fc00::/7
    ("0.0.0.0", "next", "next"),
    ("0.0.0.0:11434", "next", "next"),
    ("[::]:11434", "next", "next"),
    ("[::ffff:10.1.2.3]:1", "next", "next"),  # IsPrivate unmaps
    ("[::ffff:127.0.0.1]:1", "next", "next"),  # IsLoopback unmaps
    ("[::1%25lo]:1", "next", "next"),  # a zone does not change IsLoopback
    ("203.0.113.7:11434", "next", "next"),  # this machine's interface address (isLocalIP)
    ("[2001:db8::7]:11434", "next", "next"),
    # IP literals that are none of those: allowedHost(ip) is false -> 403.
    ("172.32.0.1", "forbidden", "forbidden"),  # outside 172.16/12 (Python's is_private is wider)
    ("100.64.0.1", "forbidden", "forbidden"),  # CGNAT is not IsPrivate
    ("169.254.1.1", "forbidden", "forbidden"),  # link-local is not IsPrivate
    ("8.8.8.8:11434", "forbidden", "forbidden"),
    ("[::ffff:0.0.0.0]:1", "forbidden", "forbidden"),  # IsUnspecified does not unmap
    ("[::ffff:203.0.113.7]:1", "forbidden", "forbidden"),  # isLocalIP compares strings
    ("[2001:db8::7%25eth0]:1", "forbidden", "forbidden"),  # ...and the zone is part of the string
    # "[::1]" without a port: SplitHostPort errs (missing port), "[::1]" is not an IP nor allowed.
    ("[::1]", "forbidden", "forbidden"),
    # Names: allowedHost -> c.Next(), but OPTIONS is answered 204 at once.
    ("", "next", "no_content"),
    ("localhost", "next", "no_content"),
    ("localhost:11434", "next", "no_content"),
    ("LOCALHOST:11434", "next", "no_content"),  # strings.ToLower
    ("localhost:", "next", "no_content"),  # an empty port is fine for SplitHostPort
    (":11434", "next", "no_content"),  # empty host
    ("foo.localhost", "next", "no_content"),
    ("myhost.local:11434", "next", "no_content"),
    ("x.internal", "next", "no_content"),
    ("Deep.Name.INTERNAL", "next", "no_content"),
    (".local", "next", "no_content"),
    ("mybox", "next", "no_content"),  # os.Hostname(), case-insensitively
    ("MYBOX:11434", "next", "no_content"),
    ("example.com", "forbidden", "forbidden"),
    ("attacker.example:11434", "forbidden", "forbidden"),
    ("localhost.", "forbidden", "forbidden"),  # a trailing dot is neither equal nor a suffix
    ("local", "forbidden", "forbidden"),
    ("evil-local", "forbidden", "forbidden"),
    ("mybox.example", "forbidden", "forbidden"),
    ("foo.local:1:2", "forbidden", "forbidden"),  # SplitHostPort errs; the raw value has no suffix
    ("[foo.local]:1", "next", "no_content"),  # brackets are stripped by SplitHostPort
])
def test_host_rules(host: str, get: str, options: str) -> None:
    assert LOOPBACK.verdict("GET", host) == get
    assert LOOPBACK.verdict("POST", host) == get
    assert LOOPBACK.verdict("OPTIONS", host) == options
    assert host_allowed(host, listen_host="127.0.0.1", hostname="MyBox",
                        local_ips=["203.0.113.7", "2001:db8::7"]) is (get != "forbidden")


def test_guard_off_loopback_is_inert() -> None:
    guard = HostGuard("0.0.0.0", NAMES)
    assert not guard.applies
    assert guard.verdict("OPTIONS", "localhost") == "next"  # no 204 either: the middleware is skipped
    assert guard.verdict("GET", "attacker.example") == "next"


@pytest.mark.parametrize(("listen", "applies"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.1", False), ("fe80::1", False),
    ("localhost", True),  # not an IP: Go's parse fails and the check runs
])
def test_host_check_applies(listen: str, applies: bool) -> None:
    assert host_check_applies(listen) is applies


@pytest.mark.parametrize(("hostport", "host"), [
    ("localhost:11434", "localhost"),
    ("localhost", "localhost"),
    ("[::1]:11434", "::1"),
    ("[::1]", "[::1]"),
    ("::1", "::1"),
    ("[::1]x:1", "[::1]x:1"),
    ("[::1]:1:2", "[::1]:1:2"),
    ("a[b:1", "a[b:1"),
    ("a:1]", "a:1]"),
    ("", ""),
    (":80", ""),
])
def test_split_host_like_go(hostport: str, host: str) -> None:
    assert split_host(hostport) == host


def test_parse_ip_like_netip() -> None:
    assert parse_ip("1.2.3.4") == (ipaddress.ip_address("1.2.3.4"), "")
    assert parse_ip("fe80::1%eth0") == (ipaddress.ip_address("fe80::1"), "eth0")
    assert parse_ip("fe80::1%") is None  # empty zone
    assert parse_ip("1.2.3.4%eth0") is None  # zone on IPv4
    assert parse_ip("01.2.3.4") is None  # leading zero
    assert parse_ip("localhost") is None
    assert parse_ip("[::1]") is None


@pytest.mark.parametrize(("target", "host_header", "method", "host"), [
    # readRequest: req.Host = req.URL.Host; if empty, the Host header.
    ("/api/tags", "localhost:11434", "GET", "localhost:11434"),
    ("http://attacker.example/api/tags", "localhost:11434", "GET", "attacker.example"),
    ("http://localhost:11434/api/tags", "attacker.example", "GET", "localhost:11434"),
    ("HTTP://User:pw@Evil.Example:8/x?y=1", "localhost", "GET", "Evil.Example:8"),
    ("http://[::1]:11434/", "attacker.example", "GET", "[::1]:11434"),
    ("http://evil?x=/", "localhost", "GET", "evil"),
    ("foo+bar://evil/x", "localhost", "GET", "evil"),  # any scheme
    ("http:/api/tags", "localhost", "GET", "localhost"),  # no authority
    ("http:///api/tags", "localhost", "GET", "localhost"),  # empty authority: the header
    ("//evil/api/tags", "localhost", "GET", "localhost"),  # a path, not an authority
    ("*", "localhost", "OPTIONS", "localhost"),
    ("evil.example:443", "localhost", "CONNECT", "evil.example:443"),  # authority-form
    ("/api/tags", None, "GET", ""),
    (b"http://attacker.example/", b"localhost", "GET", "attacker.example"),
    ("/", " localhost:1 ", "GET", "localhost:1"),  # textproto trims values
])
def test_effective_host(target: str | bytes, host_header: str | bytes | None, method: str,
                        host: str) -> None:
    assert effective_host(target, host_header, method) == host


def test_absolute_form_cannot_smuggle_a_foreign_host() -> None:
    host = effective_host("http://attacker.example/api/tags", "localhost:11434")
    assert LOOPBACK.verdict("GET", host) == "forbidden"


@pytest.mark.parametrize(("values", "version", "method", "expected"), [
    (["localhost"], "1.1", "GET", None),
    ([""], "1.1", "GET", None),  # present but empty is allowed
    ([], "1.0", "GET", None),
    ([], "1.1", "CONNECT", None),
    (["a", "b"], "1.1", "GET", (400, "Bad Request", b"400 Bad Request")),
    ([], "1.1", "GET", (400, "Bad Request: missing required Host header",
                        b"400 Bad Request: missing required Host header")),
    (["evil.example/x"], "1.1", "GET", (400, "Bad Request: malformed Host header",
                                        b"400 Bad Request: malformed Host header")),
    (["a b"], "1.1", "GET", (400, "Bad Request: malformed Host header",
                             b"400 Bad Request: malformed Host header")),
    (["[fe80::1%25eth0]:1"], "1.1", "GET", None),
])
def test_host_header_error(values: list[str], version: str, method: str,
                           expected: tuple[int, str, bytes] | None) -> None:
    assert host_header_error(values, http_version=version, method=method) == expected


def test_parse_fib_trie() -> None:
    sample = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
""".splitlines()
    assert parse_fib_trie(sample) == {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.2")}


def test_gather_reads_this_machine() -> None:
    names = LocalNames.gather()
    assert names.hostname == socket.gethostname()
    guard = HostGuard("127.0.0.1", names)
    assert guard.verdict("GET", names.hostname) == "next"
    assert guard.verdict("GET", f"{names.hostname.upper()}:11434") == "next"
    for ip in names.ips:
        literal = f"[{ip}]:1" if ip.version == 6 else f"{ip}:1"
        assert guard.verdict("GET", literal) == "next", literal


def test_local_names_normalises_mapped_addresses() -> None:
    names = LocalNames("h", frozenset({ipaddress.ip_address("::ffff:203.0.113.9")}))
    assert ipaddress.ip_address("203.0.113.9") in names.ips
    assert HostGuard("127.0.0.1", names).verdict("GET", "203.0.113.9") == "next"
