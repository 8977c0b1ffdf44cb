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

import re

from proxy.headers import HOP_BY_HOP

# searched in the lower-cased head; "\n" (not "\r\n") so that bare-LF line ends are caught too
_HOP_HEADER = re.compile(rb"\n(?:" + b"|".join(re.escape(name) for name in sorted(HOP_BY_HOP)) + rb")[ \t]*:")
_LENGTH = re.compile(rb"\ncontent-length[ \t]*:[ \t]*([^\r\n]*)")
_STREAMED_TYPE = re.compile(rb"\ncontent-type[ \t]*:[ \t]*(?:application/x-ndjson|text/event-stream)")


class WholeAnswer:
    __slots__ = ("body", "lines", "reason", "status", "streamed")

    def __init__(self, status: int, reason: bytes, lines: bytes, streamed: bool, body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.lines = lines  # the header lines as received, each ending in CRLF (none hop-by-hop)
        self.streamed = streamed  # a streaming Content-Type (NDJSON, SSE), though complete here
        self.body = body


def split_whole_answer(data: bytes) -> WholeAnswer | None:
    """``data`` as one complete HTTP/1.1 Content-Length response with a body, or None."""
    if not data.startswith(b"HTTP/1.1 "):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lower = data[:end + 2].lower()  # status line and header lines, each with its line end
    if _HOP_HEADER.search(lower) is not None:
        return None
    lengths = _LENGTH.findall(lower)
    if len(lengths) != 1 or not lengths[0].isdigit() or len(data) != end + 4 + int(lengths[0]):
        return None
    code = data[9:12]
    if not code.isdigit() or data[12:13] not in (b" ", b"\r"):
        return None
    status = int(code)
    if status < 200 or status in (204, 304):
        return None
    first = data.index(b"\r\n")
    return WholeAnswer(status, data[13:first], data[first + 2:end + 2], _STREAMED_TYPE.search(lower) is not None,
                       data[end + 4:])
