"""GPU memory as plain data: what there is and who holds it, at one moment. Pure.

Every fit decision starts from a ``GpuSnapshot``; ``proxy.gpu.probe`` fills one from NVML or the
settings. Static devices (``VRAMGATE_GPU=static``) describe memory *outside* Ollama: vramgate
charges what ``/api/ps`` reports to them itself (``includes_ollama`` is False), while NVML's free
memory already accounts for Ollama's runners.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class StaticDevice(Protocol):
    """A device described by hand (the settings' ``StaticGpu``)."""

    name: str
    total: int
    free: int | None
    bandwidth: float
    uuid: str | None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    used_bytes: int | None  # None when the driver does not say (e.g. containers, WDDM)
    user: str | None = None
    command: str | None = None

    @property
    def is_ollama(self) -> bool:
        """Ollama's own runners are described by model name, not as foreign processes."""
        cmd = (self.command or "").lower()
        return "ollama" in cmd or "llama-server" in cmd


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    total: int
    used: int
    free: int
    bandwidth: float  # bytes per second, theoretical peak
    processes: tuple[GpuProcess, ...] = ()
    compute_capability: tuple[int, int] | None = None


@dataclass(frozen=True)
class GpuSnapshot:
    gpus: tuple[Gpu, ...]
    source: str  # "nvml" | "static" | "none"
    problem: str | None = None  # why there are no (or no live) GPU numbers, in plain words
    includes_ollama: bool = True  # free memory already excludes what Ollama's runners hold
    taken_at: float = field(default=0.0, compare=False)
    transient: bool = False  # NVML worked before and failed now: worth retrying

    @property
    def total(self) -> int:
        return sum(g.total for g in self.gpus)


def bandwidth_from_bus(bus_width_bits: int, max_mem_clock_mhz: int) -> float:
    """Peak bytes/s: bus width x memory clock x 2 (double data rate) / 8 bits."""
    return bus_width_bits * max_mem_clock_mhz * 1e6 * 2 / 8


def static_snapshot(devices: Sequence[StaticDevice]) -> GpuSnapshot:
    gpus = tuple(
        Gpu(
            index=i,
            uuid=d.uuid or f"static-{i}",
            name=d.name,
            total=d.total,
            used=d.total - (d.free if d.free is not None else d.total),
            free=d.free if d.free is not None else d.total,
            bandwidth=d.bandwidth,
        )
        for i, d in enumerate(devices)
    )
    problem = None if gpus else "VRAMGATE_GPU=static but VRAMGATE_STATIC_GPUS lists no devices"
    return GpuSnapshot(gpus=gpus, source="static", problem=problem, includes_ollama=False)


def no_gpu_snapshot(reason: str, transient: bool = False) -> GpuSnapshot:
    return GpuSnapshot(gpus=(), source="none", problem=reason, transient=transient)


