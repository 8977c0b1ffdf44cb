"""Which headers a proxy must not pass on (RFC 9110 §7.6.1), applied to raw header lists.

Works on raw header lists as parsed ((name, value) bytes pairs, as received) so a request costs one
pass over its headers and one ``b"".join`` for each head written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from multidict import CIMultiDict

HOP_BY_HOP = frozenset({
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
})
# Replaced by the relay: Host (the upstream's), Expect (100-continue was answered to the client already).
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"expect"}
_BODY_DROP = _REQUEST_DROP | {b"content-length"}
_CONTENT_TYPE = b"content-type"


def _connection_tokens(raw: Sequence[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def request_header_lines(raw: Sequence[tuple[bytes, bytes]], *, body_replaced: bool = False) -> list[bytes]:
    """``b"Name: value\\r\\n"`` lines to send upstream; without Content-Length when the body is replaced."""
    drop = _BODY_DROP if body_replaced else _REQUEST_DROP
    lines = []
    named = False
    for name, value in raw:
        lower = name.lower()
        if lower in drop:
            named = named or lower == b"connection"
        else:
            lines.append(name + b": " + value + b"\r\n")
    if named:  # rare: headers named in Connection are hop-by-hop too
        extra = _connection_tokens(raw)
        lines = [line for line in lines if line.split(b":", 1)[0].lower() not in extra]
    return lines


def response_header_lines(raw: Sequence[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """End-to-end response header lines for the client (one byte string), and the Content-Type
    (lower-case, b"" if none). Framing (Content-Length) passes as the upstream sent it."""
    lines = []
    content_type = b""
    named = False
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            named = named or lower == b"connection"
            continue
        if lower == _CONTENT_TYPE:
            content_type = value.lower()
        lines.append(name + b": " + value + b"\r\n")
    if named:
        extra = _connection_tokens(raw)
        lines = [line for line in lines if line.split(b":", 1)[0].lower() not in extra]
    return b"".join(lines), content_type


def with_headers(lines: bytes, extra: Mapping[str, str]) -> bytes:
    """``lines`` with ``extra`` set (replacing any header of the same name)."""
    names = {name.lower().encode("latin-1") for name in extra}
    kept = [line for line in lines.split(b"\r\n") if line and line.split(b":", 1)[0].lower() not in names]
    added = [f"{name}: {value}".encode("latin-1") for name, value in extra.items()]
    return b"".join(line + b"\r\n" for line in kept + added)


def header_map(raw: Sequence[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """A case-insensitive view of raw headers, for the rare callers that look headers up by name."""
    return CIMultiDict((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)
