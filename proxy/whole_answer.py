"""A small upstream answer that arrived whole in one read, taken apart without the parser.

Most calls through vramgate are small JSON answers (``/api/version``, ``/api/tags``, ``/api/ps``,
``/api/show``) that Ollama writes as one ``Content-Length`` response: the head and the body come
in one read. For those, a handful of C-speed byte searches find what the relay needs (status,
Content-Type, that no hop-by-hop header is present) and the header lines pass on as raw bytes,
unchanged; a dozen parser callbacks and the header list they build would cost more than the rest
of the request. Anything else (chunked, split across reads, hop-by-hop headers, odd framing)
returns None and goes through httptools as usual.
"""

from __future__ import annotations

from proxy.headers import HOP_BY_HOP

_HOP_MARKS = tuple(b"\r\n" + name + b":" for name in sorted(HOP_BY_HOP))
_LENGTH_MARK = b"\r\ncontent-length:"
_TYPE_MARK = b"\r\ncontent-type:"


class WholeAnswer:
    __slots__ = ("body", "content_type", "lines", "reason", "status")

    def __init__(self, status: int, reason: bytes, lines: bytes, content_type: bytes, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.lines = lines  # the header lines as received, each ending in CRLF (none hop-by-hop)
        self.content_type = content_type  # lower-case, b"" if none
        self.body = body


def split_whole_answer(data: bytes) -> WholeAnswer | None:
    """``data`` as one complete HTTP/1.1 Content-Length response with a body, or None."""
    if not data.startswith(b"HTTP/1.1 "):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = data[:end + 2]  # status line and header lines, each with its CRLF
    if head.count(b"\n") != head.count(b"\r\n") or b" :" in head or b"\t:" in head:
        return None  # bare LF line ends or a space before a colon: leave such heads to the strict parser
    lower = head.lower()
    for mark in _HOP_MARKS:
        if mark in lower:
            return None
    at = lower.find(_LENGTH_MARK)
    if at < 0 or lower.find(_LENGTH_MARK, at + 1) >= 0:
        return None
    value = lower[at + len(_LENGTH_MARK):lower.index(b"\r\n", at + 2)].strip()
    if not value.isdigit() or len(data) != end + 4 + int(value):
        return None
    first = head.index(b"\r\n")
    parts = head[9:first].split(b" ", 1)
    code = parts[0]
    if len(code) != 3 or not code.isdigit():
        return None
    status = int(code)
    if status < 200 or status in (204, 304):
        return None
    content_type = b""
    at = lower.find(_TYPE_MARK)
    if at >= 0:
        content_type = lower[at + len(_TYPE_MARK):lower.index(b"\r\n", at + 2)].strip()
    return WholeAnswer(status, parts[1] if len(parts) == 2 else b"", head[first + 2:], content_type, data[end + 4:])
