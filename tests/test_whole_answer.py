"""Which upstream reads the parser-free path takes apart, and which it leaves to httptools."""

from __future__ import annotations

import pytest

from proxy.whole_answer import split_whole_answer

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 20\r\nDate: x\r\n\r\n"
BODY = b'{"version":"0.33.0"}'


def test_a_complete_small_answer_is_split_with_raw_lines() -> None:
    whole = split_whole_answer(HEAD + BODY)
    assert whole is not None
    assert (whole.status, whole.reason, whole.body) == (200, b"OK", BODY)
    assert whole.lines == b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 20\r\nDate: x\r\n"
    assert not whole.streamed


def test_status_without_reason_and_error_statuses() -> None:
    whole = split_whole_answer(b"HTTP/1.1 404\r\nContent-Length: 2\r\n\r\n{}")
    assert whole is not None and (whole.status, whole.reason, whole.streamed) == (404, b"", False)
    ndjson = split_whole_answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nContent-Length: 3\r\n\r\n{}\n")
    assert ndjson is not None and ndjson.streamed


@pytest.mark.parametrize("data", [
    HEAD + BODY[:-1],  # body not all here yet
    HEAD + BODY + b"HTTP/1.1",  # more than one message
    HEAD,  # head only
    HEAD[:30],  # head split across reads
    HEAD.replace(b"HTTP/1.1", b"HTTP/1.0") + BODY,
    HEAD.replace(b"Date: x", b"Connection: close") + BODY,
    HEAD.replace(b"Date: x", b"Keep-Alive: timeout=5") + BODY,
    HEAD.replace(b"Date: x", b"transfer-encoding: chunked") + BODY,
    HEAD.replace(b"Date: x", b"Content-Length: 20") + BODY,  # two lengths
    HEAD.replace(b"Content-Length: 20", b"Content-Length: +20") + BODY,
    HEAD.replace(b"Content-Length: 20", b"X-Length: 20") + BODY,  # no length: delimited otherwise
    HEAD.replace(b"Date: x\r\n", b"Date: x\nConnection: close\r\n") + BODY,  # hidden behind a bare LF
    HEAD.replace(b"Date:", b"Connection :") + BODY,
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
])
def test_anything_unusual_goes_to_the_parser(data: bytes) -> None:
    assert split_whole_answer(data) is None
