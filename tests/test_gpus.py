"""The GPU probe against the fake ``pynvml`` module and a fake /proc."""

from __future__ import annotations

import os
import pwd
import sys

import pytest
from structlog.testing import capture_logs

from proxy.config.settings import load_settings
from proxy.gpu.probe import GpuProbe, NvmlReader, ProcReader
from proxy.gpu.snapshot import bandwidth_from_bus
from tests.fake_pynvml import (
    GiB,
    MiB,
    NVMLError_DriverNotLoaded,
    NVMLError_GpuIsLost,
    a100_80gb,
    install,
    rtx_4090_desktop,
)


@pytest.fixture
def fake_proc(tmp_path):
    for pid, argv in ((2101, [b"/usr/lib/xorg/Xorg", b"vt2", b"-displayfd", b"3"]), (3377, [b"/opt/google/chrome/chrome", b"--type=gpu-process"])):
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    return tmp_path


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def probe(monkeypatch, fake_proc, devices, mode="nvml", **kw):
    fake = install(monkeypatch, devices)
    clock = Clock()
    settings = load_settings(gpu=mode, **kw)
    return GpuProbe(settings, nvml=NvmlReader(ProcReader(fake_proc)), clock=clock), fake, clock


def test_bandwidth_from_bus_matches_datasheets():
    assert bandwidth_from_bus(384, 10501) == pytest.approx(1008e9, rel=1e-3)  # RTX 4090: 1008 GB/s
    assert bandwidth_from_bus(5120, 1512) == pytest.approx(1935e9, rel=1e-3)  # A100 80GB PCIe: 1935 GB/s


def test_reads_devices_and_processes(monkeypatch, fake_proc):
    p, _, _ = probe(monkeypatch, fake_proc, [rtx_4090_desktop(), a100_80gb()])
    snap = p.snapshot()
    assert snap.source == "nvml" and snap.problem is None and snap.includes_ollama
    g0, g1 = snap.gpus
    assert (g0.index, g0.name, g0.total, g0.free) == (0, "NVIDIA GeForce RTX 4090", 24564 * MiB, (24564 - 1516) * MiB)
    assert g0.uuid.startswith("GPU-5e3b") and g0.compute_capability == (8, 9)
    assert g1.total == 80 * GiB
    me = pwd.getpwuid(os.getuid()).pw_name
    procs = {pr.pid: pr for pr in g0.processes}
    assert procs[2101].used_bytes == 1102 * MiB
    assert procs[2101].user == me
    assert procs[2101].command == "/usr/lib/xorg/Xorg vt2 -displayfd 3"
    assert procs[3377].command.startswith("/opt/google/chrome/chrome")


def test_burst_costs_one_nvml_read(monkeypatch, fake_proc):
    p, fake, clock = probe(monkeypatch, fake_proc, [rtx_4090_desktop()], gpu_cache_ttl=0.5)
    for _ in range(20):
        p.snapshot()
    assert fake.memory_reads == 1
    fake.devices[0].used += 4 * GiB
    clock.now += 0.6
    assert p.snapshot().gpus[0].free == (24564 - 1516) * MiB - 4 * GiB
    assert fake.memory_reads == 2


def test_nvml_missing_is_stated(monkeypatch, fake_proc):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    p = GpuProbe(load_settings(gpu="auto"), nvml=NvmlReader(ProcReader(fake_proc)))
    with capture_logs() as logs:
        snap = p.start()
    assert snap.gpus == () and "NVML is not available" in snap.problem
    assert any(e["event"] == "gpus.none" and "NVML" in e["problem"] for e in logs)


def test_nvml_driver_not_loaded(monkeypatch, fake_proc):
    p, fake, _ = probe(monkeypatch, fake_proc, [rtx_4090_desktop()], mode="auto")
    fake.fail_init = NVMLError_DriverNotLoaded()
    snap = p.snapshot()
    assert snap.gpus == ()
    assert snap.problem == "NVML could not start: NVMLError_DriverNotLoaded: Driver Not Loaded"
    assert not snap.transient  # a missing driver does not fix itself: decisions say 507, not "retry"


def test_nvml_failing_later_then_recovering(monkeypatch, fake_proc):
    p, fake, clock = probe(monkeypatch, fake_proc, [rtx_4090_desktop()], gpu_cache_ttl=0)
    assert p.snapshot().gpus
    fake.fail_reads = NVMLError_GpuIsLost()
    with capture_logs() as logs:
        snap = p.snapshot()
    assert snap.gpus == () and "GPU is lost" in snap.problem and snap.transient
    assert [e["event"] for e in logs] == ["gpus.nvml_failed"]
    fake.fail_reads = None
    assert p.snapshot().gpus


def test_static_and_none(monkeypatch):
    s = load_settings(gpu="static", static_gpus=[{"name": "RTX 4090", "total": "24GiB", "free": "22GiB", "bandwidth": "1008GB/s"}])
    snap = GpuProbe(s).snapshot()
    assert snap.source == "static" and not snap.includes_ollama
    (g,) = snap.gpus
    assert (g.name, g.total, g.free, g.bandwidth) == ("RTX 4090", 24 * GiB, 22 * GiB, 1.008e12)
    none = GpuProbe(load_settings(gpu="none")).snapshot()
    assert none.gpus == () and "VRAMGATE_GPU=none" in none.problem
