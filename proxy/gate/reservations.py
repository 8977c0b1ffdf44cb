"""Loads admitted but not yet visible in what Ollama reports: the memory they will take is spoken for.

A reservation lives from the gate's admission until a reading of Ollama's state that started
*after* Ollama answered the load (then ``/api/ps`` and NVML show the model itself). Each decision
asks for the reservations its own readings cannot see yet (``pending(read_started)``), so
readings can happen outside the admission lock without two loads spending the same memory:

    held ──(Ollama answered)──> answered ──(a later reading sees the model)──> gone
      └──────────────(no answer within the TTL: a lost load)───────────────────> gone
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from proxy.gate.decision import Reservation

TTL = 1800.0  # seconds; a load that takes longer is assumed lost
KEEP_ANSWERED = 60.0  # seconds an answered reservation is kept for readings that started before it


@dataclass
class _Entry:
    reservation: Reservation
    admitted_at: float
    answered_at: float | None = None


class ReservationLedger:
    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._entries: dict[int, _Entry] = {}
        self._ids = itertools.count(1)
        self.expired: list[Reservation] = []  # reported by the gate, then cleared

    def hold(self, reservation: Reservation) -> int:
        """A load was admitted: returns the token ``answered`` takes."""
        token = next(self._ids)
        self._entries[token] = _Entry(reservation, self._clock())
        return token

    def answered(self, token: int) -> None:
        """Ollama answered the load (or failed): readings that start from now on can see the result."""
        entry = self._entries.get(token)
        if entry is not None and entry.answered_at is None:
            entry.answered_at = self._clock()

    def pending(self, read_started: float) -> tuple[Reservation, ...]:
        """The reservations a decision must add to readings of Ollama's state started at ``read_started``."""
        now = self._clock()
        for token, entry in list(self._entries.items()):
            if entry.answered_at is None and now - entry.admitted_at > self._ttl:
                self.expired.append(entry.reservation)
                del self._entries[token]
            elif entry.answered_at is not None and now - entry.answered_at > KEEP_ANSWERED:
                del self._entries[token]
        largest: dict[str, Reservation] = {}  # one runner per model: its largest load in flight counts
        for e in self._entries.values():
            if e.answered_at is None or e.answered_at >= read_started:
                held = largest.get(e.reservation.model)
                if held is None or sum(b for _, b in e.reservation.per_gpu) > sum(b for _, b in held.per_gpu):
                    largest[e.reservation.model] = e.reservation
        return tuple(largest.values())

    def __len__(self) -> int:
        return len(self._entries)
