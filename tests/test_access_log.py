"""The access log's hand-written JSON lines are valid JSON with the fields structlog would give."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest

from proxy.config.log_setup import configure_logging
from proxy.edge.access_log import AccessLog


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    yield out
    configure_logging("json", "warning")


@pytest.mark.parametrize("path,client", [
    ("/api/generate", "127.0.0.1"),
    ('/api/"quoted"\\path', "::1"),
    ("/api/blobs/sha256:é✓", ""),
    ("/tab\there", "10.0.0.7"),
])
def test_lines_are_json_with_every_field(stream: io.StringIO, path: str, client: str) -> None:
    log = AccessLog()
    log.record("POST", path, 200, 1234, 0.0123456, client, 0.0004, "ok", "alice")
    log.record("GET", path, 502, 0, 2.5, client, None, "upstream_unreachable")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        "logger": "vramgate.access", "method": "POST", "path": path, "status": 200, "bytes": 1234,
        "duration_ms": 12.346, "upstream_ttfb_ms": 0.4, "client": client, "user": "alice", "outcome": "ok",
        "event": "access", "level": "info", "timestamp": first["timestamp"],
    }
    assert first["timestamp"].endswith("Z") and len(first["timestamp"]) == len("2026-11-24T21:56:18.731275Z")
    assert second["upstream_ttfb_ms"] is None and second["duration_ms"] == 2500.0
    assert second["user"] is None  # not identified (a request refused before identification)


def test_nothing_is_written_below_the_configured_level() -> None:
    out = io.StringIO()
    configure_logging("json", "warning", stream=out)
    log = AccessLog()
    log.record("GET", "/", 200, 17, 0.001, "127.0.0.1", 0.0005)
    assert out.getvalue() == ""


def test_console_format_goes_through_structlog() -> None:
    out = io.StringIO()
    configure_logging("console", "info", stream=out)
    try:
        AccessLog().record("GET", "/api/tags", 200, 17, 0.001, "127.0.0.1", 0.0005)
    finally:
        configure_logging("json", "warning")
    text = out.getvalue()
    assert "access" in text and "path=/api/tags" in text and "status=200" in text


def test_standard_library_records_come_out_as_json_lines() -> None:
    import logging

    out = io.StringIO()
    configure_logging("json", "info", stream=out)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request")
    finally:
        configure_logging("json", "warning")
    (line,) = [json.loads(text) for text in out.getvalue().splitlines()]
    assert line["event"] == "Error handling request" and line["logger"] == "aiohttp.server"
    assert line["level"] == "error" and "ValueError: boom" in line["exception"]


async def test_access_lines_stay_in_order_with_decision_events(stream: io.StringIO) -> None:
    """Both go into one buffer (the access line is flushed a little later, in place)."""
    import asyncio

    from proxy.config.log_setup import get_logger

    decisions = get_logger("vramgate.audit")
    log = AccessLog()
    decisions.info("load.admitted", model="a")
    log.record("POST", "/api/generate", 200, 10, 0.01, "127.0.0.1", 0.001)
    decisions.info("load.refused", model="b")
    log.record("POST", "/api/chat", 507, 10, 0.01, "127.0.0.1", None)
    await asyncio.sleep(0.15)  # past the access log's flush delay (0.1 s)
    events = [(e["event"], e.get("model") or e.get("path")) for e in map(json.loads, stream.getvalue().splitlines())]
    assert events == [("load.admitted", "a"), ("access", "/api/generate"), ("load.refused", "b"), ("access", "/api/chat")]
