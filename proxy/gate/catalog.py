"""What the gate knows of Ollama's models: their descriptions, fetched once per digest.

``/api/show`` with ``verbose`` lists every tensor (a large model's answer takes a while), so each
model's description is kept until ``/api/tags`` shows a new digest for it. A cloud model (one
that Ollama runs elsewhere) is recognised and holds no local memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
import structlog

from proxy.footprint import ModelDescription, description_from_show
from proxy.gate.residency import model_key
from proxy.ollama import client as ollama_client
from proxy.ollama.client import OllamaUnavailable

log = structlog.get_logger("vramgate.gate")
TAGS_TTL = 2.0  # seconds: how long /api/tags is trusted to say a cached description is current


@dataclass(frozen=True)
class Described:
    digest: str
    description: ModelDescription | None  # None for a remote model
    remote_host: str = ""  # a model Ollama runs elsewhere (a cloud model): no local memory


class ModelNotUnderstood(Exception):
    """/api/show describes a model vramgate cannot size."""


class ModelCatalog:
    def __init__(self, session: aiohttp.ClientSession, upstream: str, timeout: float) -> None:
        self._session = session
        self._upstream = upstream
        self._timeout = timeout
        self._described: dict[str, Described] = {}
        self._tags: tuple[float, dict[str, str]] = (0.0, {})

    async def describe(self, name: str) -> Described:
        """Raises ModelUnknown (Ollama answers the load itself), OllamaUnavailable, ModelNotUnderstood."""
        key = model_key(name)
        digest = (await self._digests()).get(key, "")
        cached = self._described.get(key)
        if cached is not None and cached.digest == digest and digest:
            return cached
        show = await ollama_client.show(self._session, self._upstream, name, self._timeout)
        remote = show.get("remote_host")
        if isinstance(remote, str) and remote:
            return Described(digest, None, remote)
        try:
            desc = description_from_show(show, name=key)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("gate.model_not_understood", model=name, error=str(exc))
            raise ModelNotUnderstood(str(exc)) from None
        described = Described(digest, desc)
        self._described[key] = described
        return described

    async def is_local(self, name: str) -> bool:
        return model_key(name) in await self._digests()

    async def _digests(self) -> dict[str, str]:
        """model -> digest@modified, cached briefly; {} when Ollama cannot be asked (then nothing
        is taken from the cache)."""
        stamp, tags = self._tags
        if time.monotonic() - stamp < TAGS_TTL:
            return tags
        try:
            models = await ollama_client.tags(self._session, self._upstream, self._timeout)
        except OllamaUnavailable:
            return {}
        tags = {model_key(str(m.get("model") or m.get("name"))): f"{m.get('digest')}@{m.get('modified_at')}"
                for m in models}
        self._tags = (time.monotonic(), tags)
        return tags
