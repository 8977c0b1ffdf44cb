"""Which headers a proxy must not pass on (RFC 9110 §7.6.1) and the copies made per request."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

# Lower-case names; compared against ``name.lower()``.
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


def _named_in_connection(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(token.strip().lower() for value in values for token in value.split(",") if token.strip())


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop ones (also those the Connection header names) or ``drop``."""
    skip = HOP_BY_HOP | drop | _named_in_connection(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in skip:
            out.add(name, value)
    return out


# Headers of the client's request that the relay replaces itself.
REQUEST_DROP = frozenset({"host"})
