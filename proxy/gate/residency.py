"""What Ollama holds right now (``/api/ps``) and what vramgate knows about each holder.

Ollama says which models are loaded and how big they are, but not with which options they were
loaded nor whether a request is using them. vramgate adds both: the options it forwarded for each
model it admitted (for sticky options and GPU placement), and how many of its own requests are in
flight per model (a busy model is not evicted by Ollama, so its memory only frees up later). It
also remembers how much bigger a real load was than predicted, to correct the next prediction,
and who owns each model: the user whose request loaded it, and who has used it since, so quotas
and explanations can name people ("held by alice (qwen3:32b, 21.4 GiB, idle 3 min)").
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field


def model_key(name: str) -> str:
    """'llama3.2' and 'llama3.2:latest' are the same model to Ollama."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


@dataclass(frozen=True)
class VramgateLoad:
    """The options vramgate forwarded when it admitted a load, and where it expected it to go."""

    num_ctx: int
    num_gpu: int
    per_gpu: tuple[tuple[int, int], ...]  # (gpu index, predicted bytes incl. CUDA context)
    predicted_bytes: int  # llama.cpp buffers only, comparable with /api/ps size


@dataclass(frozen=True)
class Resident:
    name: str  # model_key form
    size: int
    size_vram: int
    context_length: int | None
    expires_at: str | None = None
    digest: str = ""
    busy: bool = False
    load: VramgateLoad | None = None  # None when loaded by someone else (or before vramgate started)
    owner: str | None = None  # the user whose request loaded it through vramgate (None: loaded otherwise)
    users: frozenset[str] = frozenset()  # everyone who used it through vramgate since it was loaded
    idle_s: float | None = None  # seconds since its last request through vramgate ended (None: unknown)

    @property
    def fully_on_gpu(self) -> bool:
        return self.size_vram >= self.size > 0


@dataclass
class Residency:
    """Mutable record kept by the gate; ``residents`` joins it with a fresh /api/ps."""

    loads: dict[str, VramgateLoad] = field(default_factory=dict)
    in_flight: Counter = field(default_factory=Counter)
    corrections: dict[str, int] = field(default_factory=dict)  # model -> bytes above prediction
    # model digest -> bytes above prediction, also from earlier runs (loaded from proxy.gate.observed)
    learned: dict[str, int] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # model -> the user whose request loaded it
    users: dict[str, set[str]] = field(default_factory=dict)  # model -> who used it since
    last_used: dict[str, float] = field(default_factory=dict)  # model -> when its last request ended
    clock: Callable[[], float] = time.monotonic

    def begin(self, model: str, user: str | None = None) -> None:
        key = model_key(model)
        self.in_flight[key] += 1
        if user is not None:
            self.users.setdefault(key, set()).add(user)

    def end(self, model: str) -> None:
        key = model_key(model)
        self.in_flight[key] -= 1
        if self.in_flight[key] <= 0:
            del self.in_flight[key]
        self.last_used[key] = self.clock()

    def record_owner(self, model: str, user: str) -> None:
        """``user``'s request loaded it (Ollama answered a load vramgate sized): they own it now."""
        key = model_key(model)
        self.owners[key] = user
        self.users[key] = {user}

    def owner(self, model: str) -> str | None:
        return self.owners.get(model_key(model))

    def record_load(self, model: str, load: VramgateLoad) -> None:
        self.loads[model_key(model)] = load

    def observe(self, model: str, observed_bytes: int, predicted_bytes: int, digest: str = "") -> None:
        """Keep how much a real load exceeded the prediction (never lowers a prediction); the
        prediction is the footprint's own, without the correction it was given."""
        extra = max(0, observed_bytes - predicted_bytes)
        key = model_key(model)
        self.corrections[key] = max(self.corrections.get(key, 0), extra)
        if digest:
            self.learned[digest] = max(self.learned.get(digest, 0), extra)

    def correction(self, model: str, digest: str = "") -> int:
        """The model's correction: the larger of this run's and what its digest's loads showed before."""
        return max(self.corrections.get(model_key(model), 0), self.learned.get(digest, 0) if digest else 0)

    def join(self, ps_models: list[dict]) -> list[Resident]:
        residents = []
        present = set()
        now = self.clock()
        for m in ps_models:
            name = model_key(str(m.get("model") or m.get("name") or ""))
            present.add(name)
            used = self.last_used.get(name)
            load = self.loads.get(name)
            ctx = _int(m.get("context_length"))
            if load is not None and ctx and ctx != load.num_ctx:  # reloaded since by someone else
                del self.loads[name]
            residents.append(
                Resident(
                    name=name,
                    size=_int(m.get("size")),
                    size_vram=_int(m.get("size_vram")),
                    context_length=_int(m.get("context_length")) or None,
                    expires_at=m.get("expires_at") if isinstance(m.get("expires_at"), str) else None,
                    digest=str(m.get("digest") or ""),
                    busy=self.in_flight.get(name, 0) > 0,
                    load=self.loads.get(name),
                    owner=self.owners.get(name),
                    users=frozenset(self.users.get(name, ())),
                    idle_s=None if used is None else max(0.0, now - used),
                )
            )
        for gone in set(self.loads) - present:  # unloaded since: its options no longer apply
            del self.loads[gone]
        for table in (self.owners, self.users, self.last_used):  # nor its owner: the next load owns it
            for gone in set(table) - present - set(self.in_flight):
                del table[gone]
        return residents


def _int(value: object) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0
