"""No overcommit: many simultaneous loads of different models never exceed the GPU budget."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import GpuModel, show_mid
from tests.test_gate_loads import CUDA, FREE, RESERVE, STATIC, footprint_size

MODELS = [f"m{i}" for i in range(50)]


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator(default_num_ctx=32768, load_delay=0.01)
    for i, name in enumerate(MODELS):
        emu.add_model(name, show_mid(6 + i % 25))  # ~0.7 to ~2.7 GiB each, ~85 GiB together
    return emu


async def test_fifty_concurrent_loads_never_exceed_the_budget(start_proxy, emulator):
    gpu = GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA, margin=RESERVE).install()
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC)

    async def load(session: aiohttp.ClientSession, name: str) -> int:
        body = {"model": name, "prompt": "hi", "stream": False, "options": {"num_ctx": 4096}}
        async with session.post(url + "/api/generate", json=body) as r:
            await r.read()
            return r.status

    async with aiohttp.ClientSession() as s:
        statuses = await asyncio.gather(*(load(s, n) for n in MODELS))

    assert set(statuses) <= {200, 503}, statuses
    admitted = statuses.count(200)
    assert 5 <= admitted < 50  # the budget was binding: some waited, some loaded
    assert gpu.ooms == []  # no admitted load failed for memory
    assert all(r.size_vram == r.size for r in emulator.runners.values())  # and none spilled
    assert gpu.peak <= FREE - RESERVE  # never more than the budget at any moment
    assert len(emulator.loads) == admitted
    assert gpu.peak > (FREE - RESERVE) / 2  # and the GPU was really used, not refused wholesale
    assert gpu.held() <= FREE - RESERVE
