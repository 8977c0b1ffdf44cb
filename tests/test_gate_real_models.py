"""Recorded /api/show answers of real models (tests/data) through the gate on a 24 GiB GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import GpuModel, estimated_size
from tests.test_gate_loads import CUDA, FREE, RESERVE, STATIC, post

DATA = Path(__file__).parent / "data"
# name -> (fixture, layers = block_count + 1)
MODELS = {
    "llama3.1:8b": ("show-llama3.1-8b-q4_K_M.json", 33),
    "qwen3:30b-a3b": ("show-qwen3moe-30b-a3b-q4_K_M.json", 49),
    "gpt-oss:20b": ("show-gpt-oss-20b.json", 25),
    "gemma3:12b": ("show-gemma3-12b-q4_K_M.json", 49),
    "deepseek-v2:16b": ("show-deepseek-v2-lite-q4_K_M.json", 28),
}


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator(default_num_ctx=32768)
    for name, (fixture, _) in MODELS.items():
        emu.add_model(name, json.loads((DATA / fixture).read_text()))
    return emu


@pytest.mark.parametrize("name", list(MODELS))
async def test_longest_context_is_fitted_or_admitted(start_proxy, emulator, name):
    gpu = GpuModel(emulator, FREE, estimated_size(emulator), cuda_context=CUDA, margin=RESERVE).install()
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC)
    trained = emulator.models[name].trained_context
    status, headers, _ = await post(url, "/api/generate", {"model": name, "prompt": "hi", "stream": False,
                                                          "options": {"num_ctx": trained}})
    assert status == 200, headers
    (sent,) = [r.json for r in emulator.received("/api/generate")]
    assert sent["options"]["num_gpu"] == MODELS[name][1]
    ctx = sent["options"]["num_ctx"]
    assert 2048 <= ctx <= trained
    if ctx < trained:
        assert headers["X-Vramgate-Num-Ctx"] == f"{trained} -> {ctx} (GPU memory)"
    runner = emulator.runners[name]
    assert runner.size_vram == runner.size and gpu.ooms == []
    assert gpu.held() <= FREE - RESERVE
