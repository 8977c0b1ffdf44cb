"""GPU memory on top of the Ollama emulator, for the fit gate's end-to-end tests.

``GpuModel`` is an ``on_load`` hook that behaves like Ollama >= 0.30 on one GPU: a load needs its
llama.cpp buffers plus a CUDA context; idle runners are evicted to make room; a load with an
explicit ``num_gpu`` that still does not fit fails with Ollama's out-of-memory error, and an
automatic one spills (``size_vram < size``). It records the peak memory held, so a test can
check that vramgate never admitted more than the GPU has.

Also realistic model shapes (``show_*``) built with the emulator's ``make_show``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.emulator import Emulator, LoadOptions, LoadResult, make_show, oom_error

GiB = 1024**3
MiB = 1024**2


def show_llama3_8b(**kw: Any) -> dict[str, Any]:
    """Llama 3.1 8B Q4_K: 32 blocks, 4096 wide, GQA 32/8, 128k trained context (~4.3 GiB of weights)."""
    return make_show(arch="llama", block_count=32, embedding_length=4096, feed_forward_length=14336, head_count=32,
                     head_count_kv=8, context_length=131072, vocab_size=128256, weight_type="Q4_K",
                     quantization_level="Q4_K_M", **kw)


def show_llama3_70b(**kw: Any) -> dict[str, Any]:
    """Llama 3.1 70B Q4_K: 80 blocks, 8192 wide (~37 GiB of weights): never fits one 24 GiB GPU."""
    return make_show(arch="llama", block_count=80, embedding_length=8192, feed_forward_length=28672, head_count=64,
                     head_count_kv=8, context_length=131072, vocab_size=128256, weight_type="Q4_K",
                     quantization_level="Q4_K_M", **kw)


def show_mid(blocks: int, **kw: Any) -> dict[str, Any]:
    """A 3B-class llama (2048 wide) with a chosen depth: sizes from ~0.5 to ~2.5 GiB."""
    return make_show(arch="llama", block_count=blocks, embedding_length=2048, feed_forward_length=8192, head_count=16,
                     head_count_kv=8, context_length=32768, vocab_size=32000, weight_type="Q4_K",
                     quantization_level="Q4_K_M", **kw)


@dataclass
class GpuModel:
    """One GPU of ``capacity`` bytes (what is free for Ollama), shared by the emulator's runners."""

    emulator: Emulator
    capacity: int
    size_of: Callable[[str, LoadOptions], int]  # llama.cpp buffers of a full-GPU load
    cuda_context: int = 500 * MiB
    margin: int = 0  # idle runners are evicted to keep this much free (llama.cpp's fit target)
    spill_extra: dict[str, int] = field(default_factory=dict)  # model -> bytes the real load exceeds size_of by
    peak: int = 0
    ooms: list[str] = field(default_factory=list)
    evictions: list[str] = field(default_factory=list)

    def install(self) -> GpuModel:
        self.emulator.on_load = self.on_load
        return self

    def held(self) -> int:
        return sum(r.size_vram + self.cuda_context for r in self.emulator.runners.values() if r.size_vram)

    def on_load(self, name: str, wanted: LoadOptions) -> LoadResult:
        size = self.size_of(name, wanted) + self.spill_extra.get(name, 0)
        need = size + self.cuda_context
        for other, runner in sorted(self.emulator.runners.items(), key=lambda kv: kv[1].expires_at):
            if self.held() + need <= self.capacity - self.margin:
                break
            if runner.busy == 0 and other != name:
                del self.emulator.runners[other]
                self.emulator.unloads.append(other)
                self.evictions.append(other)
        room = self.capacity - self.held() - self.cuda_context
        if size <= room:
            result = LoadResult(size=size, size_vram=size)
        elif wanted.num_gpu >= 0:
            self.ooms.append(name)
            raise oom_error(f"{name}: cudaMalloc failed: out of memory")
        else:
            result = LoadResult(size=size, size_vram=max(0, room))
        self.peak = max(self.peak, self.held() + result.size_vram + self.cuda_context)
        return result


def estimated_size(emu: Emulator) -> Callable[[str, LoadOptions], int]:
    """Load sizes as llama.cpp would allocate them (batch 512), from the footprint estimator."""
    from proxy.footprint import RunConfig, description_from_show, estimate

    def size(name: str, wanted: LoadOptions) -> int:
        desc = description_from_show(emu.models[name].show_response(True))
        return estimate(desc, RunConfig(num_ctx=wanted.num_ctx)).gpu_total_bytes

    return size


def small_and_big() -> Emulator:
    """Ollama 0.33 on a 24 GiB GPU (32k default context) with llama3:8b, which fits, and
    llama3:70b, which never does: the world of most gate tests."""
    emu = Emulator(default_num_ctx=32768)
    emu.add_model("llama3:8b", show_llama3_8b())
    emu.add_model("llama3:70b", show_llama3_70b())
    return emu


def demo_emulator(free: int = 22 * GiB) -> Emulator:
    """The catalogue used for demos: an 8B that fits a 24 GiB GPU, a 70B that never does."""
    emu = Emulator(default_num_ctx=32768)
    emu.add_model("llama3.1:8b", show_llama3_8b())
    emu.add_model("llama3.1:70b", show_llama3_70b())
    GpuModel(emu, free, estimated_size(emu), margin=1 * GiB).install()
    return emu


async def _serve_forever(port: int) -> None:
    import asyncio

    from tests.emulator import serve

    running = await serve(demo_emulator().app(), port=port)
    print(f"Ollama emulator on {running.url} with llama3.1:8b and llama3.1:70b", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await running.close()


if __name__ == "__main__":  # python -m tests.emulator_gate [PORT]: an emulated Ollama for trying vramgate
    import asyncio
    import sys

    asyncio.run(_serve_forever(int(sys.argv[1]) if len(sys.argv) > 1 else 11434))
