"""Decode speed from memory bandwidth: one token streams the active weights and the KV once.

time/token = bytes read on the GPU / GPU bandwidth + bytes read in host memory / host bandwidth.
llama.cpp offloads layers from the end, so with ``host_layers = k`` the first k repeating layers
(and their KV) are read from system RAM. MoE layers read only ``expert_used / expert_count`` of
their routed-expert tensors. The result is an upper bound: real kernels reach roughly 50-80 %
of peak bandwidth at batch 1.
"""

from __future__ import annotations

from functools import lru_cache

from proxy.footprint.estimate import Footprint, _weights
from proxy.footprint.model import ModelDescription


@lru_cache(maxsize=512)
def active_layer_bytes(model: ModelDescription) -> tuple[int, ...]:
    """Weight bytes one decode step reads from each repeating layer."""
    dense = [0] * model.block_count
    expert = [0] * model.block_count
    for t in model.tensors:
        blk = t.block
        if blk is None or blk >= model.block_count or t.is_projector:
            continue
        if t.is_expert:
            expert[blk] += t.nbytes
        else:
            dense[blk] += t.nbytes
    frac = 1.0
    if model.expert_count and model.expert_used_count:
        frac = min(1.0, model.expert_used_count / model.expert_count)
    return tuple(int(d + e * frac) for d, e in zip(dense, expert))


def decode_tokens_per_s(
    model: ModelDescription,
    footprint: Footprint,
    gpu_bandwidth: float,
    host_bandwidth: float,
    host_layers: int = 0,
) -> float:
    """Predicted single-sequence decode tokens/s (bandwidths in bytes/s)."""
    if gpu_bandwidth <= 0 or host_bandwidth <= 0:
        raise ValueError("bandwidths must be positive")
    active = active_layer_bytes(model)
    n = model.block_count
    host_layers = max(0, min(host_layers, n + 1))
    weights = _weights(model)
    # one sequence reads its own KV stream: a layer's KV (+ state) divided by the streams
    streams = max(1, footprint.cells // max(1, footprint.num_ctx))
    kv_layer = [(lb - w) // streams for lb, w in zip(footprint.layer_bytes, weights.per_layer)]
    gpu = host = 0.0
    for il in range(n):
        read = active[il] + kv_layer[il]
        if il < host_layers:
            host += read
        else:
            gpu += read
    # the output layer is the (block_count + 1)-th layer; it moves to the host last
    if host_layers > n:
        host += weights.output_layer
    else:
        gpu += weights.output_layer
    seconds = gpu / gpu_bandwidth + host / host_bandwidth
    return 1.0 / seconds if seconds > 0 else float("inf")
