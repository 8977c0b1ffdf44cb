"""What GPU memory there is and who holds it, read from NVML or from the settings.

Every fit decision starts from a ``GpuSnapshot``. NVML is read through a short cache so that a
burst of requests costs one driver call. When NVML is missing or fails, the snapshot says so in
plain words (``problem``) and has no devices; the decision then follows ``on_no_gpu``. Static
devices (``VRAMGATE_GPU=static``) describe memory *outside* Ollama: vramgate charges what
``/api/ps`` reports to them itself (``includes_ollama`` is False), while NVML's free memory already
accounts for Ollama's runners.
"""

from __future__ import annotations

import pwd
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from proxy.config.settings import Settings
from proxy.gpu.snapshot import (
    Gpu,
    GpuProcess,
    GpuSnapshot,
    bandwidth_from_bus,
    no_gpu_snapshot,
    static_snapshot,
)

log = structlog.get_logger("vramgate.gpus")


class ProcReader:
    """Unix user and command line of a pid from /proc (root configurable for tests)."""

    def __init__(self, root: str | Path = "/proc") -> None:
        self.root = Path(root)

    def describe(self, pid: int) -> tuple[str | None, str | None]:
        base = self.root / str(pid)
        user: str | None = None
        command: str | None = None
        try:
            uid = base.stat().st_uid
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = str(uid)
        except OSError:
            pass
        try:
            raw = (base / "cmdline").read_bytes()
            parts = [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]
            if parts:
                command = " ".join(parts)[:200]
        except OSError:
            pass
        return user, command


class NvmlReader:
    """Reads every device through ``pynvml``; raises ``GpuReadError`` with a plain reason."""

    def __init__(self, proc: ProcReader | None = None) -> None:
        self.proc = proc or ProcReader()
        self._nvml: Any = None

    def init(self) -> None:
        try:
            import pynvml
        except ImportError as exc:
            raise GpuReadError(f"NVML is not available: the pynvml module cannot be imported ({exc})") from None
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise GpuReadError(f"NVML could not start: {_nvml_text(exc)}") from None
        self._nvml = pynvml

    def read(self) -> tuple[Gpu, ...]:
        if self._nvml is None:
            self.init()
        nv = self._nvml
        try:
            count = nv.nvmlDeviceGetCount()
            return tuple(self._device(nv, i) for i in range(count))
        except GpuReadError:
            raise
        except Exception as exc:
            raise GpuReadError(f"NVML failed reading the GPUs: {_nvml_text(exc)}", transient=True) from None

    def _device(self, nv: Any, index: int) -> Gpu:
        h = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(h)
        name = _text(nv.nvmlDeviceGetName(h))
        uuid = _text(nv.nvmlDeviceGetUUID(h))
        try:
            bandwidth = bandwidth_from_bus(
                nv.nvmlDeviceGetMemoryBusWidth(h), nv.nvmlDeviceGetMaxClockInfo(h, nv.NVML_CLOCK_MEM)
            )
        except Exception:
            bandwidth = 0.0  # unknown; the explanation then omits speeds for this GPU
        try:
            cc = tuple(nv.nvmlDeviceGetCudaComputeCapability(h))
        except Exception:
            cc = None
        processes: list[GpuProcess] = []
        try:
            running = nv.nvmlDeviceGetComputeRunningProcesses(h)
        except Exception:
            running = []
        for p in running:
            used = getattr(p, "usedGpuMemory", None)
            user, command = self.proc.describe(int(p.pid))
            processes.append(GpuProcess(pid=int(p.pid), used_bytes=int(used) if used else None, user=user, command=command))
        return Gpu(
            index=index,
            uuid=uuid,
            name=name,
            total=int(mem.total),
            used=int(mem.used),
            free=int(mem.free),
            bandwidth=bandwidth,
            processes=tuple(processes),
            compute_capability=cc,  # type: ignore[arg-type,unused-ignore]
        )


class GpuReadError(Exception):
    """``transient``: NVML started but a read failed (a lost GPU, a driver hiccup), unlike a
    missing library or driver, which will not fix itself."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class GpuProbe:
    """The one place that knows where GPU numbers come from; cached for ``gpu_cache_ttl`` seconds."""

    def __init__(self, settings: Settings, nvml: NvmlReader | None = None, clock=time.monotonic) -> None:
        self.mode = settings.gpu
        self.ttl = settings.gpu_cache_ttl
        self.static = list(settings.static_gpus)
        self.nvml = nvml or NvmlReader()
        self.clock = clock
        self._cached: GpuSnapshot | None = None
        self._lock = threading.Lock()
        self._nvml_broken: str | None = None

    def start(self) -> GpuSnapshot:
        """Read once and say plainly at start what vramgate will decide from."""
        snap = self.snapshot(fresh=True)
        if snap.gpus:
            log.info(
                "gpus.found",
                source=snap.source,
                gpus=[{"index": g.index, "name": g.name, "total": g.total, "free": g.free} for g in snap.gpus],
            )
        else:
            log.warning("gpus.none", source=snap.source, problem=snap.problem)
        return snap

    def invalidate(self) -> None:
        self._cached = None

    def snapshot(self, fresh: bool = False) -> GpuSnapshot:
        now = self.clock()
        with self._lock:
            cached = self._cached
            if not fresh and cached is not None and now - cached.taken_at < self.ttl:
                return cached
            snap = self._read()
            snap = GpuSnapshot(snap.gpus, snap.source, snap.problem, snap.includes_ollama, now, snap.transient)
            self._cached = snap
            return snap

    def _read(self) -> GpuSnapshot:
        if self.mode == "static":
            return static_snapshot(self.static)
        if self.mode == "none":
            return no_gpu_snapshot("VRAMGATE_GPU=none: vramgate was told there is no GPU")
        try:
            gpus = self.nvml.read()
        except GpuReadError as exc:
            if self._nvml_broken != str(exc):
                log.error("gpus.nvml_failed", problem=str(exc), mode=self.mode)
                self._nvml_broken = str(exc)
            return no_gpu_snapshot(str(exc), transient=exc.transient)
        if self._nvml_broken is not None:
            log.info("gpus.nvml_recovered")
            self._nvml_broken = None
        if not gpus:
            return GpuSnapshot(gpus=(), source="nvml", problem="NVML reports no NVIDIA GPU on this machine")
        return GpuSnapshot(gpus=gpus, source="nvml")


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _nvml_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text

