"""vramgate's own questions to Ollama (``/api/show``, ``/api/ps``, ``/api/tags``, ``/api/version``).

One ``aiohttp.ClientSession`` carries every call to Ollama (the relay's, the gate's, ``vramgate
plan``'s, the registry's): ``new_session`` builds it. Each question has a short timeout, because a
gate that waits on a hung Ollama holds its clients hostage; a failure raises ``OllamaUnavailable``
and the gate refuses what it cannot judge (fail closed) instead of guessing.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from proxy.config.settings import Settings

QUICK_TIMEOUT = 5.0  # default for /api/ps, /api/tags, /api/version: they answer from memory
SHOW_FACTOR = 6  # /api/show of a large model reads its whole tensor list: six times as long


class OllamaUnavailable(Exception):
    """Ollama could not be asked (unreachable, timed out, an error status, not JSON)."""


class ModelUnknown(Exception):
    """Ollama answered 404 (no such model) or 400 (not a model name): it answers a load the same way."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Ollama answered {status}: {message}")
        self.status = status


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The one session every call to Ollama goes through."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout,
                                    sock_read=settings.read_timeout or None)
    return aiohttp.ClientSession(
        connector=connector, timeout=timeout, auto_decompress=False, raise_for_status=False,
        cookie_jar=aiohttp.DummyCookieJar(),  # shared by every client: never keep one client's cookies
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),  # relayed as the client sent them
    )


async def _json(session: aiohttp.ClientSession, method: str, url: str, timeout: float,
                body: Any = None, missing_ok: bool = False) -> Any:
    try:
        async with session.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if missing_ok and resp.status in (400, 404):
                data = await resp.json(content_type=None)
                raise ModelUnknown(resp.status, str(data.get("error", "")) if isinstance(data, dict) else "")
            if resp.status != 200:
                raise OllamaUnavailable(f"{method} {url} answered HTTP {resp.status}")
            return await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise OllamaUnavailable(f"{method} {url}: {str(exc) or type(exc).__name__}") from None


async def show(session: aiohttp.ClientSession, upstream: str, model: str,
               timeout: float = QUICK_TIMEOUT) -> dict[str, Any]:
    """``/api/show`` with ``verbose`` (per-layer arrays are null without it). Raises ModelUnknown when
    Ollama does not know the model or the name (it answers the load itself with its own 404/400)."""
    data = await _json(session, "POST", f"{upstream}/api/show", timeout * SHOW_FACTOR, {"model": model, "verbose": True},
                       missing_ok=True)
    if not isinstance(data, dict):
        raise OllamaUnavailable("/api/show answered something that is not a JSON object")
    return data


async def ps(session: aiohttp.ClientSession, upstream: str, timeout: float = QUICK_TIMEOUT) -> list[dict[str, Any]]:
    data = await _json(session, "GET", f"{upstream}/api/ps", timeout)
    return _models(data)


async def tags(session: aiohttp.ClientSession, upstream: str, timeout: float = QUICK_TIMEOUT) -> list[dict[str, Any]]:
    data = await _json(session, "GET", f"{upstream}/api/tags", timeout)
    return _models(data)


async def version(session: aiohttp.ClientSession, upstream: str, timeout: float = QUICK_TIMEOUT) -> str:
    """'' when the upstream does not say; raises OllamaUnavailable when it cannot be asked."""
    data = await _json(session, "GET", f"{upstream}/api/version", timeout)
    return str(data.get("version", "")) if isinstance(data, dict) else ""


async def health(session: aiohttp.ClientSession, upstream: str, timeout: float = QUICK_TIMEOUT) -> tuple[bool, str]:
    """(Ollama answers, why not): what ``/vramgate/health`` reports."""
    try:
        await version(session, upstream, timeout)
    except OllamaUnavailable as exc:
        return False, f"Ollama at {upstream} does not answer: {exc}"
    return True, ""


async def unload(session: aiohttp.ClientSession, upstream: str, model: str) -> None:
    """``keep_alive: 0`` with no prompt: Ollama unloads the model without loading anything."""
    await _json(session, "POST", f"{upstream}/api/generate", 30.0, {"model": model, "keep_alive": 0})


def _models(data: Any) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise OllamaUnavailable("the answer has no 'models' list")
    return [m for m in data["models"] if isinstance(m, dict)]
