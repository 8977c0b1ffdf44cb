"""Closed loop: after an admitted load, did it really land entirely on the GPU?

Ollama reports ``size`` and ``size_vram`` for each resident model. The gate keeps how much a real
load exceeded its prediction (the next prediction is corrected; ``proxy.gate.observed`` keeps the
comparison across restarts), logs ``load.spilled`` when part of it went to system RAM, and with
``unload_on_spill`` unloads it again.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import structlog

from proxy.gate.audit import Audit
from proxy.gate.decision import Admit
from proxy.gate.observed import LoadConfig, ObservedStore
from proxy.gate.residency import Residency, model_key
from proxy.gpu.probe import GpuProbe
from proxy.ollama import client as ollama_client
from proxy.ollama.client import OllamaUnavailable

log = structlog.get_logger("vramgate.gate")
SETTLE = 0.05  # seconds for Ollama to list a model it has just loaded
FREED_LAG = 0.5  # seconds drivers take to report memory freed by an unload


class SpillCheck:
    def __init__(self, session: aiohttp.ClientSession, upstream: str, timeout: float, residency: Residency,
                 lock: asyncio.Lock, probe: GpuProbe, audit: Audit, unload: bool,
                 observed: ObservedStore | None = None) -> None:
        self._session = session
        self._upstream = upstream
        self._timeout = timeout
        self._residency = residency
        self._lock = lock
        self._probe = probe
        self._audit = audit
        self._unload = unload
        self._observed = observed

    async def run(self, name: str, decision: Admit, config: LoadConfig | None = None) -> None:
        """Compare what Ollama holds for ``name`` with what ``decision`` predicted (loaded with ``config``)."""
        assert decision.need is not None
        await asyncio.sleep(SETTLE)
        try:
            ps_models = await ollama_client.ps(self._session, self._upstream, self._timeout)
        except OllamaUnavailable as exc:
            log.warning("gate.closed_loop_failed", model=name, error=str(exc))
            return
        async with self._lock:
            residents = self._residency.join(ps_models)
        r = next((r for r in residents if r.name == model_key(name)), None)
        if r is None:
            return
        predicted = decision.need.predicted_bytes
        estimated = predicted - decision.need.correction  # the footprint's own prediction
        self._residency.observe(name, r.size, estimated, r.digest)
        if self._observed is not None and config is not None and r.digest and r.size > 0:
            # a small insert, but off the event loop: a slow disk must not hold up requests
            await asyncio.to_thread(self._observed.record, r.digest, config, estimated, r.size, time.time(),
                                    model=r.name, observed_vram=r.size_vram)
        if r.size_vram >= r.size:
            return
        self._audit.event(
            "load.spilled", model=name, predicted_bytes=predicted, observed_size=r.size,
            observed_size_vram=r.size_vram, num_ctx=decision.num_ctx, unloading=self._unload,
        )
        if self._unload:
            try:
                await ollama_client.unload(self._session, self._upstream, name)
            except OllamaUnavailable as exc:
                log.warning("gate.unload_failed", model=name, error=str(exc))
            await asyncio.sleep(FREED_LAG)
            self._probe.invalidate()
