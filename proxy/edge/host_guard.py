"""Ollama's Host allow-list (its DNS-rebinding defence), applied to what the client sent.

vramgate rewrites ``Host`` to the upstream's before forwarding, so Ollama's own check only ever
sees its own address. This module repeats that check on the client's request, exactly as Ollama's
``allowedHostsMiddleware`` does it (server/routes.go, with ``allowedHost`` and ``isLocalIP``):

1. It only applies when the server listens on a loopback address (an address that does not parse
   as ip:port also gets the check; Go never hands it one for TCP).
2. The host is ``net.SplitHostPort(req.Host)``'s host, or the whole of ``req.Host`` when that fails
   (so ``[::1]`` without a port stays bracketed, does not parse as an IP and is refused).
3. An IP literal that is loopback, RFC 1918/4193 private, unspecified, or one of this machine's
   interface addresses passes (even for OPTIONS: the request goes on to the router).
4. Otherwise, case-insensitively: empty, ``localhost``, this machine's hostname, or a name ending
   in ``.localhost``, ``.local`` or ``.internal`` passes; for OPTIONS Ollama answers 204 at once.
5. Everything else: 403 with an empty body.

``req.Host`` is Go's: the host of an absolute-form request target wins over the Host header
(``effective_host``). Go's net/http also refuses some Host headers with 400 before Ollama runs
(``host_header_error``).

The pure decision is separated from ``LocalNames.gather`` (the only I/O): Ollama reads
``os.Hostname()`` and ``net.Interfaces()`` on every request; vramgate reads them once at start-up.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
HostVerdict = Literal["next", "no_content", "forbidden"]

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")  # allowedHost's tlds
# httpguts.ValidHostHeader: bytes allowed anywhere in a Host header.
_VALID_HOST_CHARS = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!$%&()*+,-.:;=['~]_"
)


# --- Go's parsers, as far as the check depends on them ----------------------------------------
def split_host(hostport: str) -> str:
    """The host ``net.SplitHostPort`` returns, or ``hostport`` unchanged where it errs (as Ollama).

    SplitHostPort needs a port separator: ``host:port``, ``[v6]:port`` (the port may be empty).
    ``localhost``, ``[::1]`` (no port) and ``::1`` (too many colons) are errors.
    """
    i = hostport.rfind(":")
    if i < 0:
        return hostport  # missing port
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or end + 1 != i:  # no ']', ']' at the end (missing port), or junk after ']'
            return hostport
        host = hostport[1:end]
        if "[" in hostport[1:] or "]" in hostport[end + 1:]:
            return hostport
        return host
    host = hostport[:i]
    if ":" in host or "[" in host or "]" in host:
        return hostport  # too many colons / unexpected bracket
    if "[" in hostport[i + 1:] or "]" in hostport[i + 1:]:
        return hostport
    return host


def parse_ip(text: str) -> tuple[IPAddress, str] | None:
    """``netip.ParseAddr``: an IP and its IPv6 zone (``""`` if none), or None if not an IP literal."""
    if "%" in text:  # a zone is only valid on IPv6, and must not be empty
        addr, zone = text.split("%", 1)
        if not zone or ":" not in addr:
            return None
        try:
            return ipaddress.IPv6Address(addr), zone
        except ValueError:
            return None
    try:
        return (ipaddress.IPv4Address(text) if ":" not in text else ipaddress.IPv6Address(text)), ""
    except ValueError:
        return None


def _unmap(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback(ip: IPAddress) -> bool:
    """netip ``IsLoopback``: 127/8 or ::1, IPv4-mapped addresses unmapped first."""
    ip = _unmap(ip)
    if isinstance(ip, ipaddress.IPv4Address):
        return ip.packed[0] == 127
    return int(ip) == 1


def is_private(ip: IPAddress) -> bool:
    """netip ``IsPrivate``: only 10/8, 172.16/12, 192.168/16, fc00::/7 (Python's is_private is wider)."""
    ip = _unmap(ip)
    b = ip.packed
    if isinstance(ip, ipaddress.IPv4Address):
        return b[0] == 10 or (b[0] == 172 and b[1] & 0xF0 == 16) or (b[0] == 192 and b[1] == 168)
    return b[0] & 0xFE == 0xFC


def is_unspecified(ip: IPAddress, zone: str = "") -> bool:
    """netip ``IsUnspecified``: exactly 0.0.0.0 or :: (no unmapping; a zone makes it another address)."""
    return int(ip) == 0 and not zone


def effective_host(target: str | bytes, host_header: str | bytes | None, method: str = "GET") -> str:
    """The ``req.Host`` Go's ``readRequest`` sets: an absolute-form target's host wins over Host.

    ``http://evil.example/api/tags`` -> ``evil.example`` whatever Host says; CONNECT's authority
    form (``host:port``) likewise; origin-form (``/path``), ``*`` and ``//x`` use the Host header.
    Go takes the URL's host after the last ``@`` of the authority, un-lowercased; it percent-decodes
    it and 400s a malformed URL, which this does not (neither changes the allow-list's answer).
    """
    raw = target.decode("latin-1") if isinstance(target, bytes) else target
    header = host_header.decode("latin-1") if isinstance(host_header, bytes) else (host_header or "")
    header = header.strip(" \t")
    if method == "CONNECT" and not raw.startswith("/"):
        raw = "http://" + raw
    host = _url_host(raw)
    return host if host else header


def _url_host(raw: str) -> str:
    """url.ParseRequestURI's Host: only a scheme followed by ``//authority`` has one."""
    if raw == "*" or not raw or not raw[0].isascii() or not raw[0].isalpha():
        return ""
    for i, ch in enumerate(raw):
        if ch == ":":
            rest = raw[i + 1:]
            break
        if not (ch.isascii() and (ch.isalnum() or ch in "+-.")):
            return ""  # no scheme: a path, which must start with '/'
    else:
        return ""
    rest = rest.split("?", 1)[0]
    if not rest.startswith("//"):
        return ""
    authority = rest[2:].split("/", 1)[0]
    return authority.rsplit("@", 1)[-1]


def host_header_error(host_values: Collection[str | bytes], *, http_version: str = "1.1",
                      method: str = "GET") -> tuple[int, str, bytes] | None:
    """The 400 Go's net/http sends before any handler runs, as (status, reason, body), else None.

    Too many Host headers -> "400 Bad Request" (readRequest); HTTP/1.1 without Host (not CONNECT) ->
    "missing required Host header"; bytes outside httpguts' set -> "malformed Host header". Go
    writes these raw with ``Content-Type: text/plain; charset=utf-8`` and ``Connection: close``;
    for the last two the text also follows the reason phrase on the status line.
    """
    values = [v.decode("latin-1") if isinstance(v, bytes) else v for v in host_values]
    if len(values) > 1:
        return 400, "Bad Request", b"400 Bad Request"
    if not values and http_version != "1.0" and method != "CONNECT":
        text = "missing required Host header"
        return 400, f"Bad Request: {text}", f"400 Bad Request: {text}".encode()
    if values and not set(values[0].strip(" \t")) <= _VALID_HOST_CHARS:
        text = "malformed Host header"
        return 400, f"Bad Request: {text}", f"400 Bad Request: {text}".encode()
    return None


# --- the check -----------------------------------------------------------------------------
def host_check_applies(listen_addr: str) -> bool:
    """Whether Ollama would check Host on this listener: only when its ip parses and is loopback.

    Pass the address actually bound (``sock.getsockname()[0]``), as Go does with ``ln.Addr()``; a
    name such as ``localhost`` does not parse, so it is checked, which is right only for loopback;
    ``""`` (every address) is not.
    """
    text = listen_addr.strip().strip("[]")
    if text == "":
        return False  # bound to every address: Go's ln.Addr() says [::], not loopback
    parsed = parse_ip(text)
    return parsed is None or is_loopback(parsed[0])


def _name_allowed(host: str, hostname: str) -> bool:
    """allowedHost: empty, localhost, this machine's hostname, or a local-only suffix."""
    host = host.lower()
    if host in ("", "localhost") or (hostname and host == hostname.lower()):
        return True
    return host.endswith(_LOCAL_SUFFIXES)


def _ip_allowed(host: str, local_ips: frozenset[IPAddress]) -> bool:
    parsed = parse_ip(host)
    if parsed is None:
        return False
    ip, zone = parsed
    if is_loopback(ip) or is_private(ip) or is_unspecified(ip, zone):
        return True
    # isLocalIP compares strings: a zone, or a ::ffff:-mapped form, never equals an interface's.
    mapped = isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None
    return not zone and not mapped and ip in local_ips


def host_verdict(method: str, req_host: str, *, listen_host: str, hostname: str,
                 local_ips: Collection[str | IPAddress]) -> HostVerdict:
    """allowedHostsMiddleware's outcome: "next" (go on), "no_content" (204 now) or "forbidden" (403)."""
    if not host_check_applies(listen_host):
        return "next"
    return _verdict(method, req_host, hostname, _as_ips(local_ips))


def _verdict(method: str, req_host: str, hostname: str, local_ips: frozenset[IPAddress]) -> HostVerdict:
    host = split_host(req_host)
    if _ip_allowed(host, local_ips):
        return "next"
    if _name_allowed(host, hostname):
        return "no_content" if method == "OPTIONS" else "next"
    return "forbidden"


def host_allowed(host_header: str, *, listen_host: str, hostname: str,
                 local_ips: Collection[str | IPAddress]) -> bool:
    """Whether Ollama lets a request with this ``req.Host`` through (True also for its OPTIONS 204)."""
    verdict = host_verdict("GET", host_header, listen_host=listen_host, hostname=hostname,
                           local_ips=local_ips)
    return verdict != "forbidden"


def _as_ips(values: Iterable[str | IPAddress]) -> frozenset[IPAddress]:
    """Interface addresses as isLocalIP compares them (zoned ones never match; mapped ones as IPv4)."""
    out: set[IPAddress] = set()
    for value in values:
        if isinstance(value, str):
            parsed = parse_ip(value)
            if parsed is None or parsed[1]:
                continue
            value = parsed[0]
        out.add(_unmap(value))  # net.IP.String prints a mapped interface address as IPv4
    return frozenset(out)


# --- what the machine is called (the only I/O) -----------------------------------------------
@dataclass(frozen=True)
class LocalNames:
    """This machine's hostname and interface addresses, read once (Ollama reads them per request)."""

    hostname: str
    ips: frozenset[IPAddress] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ips", _as_ips(self.ips))

    @classmethod
    def gather(cls) -> LocalNames:
        """Read them now: ``socket.gethostname()`` (what Go's os.Hostname gives) and the addresses.

        Linux: every local IPv4 address from /proc/net/fib_trie (``/32 host LOCAL``) and every IPv6
        one from /proc/net/if_inet6, which is what net.Interfaces()/Addrs() list via netlink, except
        addresses of interfaces that are down (no local route). Elsewhere only what the hostname
        resolves to (getaddrinfo) plus the source address of the default route: fewer than Go sees.
        Addresses added after start-up are missed; call again to refresh.
        """
        try:
            hostname = socket.gethostname()
        except OSError:
            hostname = ""
        ips: set[IPAddress] = set()
        if sys.platform.startswith("linux"):
            ips |= _proc_ipv4()
            ips |= _proc_ipv6()
        if not ips:
            ips |= _resolved(hostname)
        return cls(hostname=hostname, ips=frozenset(ips))


def _read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return []


def _proc_ipv4(path: str = "/proc/net/fib_trie") -> set[IPAddress]:
    return parse_fib_trie(_read_lines(path))


def parse_fib_trie(lines: Iterable[str]) -> set[IPAddress]:
    """Local IPv4 addresses in /proc/net/fib_trie: a ``|-- a.b.c.d`` leaf then ``/32 host LOCAL``."""
    out: set[IPAddress] = set()
    last: str | None = None
    for line in lines:
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif text == "/32 host LOCAL" and last is not None:
            try:
                out.add(ipaddress.IPv4Address(last))
            except ValueError:
                pass
    return out


def _proc_ipv6(path: str = "/proc/net/if_inet6") -> set[IPAddress]:
    out: set[IPAddress] = set()
    for line in _read_lines(path):
        parts = line.split()
        if parts and len(parts[0]) == 32:
            try:
                out.add(ipaddress.IPv6Address(int(parts[0], 16)))
            except ValueError:
                pass
    return out


def _resolved(hostname: str) -> set[IPAddress]:
    out: set[IPAddress] = set()
    try:
        infos = socket.getaddrinfo(hostname, None) if hostname else []
    except OSError:
        infos = []
    for info in infos:
        parsed = parse_ip(str(info[4][0]))
        if parsed is not None and not parsed[1]:
            out.add(parsed[0])
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:  # UDP connect sends nothing; it only picks the route's source address
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.connect((probe, 9))
                parsed = parse_ip(sock.getsockname()[0])
        except OSError:
            continue
        if parsed is not None and not parsed[1]:
            out.add(parsed[0])
    return out


@dataclass(frozen=True)
class HostGuard:
    """The check for one listener, built at start-up: ``listen_host`` is the bound IP."""

    listen_host: str
    names: LocalNames
    applies: bool = field(init=False)
    _seen: dict[tuple[bool, str], HostVerdict] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "applies", host_check_applies(self.listen_host))
        object.__setattr__(self, "_seen", {})

    def verdict(self, method: str, req_host: str) -> HostVerdict:
        """allowedHostsMiddleware's outcome for ``req_host`` (see ``effective_host``).

        Clients send the same few Host values again and again: the answers are kept (bounded)."""
        if not self.applies:
            return "next"
        key = (method == "OPTIONS", req_host)
        cached = self._seen.get(key)
        if cached is None:
            if len(self._seen) >= 1024:
                self._seen.clear()
            cached = self._seen[key] = _verdict(method, req_host, self.names.hostname, self.names.ips)
        return cached
