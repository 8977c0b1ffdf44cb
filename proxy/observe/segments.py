"""How one GPU's memory splits into the segments of a bar: the same rule for the page and the terminal.

The status JSON lists the holders (Ollama models, loads in flight, other processes) and three
totals. The bar reads, left to right: each holder in the order given, then ``unattributed`` (used
memory no holder accounts for, e.g. processes NVML cannot see from a container), the ``reserve``
vramgate keeps back, and ``free``: the budget a new load may use (what matters to the reader), or
free minus reserve where no budget is given. The page's script (``page.py``) applies this same
rule; its test compares the two.

Numbers from different sources need not add up (a pending load may not show in NVML yet), so the
bar scales to the larger of the GPU's total and the segments' sum: it never overflows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Segment:
    kind: str  # ollama | pending | process | unattributed | reserve | free (or a holder kind the gate adds)
    name: str  # model name, command, or the kind's own label
    who: str | None  # the model's owner, or the process's user
    bytes: int
    pid: int | None = None
    busy: bool | None = None


def _int(value: Any) -> int | None:
    """A byte count from JSON, or None where it is null or not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return max(0, int(value))


def gpu_segments(gpu: Mapping[str, Any]) -> list[Segment]:
    """The bar's segments, in order; zero-byte segments are dropped (they would be invisible anyway)."""
    out: list[Segment] = []
    for holder in gpu.get("holders") or ():
        size = _int(holder.get("bytes")) or 0
        kind = str(holder.get("kind") or "process")
        who = holder.get("owner") if kind != "process" else holder.get("user")
        pid = holder.get("pid")
        busy = holder.get("busy")
        out.append(Segment(kind, str(holder.get("name") or "?"), None if who is None else str(who), size,
                           pid if isinstance(pid, int) else None, busy if isinstance(busy, bool) else None))
    total = _int(gpu.get("total_bytes")) or 0
    reserve = _int(gpu.get("reserve_bytes")) or 0
    free_now, budget = _int(gpu.get("free_bytes")), _int(gpu.get("budget_bytes"))
    held = sum(s.bytes for s in out)
    if budget is not None:
        free = budget
    elif free_now is not None:
        free = max(0, free_now - reserve)
    else:
        free = max(0, total - held - reserve)
    unattributed = max(0, total - held - reserve - free)
    out.append(Segment("unattributed", "not attributed", None, unattributed))
    out.append(Segment("reserve", "reserve", None, reserve))
    out.append(Segment("free", "free", None, free))
    return [s for s in out if s.bytes > 0]


def bar_scale(gpu: Mapping[str, Any], segments: list[Segment]) -> int:
    """The byte count the bar's full width stands for (never zero)."""
    return max(_int(gpu.get("total_bytes")) or 0, sum(s.bytes for s in segments), 1)
