"""The gate reading live GPU memory through the fake ``pynvml``, and the closed loop after loads."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import sys

import pytest

from proxy.gate.service import Gate, build_admission
from proxy.gpu.probe import GpuProbe, NvmlReader, ProcReader
from tests.emulator import Emulator
from tests.emulator_gate import GiB, GpuModel, small_and_big
from tests.fake_pynvml import NVMLError_GpuIsLost, install, rtx_4090_desktop
from tests.test_gate_loads import CUDA, FREE, STATIC, footprint_size, post


async def eventually(predicate, timeout: float = 2.0) -> bool:
    """Poll for something the emulator does not signal (a file vramgate writes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.fixture
def emulator() -> Emulator:
    return small_and_big()


@pytest.fixture
def fake_proc(tmp_path):
    d = tmp_path / "2101"
    d.mkdir()
    (d / "cmdline").write_bytes(b"/usr/lib/xorg/Xorg\0vt2\0-displayfd\0003\0")
    return tmp_path


def nvml_gate(proc_root):
    def factory(settings, session):
        return Gate(settings, session, probe=GpuProbe(settings, nvml=NvmlReader(ProcReader(proc_root))))

    return factory


async def test_nvml_fits_and_refusal_names_processes(start_proxy, emulator, monkeypatch, fake_proc):
    install(monkeypatch, [rtx_4090_desktop()])
    url = await start_proxy(admission_factory=nvml_gate(fake_proc), gpu="nvml")
    status, headers, _ = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False})
    assert status == 200 and headers["X-Vramgate-Decision"] == "admitted num_ctx=32768 num_gpu=33"
    status, _, body = await post(url, "/api/generate", {"model": "llama3:70b", "prompt": "hi"})
    assert status == 507
    me = pwd.getpwuid(os.getuid()).pw_name
    text = body["error"]
    assert "GPU 0 (NVIDIA GeForce RTX 4090, 24.0 GiB) has 22.5 GiB free" in text
    assert f"process 2101 (user {me}, /usr/lib/xorg/Xorg vt2 -displayfd 3) 1.1 GiB on GPU 0" in text
    assert "process 3377 (?) 402.0 MiB on GPU 0" in text  # not visible in /proc: said so, not hidden
    assert body["vramgate"]["gpus"][0]["bandwidth"] == "1.01 TB/s"


async def test_nvml_missing_is_stated_in_the_decision(start_proxy, emulator, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    url = await start_proxy(admission_factory=build_admission, gpu="auto")
    status, headers, body = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi"})
    assert status == 507 and "Retry-After" not in headers
    assert body["error"].startswith("vramgate refused to load llama3:8b: there is no usable GPU to load it on"
                                    " (NVML is not available: the pynvml module cannot be imported")
    assert body["vramgate"]["reason"] == "no_gpu"
    assert emulator.received("/api/generate") == []
    allow = await start_proxy(admission_factory=build_admission, gpu="auto", on_no_gpu="allow")
    raw = b'{"model": "llama3:8b", "prompt": "hi", "stream": false}'
    status, headers, _ = await post(allow, "/api/generate", raw)
    assert status == 200 and headers["X-Vramgate-Decision"] == "no_gpu_allowed"
    assert emulator.received("/api/generate")[-1].body == b'{"model":"llama3:8b","prompt":"hi","stream":false}'


async def test_nvml_failing_after_start(start_proxy, emulator, monkeypatch, fake_proc):
    fake = install(monkeypatch, [rtx_4090_desktop()])
    url = await start_proxy(admission_factory=nvml_gate(fake_proc), gpu="nvml", gpu_cache_ttl=0)
    fake.fail_reads = NVMLError_GpuIsLost()
    status, headers, body = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi"})
    assert status == 503 and headers["Retry-After"] == "30"
    assert body["error"].startswith("vramgate refused to load llama3:8b: it cannot read GPU memory (NVML failed"
                                    " reading the GPUs: NVMLError_GpuIsLost: GPU is lost)")
    fake.fail_reads = None
    status, _, _ = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False})
    assert status == 200


async def test_no_gpu_mode_refuses_with_507(start_proxy, emulator):
    url = await start_proxy(admission_factory=build_admission, gpu="none")
    status, _, body = await post(url, "/api/chat", {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]})
    assert status == 507 and "there is no usable GPU to load it on (VRAMGATE_GPU=none" in body["error"]


@pytest.mark.parametrize("unload", [True, False])
async def test_closed_loop_detects_a_spill(start_proxy, emulator, tmp_path, unload):
    # The real load is 14 GiB bigger than predicted (e.g. an architecture the estimator gets wrong):
    # a /v1 request (automatic num_gpu) lets Ollama spill it to system RAM.
    GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA, spill_extra={"llama3:8b": 14 * GiB}).install()
    audit = tmp_path / "audit.jsonl"
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC,
                            unload_on_spill=unload, audit_file=str(audit))
    chat = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    status, _, _ = await post(url, "/v1/chat/completions", chat)
    assert status == 200
    runner = emulator.runners["llama3:8b"]
    assert runner.size_vram < runner.size  # it did spill
    assert await eventually(lambda: audit.exists() and b"load.spilled" in audit.read_bytes())
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    (spilled,) = [e for e in events if e["event"] == "load.spilled"]
    assert spilled["observed_size"] == runner.size and spilled["observed_size_vram"] == runner.size_vram
    assert spilled["predicted_bytes"] < runner.size - 13 * GiB
    if unload:
        assert await emulator.wait_for(lambda: "llama3:8b" not in emulator.runners)
        assert emulator.received("/api/generate")[-1].json == {"model": "llama3:8b", "keep_alive": 0}
    else:
        assert "llama3:8b" in emulator.runners and emulator.received("/api/generate") == []
        return
    # the observed size corrects the next prediction: now it is refused instead of spilling again
    status, _, body = await post(url, "/v1/chat/completions", chat)
    assert status in (503, 507)
    correction = body["vramgate"]["need"]["learned_correction_bytes"]
    assert 13 * GiB < correction <= 14 * GiB  # observed minus predicted (predicted assumed a bigger batch)
    assert correction <= body["vramgate"]["need"]["other_bytes"]
    assert "its last load took beyond the estimate" in body["error"]["message"]
    assert [e["event"] for e in events].count("load.admitted") == 1
