"""Decode-speed roofline: bytes read per token over bandwidth, worked out by hand for a toy model."""

from __future__ import annotations

import pytest

from proxy.footprint import RunConfig, decode_tokens_per_s, estimate
from proxy.footprint.describe import describe
from proxy.footprint.model import Tensor

E, V, F = 1024, 1000, 4096


def model(experts: int = 0, used: int = 0):
    arch = "llama"
    meta = {
        "general.architecture": arch, f"{arch}.block_count": 2, f"{arch}.context_length": 8192,
        f"{arch}.embedding_length": E, f"{arch}.attention.head_count": 8, f"{arch}.attention.head_count_kv": 8,
        f"{arch}.feed_forward_length": F,
    }
    if experts:
        meta |= {f"{arch}.expert_count": experts, f"{arch}.expert_used_count": used}
    tensors = [Tensor("token_embd.weight", "F16", (E, V)), Tensor("output.weight", "F16", (E, V)),
               Tensor("output_norm.weight", "F32", (E,))]
    for i in range(2):
        tensors.append(Tensor(f"blk.{i}.attn_q.weight", "F16", (E, E)))
        if experts:
            tensors.append(Tensor(f"blk.{i}.ffn_up_exps.weight", "F16", (E, F, experts)))
        else:
            tensors.append(Tensor(f"blk.{i}.ffn_up.weight", "F16", (E, F)))
    return describe(meta, tensors)


OUTPUT = E * V * 2 + E * 4
ATTN = E * E * 2
KV_PER_LAYER = 1024 * E * 2 * 2  # 1024 cells, K and V of 8 heads x 128, f16


def test_dense_full_offload():
    m = model()
    fp = estimate(m, RunConfig(num_ctx=1024))
    per_token = 2 * (ATTN + E * F * 2 + KV_PER_LAYER) + OUTPUT
    assert decode_tokens_per_s(m, fp, 1e12, 1e11) == pytest.approx(1e12 / per_token)


def test_moe_reads_only_the_used_experts():
    m = model(experts=8, used=2)
    fp = estimate(m, RunConfig(num_ctx=1024))
    per_token = 2 * (ATTN + E * F * 8 * 2 * 2 // 8 + KV_PER_LAYER) + OUTPUT
    assert decode_tokens_per_s(m, fp, 1e12, 1e11) == pytest.approx(1e12 / per_token)


def test_layers_in_host_memory_are_read_at_host_speed():
    m = model()
    fp = estimate(m, RunConfig(num_ctx=1024))
    layer = ATTN + E * F * 2 + KV_PER_LAYER
    expected = 1 / (layer / 1e11 + (layer + OUTPUT) / 1e12)
    assert decode_tokens_per_s(m, fp, 1e12, 1e11, host_layers=1) == pytest.approx(expected)
    all_host = 1 / ((2 * layer + OUTPUT) / 1e11)
    assert decode_tokens_per_s(m, fp, 1e12, 1e11, host_layers=3) == pytest.approx(all_host)


def test_one_sequence_reads_its_own_kv_stream():
    m = model()
    one = decode_tokens_per_s(m, estimate(m, RunConfig(num_ctx=1024)), 1e12, 1e11)
    four = decode_tokens_per_s(m, estimate(m, RunConfig(num_ctx=1024, parallel=4)), 1e12, 1e11)
    assert four == pytest.approx(one)


def test_bandwidth_must_be_positive():
    m = model()
    with pytest.raises(ValueError):
        decode_tokens_per_s(m, estimate(m, RunConfig(num_ctx=1024)), 0, 1e11)
