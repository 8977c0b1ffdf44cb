"""Ollama's wire conventions: Go-style compact JSON, RFC 3339 timestamps with ns, Go durations."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"

FOREVER = float("inf")


def dumps(obj: Any) -> bytes:
    """Compact JSON the way Go's encoding/json writes it (HTML characters escaped)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def ndjson_line(obj: Any) -> bytes:
    return dumps(obj) + b"\n"


def json_response(obj: Any, status: int = 200) -> web.Response:
    # Go's c.JSON writes the body without a trailing newline.
    return web.Response(status=status, body=dumps(obj), headers={"Content-Type": JSON_TYPE})


def error_response(message: str, status: int) -> web.Response:
    return json_response({"error": message}, status)


def openai_error(message: str, status: int) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(status, "api_error")
    return json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status
    )


def rfc3339(ts: float | None = None) -> str:
    """``2026-11-24T21:45:29.123456789Z`` like Go's time.Time JSON encoding in UTC."""
    ns = time.time_ns() if ts is None else int(ts * 1e9)
    seconds, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    frac_text = f"{frac:09d}".rstrip("0")
    return f"{base}.{frac_text}Z" if frac_text else f"{base}Z"


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class BadKeepAlive(ValueError):
    pass


def parse_keep_alive(value: Any) -> float:
    """Seconds from a ``keep_alive`` value: number = seconds, string = Go duration, negative = forever."""
    if isinstance(value, bool):
        raise BadKeepAlive("json: cannot unmarshal bool into Go value of type api.Duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_go_duration(value)
    else:
        raise BadKeepAlive("json: cannot unmarshal into Go value of type api.Duration")
    return FOREVER if seconds < 0 else seconds


def _parse_go_duration(text: str) -> float:
    raw = text.strip()
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("+-")
    if body == "0":
        return 0.0
    if not body:
        raise BadKeepAlive(f'time: invalid duration "{text}"')
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if not match:
            if re.fullmatch(r"[\d.]+", body[pos:]):
                raise BadKeepAlive(f'time: missing unit in duration "{text}"')
            raise BadKeepAlive(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    return sign * total
