"""The request target as Ollama's router will see it, decided before anything is judged.

Go's ``net/http`` reduces an absolute-form target (``POST http://host/api/generate``) to its path
and takes the host from it; gin then routes on the percent-decoded path. A gate that compares the
raw target by string can be walked around with ``http://127.0.0.1/api/generate``,
``/api/%67enerate``, ``//api/generate`` or ``/v1/../api/chat``. So every target is parsed here
once: absolute-form is reduced to its path (its host is returned, to be checked like a Host
header), and a target that is not canonical (percent-escapes, dot segments, doubled slashes, a
``#``) is refused when it could reach Ollama's API at all (``/api``, ``/v1``), so vramgate never
has to guess how Ollama would route it. Other odd targets (``/favicon.ico?x=%20``) pass unchanged.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote

# Ollama serves its API under these prefixes; nothing outside them can load a model.
API_PREFIXES = ("/api", "/v1")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)(.*)$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Target:
    path: str  # what the router matches on (no query)
    query: str  # with its leading "?", or ""
    host: str | None  # the authority of an absolute-form target (Go uses it instead of Host)

    @property
    def origin_form(self) -> str:
        """What is sent upstream: always origin-form."""
        return self.path + self.query


@dataclass(frozen=True, slots=True)
class BadTarget:
    message: str


def parse_target(raw: str) -> Target | BadTarget:
    """``raw`` is the request target exactly as received on the request line."""
    host: str | None = None
    if not raw.startswith("/"):
        match = _ABSOLUTE.match(raw)
        if match is None:
            return BadTarget(f"unsupported request target {_shorten(raw)!r}: send a path such as /api/tags")
        host, raw = match.group(1), match.group(2) or "/"
        if not raw.startswith("/"):  # "http://host?x": an empty path with a query
            raw = "/" + raw
    path, sep, query = raw.partition("?")
    query = sep + query
    if not _canonical(path) and _reaches_api(path):
        return BadTarget(f"vramgate only forwards canonical API paths; {_shorten(path)!r} has percent-escapes, "
                         "dot segments, doubled slashes or a '#': send the plain path")
    return Target(path, query, host)


def _canonical(path: str) -> bool:
    if "%" in path or "#" in path or "//" in path:
        return False
    segments = path.split("/")
    return "." not in segments and ".." not in segments


def _reaches_api(path: str) -> bool:
    """Could some reading of ``path`` (decoded, dot segments resolved, slashes merged) be an API route?"""
    for candidate in (path, unquote(path), unquote(unquote(path))):
        flat = posixpath.normpath("/" + candidate.split("#", 1)[0]).lstrip("/")
        flat = "/" + re.sub(r"/+", "/", flat)
        if any(flat == p or flat.startswith(p + "/") for p in API_PREFIXES):
            return True
        if any(candidate.lstrip("/").startswith(p.lstrip("/")) for p in API_PREFIXES):
            return True
    return False


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
