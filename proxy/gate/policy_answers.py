"""Refusals by policy, each naming the rule, for whom, and what the user can do.

403: a model or operation the user may not use; 429: over their quota or queue limit; 503: a
queue wait that ran out. The body is Ollama's ``{"error": ...}`` (OpenAI's shape on ``/v1``,
Anthropic's on ``/v1/messages``) with the numbers under ``vramgate``.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.gate.admission import Respond
from proxy.gate.decision import Refuse
from proxy.gate.explanation import refusal_numbers, refusal_text

_CODES = {403: "policy_refused", 429: "over_quota", 503: "insufficient_gpu_memory"}


def policy_answer(path: str, status: int, text: str, numbers: dict[str, Any], retry_after: int | None = None) -> Respond:
    if path == "/v1/messages":
        body: dict[str, Any] = {"type": "error", "error": {"type": "api_error", "message": text}}
    elif path.startswith("/v1/"):
        body = {"error": {"message": text, "type": "api_error", "param": None, "code": _CODES.get(status)}}
    else:
        body = {"error": text}
    body["vramgate"] = {"decision": "refused", "status": status, **numbers}
    headers = {"Content-Type": "application/json; charset=utf-8",
               "X-Vramgate-Decision": f"refused {status} {numbers.get('reason', 'policy')}"}
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return Respond(status, json.dumps(body).encode(), headers)


def model_denied_text(user: str, model: str, rule: str) -> str:
    return (f"vramgate refused {model} for {user}: the policy does not allow this model (rule {rule})."
            " Use one of the models your policy allows, or ask the admin to add it.")


def unload_denied_text(user: str, model: str, owner: str) -> str:
    return (f"vramgate refused to unload {model} for {user}: {owner} loaded it and may be using it."
            f" It is unloaded when its keep-alive ends; ask {owner} or an admin to unload it sooner.")


def queue_full_text(user: str, model: str, limit: int, rule: str) -> str:
    return (f"vramgate refused to queue {model} for {user}: {user} already has {limit} load(s) waiting for GPU"
            f" memory, the most allowed (rule {rule}). Wait for those to be admitted, then retry.")


def queue_timeout_text(r: Refuse, waited: float, position: int) -> str:
    return (f"vramgate waited {waited:.0f} s in the queue (position {position}) for GPU memory, and none came"
            f" free in time. " + refusal_text(r))


def queue_timeout_answer(path: str, r: Refuse, waited: float, position: int) -> tuple[Respond, str]:
    text = queue_timeout_text(r, waited, position)
    numbers = {**refusal_numbers(r), "reason": "queue_timeout", "waited_s": round(waited, 1),
               "queue_position": position, "blocked_by": r.reason}
    return policy_answer(path, 503, text, numbers, retry_after=r.retry_after or 10), text
