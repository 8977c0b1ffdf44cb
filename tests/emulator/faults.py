"""Faults a test can make the emulator commit, on one path, for a number of requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FaultKind = Literal["hang", "slow", "drop", "error_line", "status"]


@dataclass
class Fault:
    """What goes wrong on requests to ``path``.

    - ``hang``: stop answering; with ``after=None`` before the response headers (a cold load that
      never ends), else after ``after`` streamed chunks. Ends only when the client goes away.
    - ``slow``: wait ``delay`` seconds before each streamed chunk.
    - ``drop``: after ``after`` chunks, close the connection without ending the chunked body.
    - ``error_line``: after ``after`` chunks, send ``{"error": message}`` and end (no done line).
    - ``status``: answer ``status`` with ``{"error": message}`` before anything else.
    """

    path: str
    kind: FaultKind
    after: int | None = None
    delay: float = 0.05
    status: int = 500
    message: str = "emulated failure"
    times: int = 1  # how many requests it applies to; 0 = every one

    def matches(self, path: str) -> bool:
        return self.path == path

    def consume(self) -> bool:
        """True while the fault still applies; counts one use."""
        if self.times == 0:
            return True
        if self.times < 0:
            return False
        self.times -= 1
        if self.times == 0:
            self.times = -1
        return True
