"""The fit gate on an emulated GPU that charges each load what llama.cpp itself allocates.

The other gate tests charge loads with vramgate's own estimate, which cannot catch an estimator
that is low. Here the emulated Ollama serves the oracle's real-shaped models (their GGUF metadata
as ``/api/show``), and its GPU charges every load llama.cpp's measured buffers (the oracle's
probe, at the context vramgate forwarded and the batch and flash attention Ollama 0.33 would
launch llama-server with) plus a CUDA context. The reserve is cut to 256 MiB, so an estimate more
than that below llama.cpp's allocation makes a load spill, and the test fails.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from proxy.gate.service import build_admission
from tests.emulator import Emulator, LoadOptions
from tests.emulator_gate import GiB, GpuModel, MiB
from tests.oracle.gguf_meta import read_metadata
from tests.oracle.measure import measure
from tests.oracle.models import build
from tests.oracle.show import show_response

pytestmark = pytest.mark.oracle
pytest_plugins = ["tests.oracle.fixtures"]  # the session `oracle` fixture: builds llama.cpp when missing

# the oracle's real-shaped models (weights as sparse files), by the name the emulator serves them under
MODELS = {
    "llama3-shape:8b": "llama",  # 32 blocks, 4096 wide, GQA, 128k vocabulary, untied
    "gemma3-shape:12b": "gemma3",  # sliding-window layers, tied embeddings
    "gpt-oss-shape:20b": "gpt-oss",  # MoE, alternating SWA
    "deepseek2-shape:16b": "deepseek2",  # MLA cache
    "qwen2-shape:7b": "qwen2",
    "phi3-shape:mini": "phi3",
}
FREE = 14 * GiB  # what the static GPU leaves free for Ollama: small enough that memory, not the
RESERVE = 256 * MiB  # trained context, limits the longest contexts, so the estimate decides them
CUDA = 500 * MiB
STATIC = [{"name": "RTX A4000", "total": "16GiB", "free": "14GiB", "bandwidth": "448GB/s"}]
SLACK = 64 * MiB  # compute buffers are estimated within ~9 % (a few tens of MiB at these shapes)


def ollama_batch(num_ctx: int) -> int:
    """Ollama >= 0.30 with flash attention (on by default on a modern GPU): 512 up to 4k tokens,
    1024 up to 32k, 2048 beyond (llm/llama_server.go)."""
    return 512 if num_ctx <= 4096 else 1024 if num_ctx <= 32768 else 2048


def host_bytes(path: Path) -> int:
    """The input embeddings llama.cpp keeps in host memory at full offload (the output layer, or its
    copy of tied embeddings, is on the GPU): sized with the gguf package's own quant table."""
    _, tensors = read_metadata(path)
    tensor_names = {t.name for t in tensors}
    if "output.weight" not in tensor_names:
        return 0  # tied: the GPU holds the output copy, as large as what stays on the host
    (embd,) = [t for t in tensors if t.name == "token_embd.weight"]
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[embd.type_name]]
    elements = 1
    for n in embd.shape:
        elements *= n
    return elements // block * size


class LlamaCppGpu:
    """Load sizes as llama.cpp allocates them on the GPU (model less host inputs, KV, compute)."""

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.measured: list[tuple[str, int, int]] = []  # (model, num_ctx, bytes)

    def __call__(self, name: str, wanted: LoadOptions) -> int:
        path = self.paths[name]
        m = measure(path, wanted.num_ctx, flash_attention=True, n_batch=ollama_batch(wanted.num_ctx))
        size = m.model_bytes - host_bytes(path) + m.context_bytes + m.compute_bytes
        self.measured.append((name, wanted.num_ctx, size))
        return size


@pytest.fixture(scope="module")
def paths() -> dict[str, Path]:
    return {name: build(arch, "real")[1] for name, arch in MODELS.items()}


@pytest.fixture
def emulator(paths) -> Emulator:
    emu = Emulator(default_num_ctx=32768)  # Ollama 0.33 on a 24 GiB GPU
    for name, path in paths.items():
        emu.add_model(name, show_response(path, verbose=True))
    return emu


async def generate(url: str, model: str, num_ctx: int) -> tuple[int, dict]:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_ctx": num_ctx}}
    async with aiohttp.ClientSession() as s, s.post(url + "/api/generate", json=body) as r:
        await r.read()
        return r.status, dict(r.headers)


@pytest.mark.parametrize("model", list(MODELS))
async def test_the_longest_context_admitted_never_spills_by_llama_cpps_own_numbers(
        oracle, start_proxy, emulator, paths, model, tmp_path):
    sizes = LlamaCppGpu(paths)
    gpu = GpuModel(emulator, FREE, sizes, cuda_context=CUDA, margin=RESERVE).install()
    audit = tmp_path / "audit.jsonl"
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC,
                            reserve=RESERVE, cuda_context=CUDA, audit_file=audit)
    trained = emulator.models[model].trained_context
    status, headers = await generate(url, model, trained)
    assert status == 200, headers
    ((_, admitted_ctx, real),) = sizes.measured
    assert 2048 <= admitted_ctx <= trained
    runner = emulator.runners[model]
    assert gpu.ooms == [] and runner.size_vram == runner.size, (model, admitted_ctx, real)
    assert real + CUDA <= FREE  # what llama.cpp allocates fits the GPU with its CUDA context
    (decision,) = [json.loads(line) for line in audit.read_text().splitlines()
                   if json.loads(line)["event"] in ("load.admitted", "load.rewritten")]
    # and vramgate's own prediction for that load was not below llama.cpp's allocation
    assert real + CUDA <= decision["need_bytes"] + SLACK, (model, admitted_ctx, real, decision["need_bytes"])


async def test_concurrent_loads_never_overcommit_by_llama_cpps_own_numbers(oracle, start_proxy, emulator,
                                                                             paths):
    sizes = LlamaCppGpu(paths)
    gpu = GpuModel(emulator, FREE, sizes, cuda_context=CUDA, margin=RESERVE).install()
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC,
                            reserve=RESERVE, cuda_context=CUDA)
    # together about 45 GiB at 8192 tokens on 14 GiB: most must wait
    statuses = await asyncio.gather(*(generate(url, m, 8192) for m in MODELS))
    codes = [s for s, _ in statuses]
    assert set(codes) <= {200, 503}, statuses
    assert 1 <= codes.count(200) < len(MODELS)
    assert gpu.ooms == [] and all(r.size_vram == r.size for r in emulator.runners.values())
    assert gpu.peak <= FREE  # never more than the GPU has, by llama.cpp's allocation
