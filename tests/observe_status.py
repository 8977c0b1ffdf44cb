"""A status JSON (``schema: 1``) whose numbers add up, shared by the observe tests, and a fake source.

GPU 0 (24 GiB): alice's qwen3:32b 18 GiB, a model loaded outside vramgate (no owner, a name that
tries to inject HTML) 1 GiB, bob's llama3.2:3b loading 2 GiB, carol's python3 1 GiB, reserve 0.5 GiB,
budget 1.5 GiB: 24 GiB in all, so the bar's widths are exactly bytes / total.
GPU 1 (8 GiB): nothing but a 2 GiB budget behind 6 GiB that no holder accounts for, and no reserve.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from proxy.observe.metrics import Metrics

GiB = 1024**3
EVIL = '<img src=x onerror="document.body.dataset.pwned=1">'

STATUS: dict[str, Any] = {
    "schema": 1, "vramgate_version": "0.1.0", "ollama_version": "0.12.6", "upstream": "http://127.0.0.1:11434",
    "time": "2026-12-01T12:00:00Z",
    "gpus": [
        {"index": 0, "name": "NVIDIA GeForce RTX 4090", "total_bytes": 24 * GiB, "free_bytes": 2 * GiB,
         "reserve_bytes": GiB // 2, "budget_bytes": 3 * GiB // 2, "source": "nvml",
         "holders": [
             {"kind": "ollama", "name": "qwen3:32b", "owner": "alice", "bytes": 18 * GiB, "busy": False},
             {"kind": "ollama", "name": EVIL, "owner": None, "bytes": GiB, "busy": False},
             {"kind": "pending", "name": "llama3.2:3b", "owner": "bob", "bytes": 2 * GiB, "busy": True},
             {"kind": "process", "name": "python3", "user": "carol", "pid": 4242, "bytes": GiB}]},
        {"index": 1, "name": "NVIDIA RTX A2000", "total_bytes": 8 * GiB, "free_bytes": 2 * GiB,
         "reserve_bytes": 0, "budget_bytes": 2 * GiB, "source": "nvml", "holders": []},
    ],
    "models": [
        {"name": "qwen3:32b", "owner": "alice", "users": ["alice", "bob"], "size_bytes": 18 * GiB,
         "size_vram_bytes": 18 * GiB, "predicted_bytes": 17 * GiB, "context_length": 8192,
         "expires_at": "2026-12-01T12:04:00Z", "keep_alive_left_s": 240.0, "busy": False, "idle_s": 60.0},
        {"name": EVIL, "owner": None, "users": [], "size_bytes": GiB, "size_vram_bytes": GiB,
         "predicted_bytes": None, "context_length": 4096, "expires_at": None, "keep_alive_left_s": None,
         "busy": True, "idle_s": None},
    ],
    "queue": [{"position": 1, "user": "dave", "model": "llama3.1:8b", "priority": 0, "waited_s": 12.5}],
    "decisions": [
        {"time": "2026-12-01T11:59:50Z", "event": "load.admitted", "user": "alice", "model": "qwen3:32b",
         "route": "/api/chat", "status": 200, "reason": "fits", "explanation": "fits on GPU 0",
         "num_ctx_from": None, "num_ctx_to": None},
        {"time": "2026-12-01T11:59:55Z", "event": "load.rewritten", "user": "bob", "model": "llama3.1:8b",
         "route": "/api/generate", "status": 200, "reason": "gpu_memory",
         "explanation": "num_ctx shrunk to what fits", "num_ctx_from": 131072, "num_ctx_to": 128000},
        {"time": "2026-12-01T11:59:58Z", "event": "load.refused", "user": "bob", "model": "llama3.1:70b",
         "route": "/api/chat", "status": 507, "reason": "too_big",
         "explanation": "llama3.1:70b needs 42.3 GiB with num_ctx 8192; the largest GPU has 24.0 GiB",
         "num_ctx_from": None, "num_ctx_to": None},
    ],
}


def status() -> dict[str, Any]:
    """A fresh deep copy: a test may change it freely."""
    return copy.deepcopy(STATUS)


class FakeSource:
    """A StatusSource for the endpoints: a fixed status, a settable health, real Metrics over that status."""

    def __init__(self, snapshot: Mapping[str, Any] | None = None) -> None:
        self.snapshot: Mapping[str, Any] | None = status() if snapshot is None else snapshot
        self.healthy: tuple[bool, str] = (True, "")
        self.fail: Exception | None = None
        self.metrics = Metrics(lambda: self.snapshot)

    async def status(self) -> Mapping[str, Any]:
        if self.fail is not None:
            raise self.fail
        assert self.snapshot is not None
        return self.snapshot

    async def health(self) -> tuple[bool, str]:
        if self.fail is not None:
            raise self.fail
        return self.healthy
