"""A stand-in for the ``pynvml`` module (nvidia-ml-py), installed through ``sys.modules``.

Only the functions vramgate calls exist, with the signatures and return shapes of the real
module; the device values were recorded from real machines (an RTX 4090 on a desktop with Xorg
and a browser holding memory; an A100 80GB PCIe in a server). Tests change ``FakeNvml.devices``
to simulate loads, and ``fail_init``/``fail_reads`` to simulate a missing or broken driver.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field

GiB = 1024**3
MiB = 1024**2

NVML_CLOCK_MEM = 2


class NVMLError(Exception):
    def __init__(self, value: int = 999, text: str = "Unknown Error") -> None:
        self.value = value
        super().__init__(text)


class NVMLError_DriverNotLoaded(NVMLError):
    def __init__(self) -> None:
        super().__init__(9, "Driver Not Loaded")


class NVMLError_GpuIsLost(NVMLError):
    def __init__(self) -> None:
        super().__init__(15, "GPU is lost")


@dataclass
class FakeDevice:
    name: str
    uuid: str
    total: int
    used: int
    bus_width: int
    max_mem_clock_mhz: int
    compute_capability: tuple[int, int]
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)

    @property
    def free(self) -> int:
        return self.total - self.used


def rtx_4090_desktop() -> FakeDevice:
    """nvidia-smi on a desktop: 24564 MiB total, Xorg 1.1 GiB and a browser's GPU process."""
    return FakeDevice(
        name="NVIDIA GeForce RTX 4090",
        uuid="GPU-5e3b2f4c-9a71-4b0e-8c1d-2f6a7e9d1b3c",
        total=24564 * MiB,
        used=1516 * MiB,
        bus_width=384,
        max_mem_clock_mhz=10501,
        compute_capability=(8, 9),
        processes=[(2101, 1102 * MiB), (3377, 402 * MiB)],
    )


def a100_80gb() -> FakeDevice:
    return FakeDevice(
        name="NVIDIA A100 80GB PCIe",
        uuid="GPU-0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        total=81920 * MiB,
        used=4 * MiB,
        bus_width=5120,
        max_mem_clock_mhz=1512,
        compute_capability=(8, 0),
    )


class _Memory:
    def __init__(self, d: FakeDevice) -> None:
        self.total, self.used, self.free = d.total, d.used, d.free


class _Process:
    def __init__(self, pid: int, used: int | None) -> None:
        self.pid = pid
        self.usedGpuMemory = used
        self.gpuInstanceId = 0xFFFFFFFF
        self.computeInstanceId = 0xFFFFFFFF


class FakeNvml:
    """State behind the fake module; ``module()`` builds the ``pynvml`` look-alike."""

    def __init__(self, devices: list[FakeDevice]) -> None:
        self.devices = devices
        self.fail_init: NVMLError | None = None
        self.fail_reads: NVMLError | None = None
        self.inits = 0
        self.memory_reads = 0

    def module(self) -> types.ModuleType:
        m = types.ModuleType("pynvml")
        m.NVML_CLOCK_MEM = NVML_CLOCK_MEM
        m.NVMLError = NVMLError
        m.NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded
        m.NVMLError_GpuIsLost = NVMLError_GpuIsLost
        m.nvmlInit = self._init
        m.nvmlShutdown = lambda: None
        m.nvmlDeviceGetCount = lambda: (self._check(), len(self.devices))[1]
        m.nvmlDeviceGetHandleByIndex = self._handle
        m.nvmlDeviceGetName = lambda h: h.name
        m.nvmlDeviceGetUUID = lambda h: h.uuid
        m.nvmlDeviceGetMemoryInfo = self._memory
        m.nvmlDeviceGetMemoryBusWidth = lambda h: h.bus_width
        m.nvmlDeviceGetMaxClockInfo = lambda h, clock: h.max_mem_clock_mhz if clock == NVML_CLOCK_MEM else 2520
        m.nvmlDeviceGetCudaComputeCapability = lambda h: h.compute_capability
        m.nvmlDeviceGetComputeRunningProcesses = lambda h: [_Process(p, u) for p, u in h.processes]
        return m

    def _init(self) -> None:
        if self.fail_init is not None:
            raise self.fail_init
        self.inits += 1

    def _check(self) -> None:
        if self.fail_reads is not None:
            raise self.fail_reads

    def _handle(self, index: int) -> FakeDevice:
        self._check()
        if not 0 <= index < len(self.devices):
            raise NVMLError(2, "Invalid Argument")
        return self.devices[index]

    def _memory(self, h: FakeDevice, version: int | None = None) -> _Memory:
        self._check()
        self.memory_reads += 1
        return _Memory(h)


def install(monkeypatch, devices: list[FakeDevice]) -> FakeNvml:
    fake = FakeNvml(devices)
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake.module())
    return fake
