"""What the gate knows, as the status JSON (``schema: 1``) behind ``/vramgate/status``, the page,
``vramgate status`` and the GPU gauges of ``/vramgate/metrics``.

Read fresh on each call (``/api/ps`` and the GPU snapshot, as a decision reads them): who holds
each GPU (Ollama models by name and owner, loads in flight, other processes by user), the budget a
new load would get, the resident models, the queue and the last decisions (never prompt text).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy import __version__
from proxy.gate.decision import GpuBudget, Holder, Inputs, LoadRequest, ModelFacts, gpu_budgets, holders
from proxy.gate.observed import Observation
from proxy.gate.residency import Resident
from proxy.observe.metrics import Metrics
from proxy.ollama import client as ollama_client
from proxy.ollama.client import OllamaUnavailable

if TYPE_CHECKING:
    from proxy.gate.service import Gate

_FOREVER_AFTER = 100 * 365 * 86400  # a keep-alive this long is Ollama's "forever"
HISTORY = 5  # observed loads shown per model (proxy.gate.observed keeps more)


class GateStatus:
    """The ``StatusSource`` of ``proxy.edge.endpoints`` for a running gate."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.last: dict[str, Any] | None = None
        self.metrics = Metrics(lambda: self.last)
        gate.audit.listeners.append(self._count)

    async def health(self) -> tuple[bool, str]:
        return await ollama_client.health(self.gate.session, self.gate.upstream, self.gate.settings.probe_timeout)

    async def status(self) -> dict[str, Any]:
        gate = self.gate
        read_started = time.monotonic()
        problem = None
        try:
            ps_models = await ollama_client.ps(gate.session, gate.upstream, gate.settings.probe_timeout)
        except OllamaUnavailable as exc:
            ps_models, problem = [], f"Ollama at {gate.upstream} does not answer: {exc}"
        snap = await asyncio.to_thread(gate.probe.snapshot)
        residents = tuple(gate.residency.join(ps_models))
        inp = Inputs(LoadRequest("", "native"), ModelFacts("", 1, 0, False), _no_sizer, gate._server(snap), snap,
                     residents, gate.ledger.pending(read_started), gate.policy)
        budgets = {b.index: b for b in gpu_budgets(inp, "")}
        held = holders(inp)
        status = {
            "schema": 1,
            "vramgate_version": __version__,
            "ollama_version": gate._version or None,
            "upstream": gate.upstream,
            "time": _iso(datetime.now(UTC)),
            "problem": problem or snap.problem,
            "gpus": [_gpu(g.index, g.name, g.total, budgets[g.index], gate.policy.reserve, snap.source,
                          [_holder(h) for h in held if h.gpu == g.index]) for g in snap.gpus],
            "models": [_model(r, gate.observed.history(r.digest, HISTORY) if r.digest else []) for r in residents],
            "queue": gate.queue.snapshot(),
            "decisions": list(gate.audit.recent),
        }
        self.last = status
        return status

    def _count(self, name: str, fields: dict[str, Any]) -> None:
        """Every decision event, counted by outcome, reason, route and user."""
        outcome = _OUTCOMES.get(name)
        if outcome is not None:
            self.metrics.decision(outcome, fields.get("reason"), _route(fields.get("route")), fields.get("user"))
        if name == "load.dequeued" and isinstance(fields.get("waited_s"), (int, float)):
            self.metrics.queue_wait(float(fields["waited_s"]))


_OUTCOMES = {
    "load.admitted": "admitted", "load.rewritten": "rewritten", "load.sticky": "sticky", "load.resident": "resident",
    "load.refused": "refused", "request.refused": "refused", "load.queued": "queued",
    "load.queue_timeout": "queue_timeout", "load.evicted": "evicted", "load.spilled": "spilled",
    "pull.admitted": "pull_admitted", "pull.refused": "pull_refused",
}


def _route(path: object) -> str:
    """The route as Ollama's router names it: a bounded label (a blob's digest is not)."""
    text = str(path or "")
    for prefix, param in (("/api/blobs/", ":digest"), ("/api/user/keys/", ":encodedKey")):
        if text.startswith(prefix):
            return prefix + param
    return text


def _no_sizer(n_ctx: int, parallel: int, batch: int) -> Any:
    raise AssertionError("the status view sizes no load")


def _gpu(index: int, name: str, total: int, b: GpuBudget, reserve: int, source: str,
         held: list[dict[str, Any]]) -> dict[str, Any]:
    """One GPU: ``free`` after what Ollama holds (static GPUs: vramgate charges it), ``budget`` what a
    new load may take now without anything unloading, ``reclaimable`` what idle models would add."""
    return {"index": index, "name": name, "total_bytes": total, "free_bytes": b.free, "reserve_bytes": reserve,
            "budget_bytes": max(0, b.free - b.pending - reserve), "reclaimable_bytes": b.reclaimable,
            "source": source, "holders": held}


def _holder(h: Holder) -> dict[str, Any]:
    if h.kind == "process":
        return {"kind": "process", "name": h.name, "user": h.user, "pid": h.pid, "bytes": h.bytes}
    return {"kind": h.kind, "name": h.name, "owner": h.user, "bytes": h.bytes, "busy": h.busy, "idle_s": h.idle_s}


def _model(r: Resident, history: list[Observation]) -> dict[str, Any]:
    return {"name": r.name, "owner": r.owner, "users": sorted(r.users), "size_bytes": r.size,
            "size_vram_bytes": r.size_vram, "predicted_bytes": r.load.predicted_bytes if r.load else None,
            "context_length": r.context_length, "expires_at": r.expires_at,
            "keep_alive_left_s": _left(r.expires_at), "busy": r.busy, "idle_s": r.idle_s,
            # its last loads through vramgate: the footprint's prediction against what /api/ps said
            "observed_history": [{"time": o.iso_time, "predicted_bytes": o.predicted_bytes,
                                  "observed_bytes": o.observed_bytes, "num_ctx": o.config.num_ctx} for o in history]}


def _left(expires_at: str | None) -> float | None:
    """Seconds until Ollama unloads it (None: forever, or unknown)."""
    if not expires_at:
        return None
    try:  # Go writes nanoseconds; Python reads at most microseconds
        when = datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", expires_at.replace("Z", "+00:00")))
    except ValueError:
        return None
    left = (when - datetime.now(UTC)).total_seconds() if when.tzinfo else None
    if left is None or left > _FOREVER_AFTER:
        return None
    return round(max(0.0, left), 1)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
