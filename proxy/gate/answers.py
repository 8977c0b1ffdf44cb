"""The gate's answers that are not a fit decision: forwards as Ollama will read them, and the
refusals for what vramgate cannot judge (fail closed)."""

from __future__ import annotations

import json

from proxy.gate.admission import AdmissionRequest, Forward, Respond
from proxy.ollama.errors import error_body
from proxy.ollama.requests import Parsed

JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def untouched(request: AdmissionRequest, why: str) -> Forward:
    """The client's own bytes: only for what Ollama refuses before loading anything."""
    return Forward(request.body, {"X-Vramgate-Decision": why})


def canonical(parsed: Parsed, why: str) -> Forward:
    """The canonical body: Ollama reads exactly what vramgate read."""
    return Forward(parsed.body(), {"X-Vramgate-Decision": why})


def cannot_read(request: AdmissionRequest, why: str) -> Respond:
    """Fail closed on a body Ollama would act on but vramgate cannot read."""
    text = f"vramgate cannot judge this request, so it did not forward it: {why}."
    return Respond(400, error_body(request.path, text, 400),
                   {**JSON_HEADERS, "X-Vramgate-Decision": "refused 400 unreadable"})


def cannot_judge(request: AdmissionRequest, name: str, what: str, detail: str, status: int) -> tuple[Respond, str]:
    """Fail closed on a load whose inputs vramgate could not get; the text is for the audit too."""
    text = (f"vramgate refused to load {name}: it could not get {what} to check that the model fits the GPU"
            f" ({detail}). Nothing was loaded.")
    text += " Retry in a moment." if status == 503 else " Ask the admin to report it with vramgate's log."
    headers = {**JSON_HEADERS, "X-Vramgate-Decision": f"refused {status} cannot_judge"}
    if status == 503:
        headers["Retry-After"] = "5"
    return Respond(status, error_body(request.path, text, status), headers), text


def anthropic_error(openai_body: bytes) -> bytes:
    """Anthropic's error shape for /v1/messages, from the OpenAI-shaped refusal."""
    data = json.loads(openai_body)
    err = data.get("error") or {}
    return json.dumps({"type": "error", "error": {"type": "api_error", "message": err.get("message", "")},
                       "vramgate": data.get("vramgate")}).encode()
