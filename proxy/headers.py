"""Which headers a proxy must not pass on (RFC 9110 §7.6.1), applied to raw header lists.

Works on aiohttp's ``raw_headers`` (bytes pairs) so a request costs one pass over its headers and
one ``b"".join`` for the upstream request head.
"""

from __future__ import annotations

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


def _connection_tokens(raw: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names listed in Connection (they are hop-by-hop too)."""
    tokens: set[bytes] = set()
    for name, value in raw:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return frozenset(tokens)


def request_header_lines(raw: tuple[tuple[bytes, bytes], ...], *, body_replaced: bool = False) -> list[bytes]:
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


def response_headers(raw: list[tuple[bytes, bytes]]) -> tuple[CIMultiDict[str], bytes]:
    """End-to-end response headers for the client, and the Content-Type (lower-case bytes, b"" if none)."""
    kept = []
    content_type = b""
    named = False
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            named = named or lower == b"connection"
            continue
        if lower == _CONTENT_TYPE:
            content_type = value.lower()
        kept.append((name.decode("latin-1"), value.decode("latin-1")))
    if named:
        extra = _connection_tokens(raw)
        kept = [(k, v) for k, v in kept if k.lower().encode("latin-1") not in extra]
    return CIMultiDict(kept), content_type
