"""The bridge from a model description to the decision's inputs, shared by the gate and ``plan``.

Both must size a load the same way (one answer for one question), so the footprint function the
decision calls, the model facts it reads and the speed estimate are built here, from the model's
description and the Ollama server's settings, and nowhere else. Pure.
"""

from __future__ import annotations

from proxy.footprint import ModelDescription, RunConfig, decode_tokens_per_s, estimate
from proxy.footprint.rules import RuleSet, rules_for_ollama
from proxy.gate.decision import FootprintLike, ModelFacts, Sizer, Speed
from proxy.ollama.versions import ServerSettings


def model_facts(key: str, desc: ModelDescription) -> ModelFacts:
    return ModelFacts(key, desc.layers, desc.context_length, desc.is_embedding, dict(desc.parameters),
                      desc.architecture)


def rules_for(server: ServerSettings) -> RuleSet:
    """The llama.cpp allocation rules of the Ollama version the server reports (newest when unknown)."""
    return rules_for_ollama(server.version)


def run_for(server: ServerSettings, num_ctx: int, parallel: int, num_batch: int,
            rules: RuleSet | None = None) -> RunConfig:
    """One load as Ollama launches llama-server for it (batch = ubatch), under its version's rules."""
    kv = server.kv_cache_type
    return RunConfig(num_ctx=num_ctx, parallel=parallel, kv_type_k=kv, kv_type_v=kv,
                     flash_attention=server.flash_attention, num_batch=num_batch, num_ubatch=num_batch,
                     rules=rules or rules_for(server))


def sizer_for(desc: ModelDescription, server: ServerSettings) -> Sizer:
    """Footprint at (num_ctx, parallel, num_batch) as Ollama launches llama-server (batch = ubatch)."""
    rules = rules_for(server)

    def size(num_ctx: int, parallel: int, num_batch: int) -> FootprintLike:
        return estimate(desc, run_for(server, num_ctx, parallel, num_batch, rules))

    return size


def speed_for(desc: ModelDescription, host_bandwidth: float) -> Speed:
    """Decode tokens/s with some layers on the host (for refusals that say what spilling would cost)."""

    def speed(fp: FootprintLike, gpu_bandwidth: float, host_layers: int) -> float | None:
        if gpu_bandwidth <= 0 or host_bandwidth <= 0:
            return None
        return decode_tokens_per_s(desc, fp, gpu_bandwidth, host_bandwidth, host_layers)  # type: ignore[arg-type]

    return speed
