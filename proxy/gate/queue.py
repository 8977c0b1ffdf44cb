"""Loads waiting for room: a fair share instead of a bounce.

A load that would fit once other holders let go (a 503 before this queue existed, which the
official clients do not retry) waits here for up to ``queue_timeout`` and is admitted as soon as
it fits: the client sees a normal answer, only later. Order: priority, then arrival. Only the
first in line is judged again, so a big load is not starved by small ones arriving behind it,
and a fresh load that needs new memory goes behind waiters of its priority or higher.

Waiters are woken when something may have freed memory (a load answered, a request ended, a
model unloaded, the policy changed) and at least every ``POLL`` seconds, because Ollama unloads
idle models on its own clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

POLL = 1.0  # seconds between two judgements of the first waiter when nothing woke it


@dataclass(eq=False)
class Waiter:
    user: str
    model: str
    priority: int
    arrived: float
    seq: int
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def order(self) -> tuple[int, int]:
        return (-self.priority, self.seq)


class LoadQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._waiters: list[Waiter] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._waiters)

    def count(self, user: str) -> int:
        """How many loads ``user`` has waiting (``max_queued`` caps it)."""
        return sum(1 for w in self._waiters if w.user == user)

    def join(self, user: str, model: str, priority: int) -> Waiter:
        waiter = Waiter(user, model, priority, self._clock(), next(self._seq))
        self._waiters.append(waiter)
        self._waiters.sort(key=lambda w: w.order)
        return waiter

    def leave(self, waiter: Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        self.wake_all()  # the next in line may go now

    def is_first(self, waiter: Waiter) -> bool:
        return bool(self._waiters) and self._waiters[0] is waiter

    def position(self, waiter: Waiter) -> int:
        return self._waiters.index(waiter) + 1 if waiter in self._waiters else 0

    def holds_back(self, waiter: Waiter | None, priority: int) -> bool:
        """Must a load that needs new memory wait for others? A waiter goes when it is first; a
        fresh arrival goes only when nobody of its priority or higher waits."""
        if waiter is not None:
            return not self.is_first(waiter)
        return any(w.priority >= priority for w in self._waiters)

    def wake_all(self) -> None:
        for w in self._waiters:
            w.woken.set()

    async def wait(self, waiter: Waiter, timeout: float) -> None:
        """Until woken or ``timeout`` seconds pass."""
        try:
            await asyncio.wait_for(waiter.woken.wait(), timeout)
        except TimeoutError:
            pass
        waiter.woken.clear()

    def waited(self, waiter: Waiter) -> float:
        return self._clock() - waiter.arrived

    def snapshot(self) -> list[dict[str, Any]]:
        """For the status view: who waits for what, in order."""
        now = self._clock()
        return [{"position": i + 1, "user": w.user, "model": w.model, "priority": w.priority,
                 "waited_s": round(now - w.arrived, 1)} for i, w in enumerate(self._waiters)]
