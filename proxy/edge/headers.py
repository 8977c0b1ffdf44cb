"""Which headers a proxy must not pass on (RFC 9110 §7.6.1), applied to aiohttp's raw header lists.

Works on ``raw_headers`` ((name, value) byte pairs, as received) so repeated headers keep their
order and every request costs one pass over its headers.
"""

from __future__ import annotations

from collections.abc import Sequence

from multidict import CIMultiDict

HOP_BY_HOP = frozenset({
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
})
# Replaced by the relay: Host (the upstream's: the client's was checked first, see proxy.host_guard),
# Origin (checked by vramgate against the Host the client sent, proxy.cors: Ollama would check it
# again against the rewritten Host), Expect (vramgate answers 100-continue when it reads the body).
_REQUEST_DROP = HOP_BY_HOP | {"host", "origin", "expect"}
_BODY_DROP = _REQUEST_DROP | {"content-length"}
_RESPONSE_DROP = HOP_BY_HOP | {"content-length"}  # aiohttp frames the answer itself

RawHeaders = Sequence[tuple[bytes, bytes]]


def _decoded(raw: RawHeaders, drop: frozenset[str]) -> CIMultiDict[str]:
    kept: CIMultiDict[str] = CIMultiDict()
    named: set[str] = set()
    for name_b, value_b in raw:
        name = name_b.decode("latin-1")
        lower = name.lower()
        if lower == "connection":
            named.update(t.strip().lower() for t in value_b.decode("latin-1").split(",") if t.strip())
        if lower not in drop:
            kept.add(name, value_b.decode("latin-1"))
    for extra in named - {"close", "keep-alive"}:  # headers named in Connection are hop-by-hop too
        kept.popall(extra, None)
    return kept


def request_headers(raw: RawHeaders, *, body_replaced: bool = False, drop_token: bool = False) -> CIMultiDict[str]:
    """The client's end-to-end headers, to send upstream (without Content-Length when the body changes,
    without Authorization when it carried vramgate's own token: Ollama has no use for it)."""
    drop = _BODY_DROP if body_replaced else _REQUEST_DROP
    return _decoded(raw, drop | {"authorization"} if drop_token else drop)


def response_headers(raw: RawHeaders) -> CIMultiDict[str]:
    """The upstream's end-to-end headers, for the client. Framing is aiohttp's (length or chunks)."""
    return _decoded(raw, _RESPONSE_DROP)
