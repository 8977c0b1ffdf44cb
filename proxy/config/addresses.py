"""Parse an upstream address the way Ollama parses OLLAMA_HOST, so the same value works in both.

Forms: ``host``, ``host:port``, ``:port``, ``scheme://host[:port][/path]``. Without a scheme the
scheme is http and the port 11434; ``http://host`` means port 80 and ``https://host`` port 443,
exactly as Ollama's ``envconfig.Host`` does. Unlike Ollama, a bad port is an error, not a warning:
a proxy pointed at the wrong place should not start.
"""

from __future__ import annotations

import ipaddress

DEFAULT_PORT = 11434


def parse_ollama_host(value: str) -> str:
    """Return a normalized base URL such as ``http://127.0.0.1:11434`` (plus a path when given)."""
    text = value.strip()
    default_port = DEFAULT_PORT
    if "://" in text:
        scheme, hostport = text.split("://", 1)
        scheme = scheme.lower()
        if scheme == "http":
            default_port = 80
        elif scheme == "https":
            default_port = 443
        else:
            raise ValueError(f"unsupported scheme {scheme!r} in {value!r} (use http or https)")
    else:
        scheme, hostport = "http", text
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport, default_port, value)
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    base = f"{scheme}://{host}:{port}"
    return f"{base}/{path.rstrip('/')}" if path.strip("/") else base


def _split_host_port(hostport: str, default_port: int, original: str) -> tuple[str, int]:
    if hostport.startswith("["):  # [v6]:port or [v6]
        inner, _, rest = hostport[1:].partition("]")
        host = inner
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError(f"cannot parse host in {original!r}")
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
    elif hostport.count(":") > 1:  # bare IPv6 literal without brackets
        host, port_text = hostport, ""
    else:
        host, port_text = hostport, ""
    if host:
        try:
            host = str(ipaddress.ip_address(host))
        except ValueError:
            pass
    else:
        host = "127.0.0.1"
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {original!r}")
    return host, int(port_text)


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` or ``:port`` for the proxy's own socket; port 0 picks a free one (tests)."""
    text = value.strip()
    if text.startswith("["):
        inner, _, rest = text[1:].partition("]")
        host, port_text = inner, rest.lstrip(":")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected host:port, got {value!r}")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"invalid port {port_text!r} in {value!r}")
    return host or "0.0.0.0", int(port_text)
