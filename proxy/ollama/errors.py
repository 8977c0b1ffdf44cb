"""Error bodies in the shape the client expects: Ollama's on the native API, OpenAI's on ``/v1``."""

from __future__ import annotations

import json

JSON_TYPE = "application/json; charset=utf-8"
_OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}


def error_body(path: str, message: str, status: int) -> bytes:
    if path.startswith("/v1/"):
        payload: dict[str, object] = {"error": {
            "message": message, "type": _OPENAI_TYPES.get(status, "api_error"), "param": None, "code": None}}
    else:
        payload = {"error": message}
    return json.dumps(payload, separators=(",", ":")).encode()


def stream_error_line(message: str) -> bytes:
    """The in-band NDJSON error line Ollama itself sends when a stream fails after it started."""
    return json.dumps({"error": message}, separators=(",", ":")).encode() + b"\n"
