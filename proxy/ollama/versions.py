"""The upstream Ollama server's own settings, which decide how big a load is.

Ollama has no API for its environment (parallel slots, KV cache type, flash attention, default
context), so vramgate reads the same ``OLLAMA_*`` variables (see ``proxy.settings``) and the
server's version, whose default-context rule changed twice. The rules here are pure functions of
those inputs; only ``fetch_version`` talks to the network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

GiB = 1024**3
Version = tuple[int, int, int]
UNKNOWN_VERSION: Version = (99, 0, 0)  # a server that hides its version is treated as current


def parse_version(text: str) -> Version:
    """'0.15.5', 'v0.30.0-rc2', '0.0.0' (source build) -> a comparable tuple."""
    match = re.match(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return UNKNOWN_VERSION
    version = (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
    return UNKNOWN_VERSION if version == (0, 0, 0) else version


def default_num_ctx(version: Version, gpu_totals: list[int], gpu_overhead: int, context_length: int) -> int:
    """The context a load gets when neither request nor Modelfile sets one.

    OLLAMA_CONTEXT_LENGTH wins; from 0.15.5 the tier is chosen from the *total* VRAM of all GPUs
    minus OLLAMA_GPU_OVERHEAD per GPU; 4096 from 0.6.7; 2048 before.
    """
    if context_length > 0:
        return context_length
    if version >= (0, 15, 5):
        vram = sum(max(0, t - gpu_overhead) for t in gpu_totals)
        if vram >= 47 * GiB:
            return 262144
        if vram >= 23 * GiB:
            return 32768
        return 4096
    if version >= (0, 6, 7):
        return 4096
    return 2048


# Ollama runs these with one slot whatever OLLAMA_NUM_PARALLEL says (server/sched.go), like embedding models.
SINGLE_SLOT_ARCHITECTURES = frozenset({
    "mllama", "qwen3vl", "qwen3vlmoe", "qwen35", "qwen35moe", "qwen3next", "lfm2", "lfm2moe",
    "nemotron_h", "nemotron_h_moe", "nemotron_h_omni",
})


def parallel_for(architecture: str, is_embedding: bool, parallel: int) -> int:
    return 1 if is_embedding or architecture in SINGLE_SLOT_ARCHITECTURES else parallel


def default_num_batch(version: Version, is_embedding: bool, num_ctx: int, flash_attention: bool, gpu_total: int) -> int:
    """The batch Ollama picks when nobody set ``num_batch`` (it scales the compute buffer).

    From 0.30 Ollama picks 512/1024/2048 by context and steps down only when memory is tight;
    vramgate assumes the larger value, which errs on the side of not spilling.
    """
    if is_embedding:
        return min(2048, num_ctx)
    if version < (0, 30, 0):
        return 512
    if not flash_attention:
        return 256 if num_ctx > 4096 and gpu_total <= 8 * GiB else 512
    if num_ctx <= 4096:
        return 512
    if num_ctx <= 32768:
        return 1024
    return 2048


@dataclass(frozen=True)
class ServerSettings:
    version: Version
    version_text: str
    parallel: int
    kv_cache_type: str
    flash_attention: bool
    context_length: int  # 0 = the version's rule
    gpu_overhead: int

    def default_num_ctx(self, gpu_totals: list[int]) -> int:
        return default_num_ctx(self.version, gpu_totals, self.gpu_overhead, self.context_length)


class ServerConfig(Protocol):
    """The settings that mirror the Ollama server's own (vramgate's Settings has them)."""

    @property
    def flash_attention(self) -> str: ...
    @property
    def num_parallel(self) -> int: ...
    @property
    def kv_cache_type(self) -> str: ...
    @property
    def context_length(self) -> int: ...
    @property
    def gpu_overhead(self) -> int: ...


def server_settings(settings: ServerConfig, version_text: str, gpus_support_fa: bool = True) -> ServerSettings:
    """Flash attention 'auto' is on where every GPU supports it (CUDA compute >= 6, assumed with NVML)."""
    fa = {"on": True, "off": False}.get(settings.flash_attention, gpus_support_fa)
    return ServerSettings(
        version=parse_version(version_text),
        version_text=version_text or "unknown",
        parallel=settings.num_parallel,
        kv_cache_type=settings.kv_cache_type,
        flash_attention=fa,
        context_length=settings.context_length,
        gpu_overhead=settings.gpu_overhead,
    )
