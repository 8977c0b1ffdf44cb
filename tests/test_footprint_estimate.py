"""Table tests of the footprint rules, with expected values worked out by hand from llama.cpp's rules.

Models are the realistic /api/show fixtures in tests/data (real hyper-parameters, Q4_K_M-like type mixes).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.footprint import (
    RunConfig,
    description_from_show,
    estimate,
    max_num_ctx,
    min_budget,
)
from proxy.footprint.describe import describe
from proxy.footprint.model import Tensor

DATA = Path(__file__).parent / "data"
GiB = 1024**3


def load(name: str):
    return description_from_show(json.loads((DATA / f"show-{name}.json").read_text()), name=name)


LLAMA = "llama3.1-8b-q4_K_M"
GEMMA = "gemma3-12b-q4_K_M"
GPT_OSS = "gpt-oss-20b"
DEEPSEEK = "deepseek-v2-lite-q4_K_M"
QWEN_MOE = "qwen3moe-30b-a3b-q4_K_M"


@pytest.mark.parametrize(
    "run,expected_kv",
    [
        # 32 layers x 8192 cells x (1024 K + 1024 V) x 2 bytes
        (RunConfig(num_ctx=8192), 32 * 8192 * 2048 * 2),
        (RunConfig(num_ctx=8192, kv_type_k="q8_0", kv_type_v="q8_0"), 32 * 8192 * 2 * (1024 // 32 * 34)),
        (RunConfig(num_ctx=8192, kv_type_k="q4_0", kv_type_v="q4_0"), 32 * 8192 * 2 * (1024 // 32 * 18)),
        (RunConfig(num_ctx=8192, kv_type_k="q8_0", kv_type_v="f16"), 32 * 8192 * (1088 + 2048)),
        # cells padded to 256: 1000 -> 1024
        (RunConfig(num_ctx=1000), 32 * 1024 * 4096),
        # per-sequence padding: -c 3300 -np 3 -> 3328 / 3 = 1109 -> 1280 cells per sequence
        (RunConfig(num_ctx=1100, parallel=3), 32 * 3 * 1280 * 4096),
        # Ollama caps num_ctx to the trained context (131072) before multiplying by parallel
        (RunConfig(num_ctx=200_000, parallel=2), 32 * 2 * 131072 * 4096),
    ],
)
def test_dense_kv(run, expected_kv):
    assert estimate(load(LLAMA), run).kv_bytes == expected_kv


def test_gemma3_sliding_window_layers_keep_window_plus_ubatch():
    # 48 layers, pattern 6: 8 global layers with 32768 cells, 40 window layers with 1024 + 512 = 1536
    # cells; 8 KV heads x 256 x (K + V) x 2 bytes = 8192 bytes per cell and layer
    fp = estimate(load(GEMMA), RunConfig(num_ctx=32768))
    assert fp.kv_bytes == 8 * 32768 * 8192 + 40 * 1536 * 8192
    assert fp.swa_cells == 1536


def test_sliding_window_is_never_larger_than_the_context():
    fp = estimate(load(GPT_OSS), RunConfig(num_ctx=512))  # window 128 + 512 > 512 cells
    assert fp.kv_bytes == 24 * 512 * 2048


def test_sliding_window_grows_with_ubatch():
    fp = estimate(load(GEMMA), RunConfig(num_ctx=32768, num_batch=2048, num_ubatch=2048))
    assert fp.swa_cells == 1024 + 2048


def test_gpt_oss_alternating_windows():
    # 24 layers alternate 128-token windows and full context; window cells = 128 + 512 = 640,
    # padded to 256 -> 768 (llama-kv-cache-iswa.cpp pads the SWA cache); 8 KV heads x 64 x 2 x 2
    # bytes = 2048 bytes per cell and layer
    fp = estimate(load(GPT_OSS), RunConfig(num_ctx=8192))
    assert fp.kv_bytes == 12 * 8192 * 2048 + 12 * 768 * 2048


def test_gpt_oss_windows_are_per_sequence_with_parallel():
    fp = estimate(load(GPT_OSS), RunConfig(num_ctx=8192, parallel=4))
    assert fp.kv_bytes == 4 * (12 * 8192 * 2048 + 12 * 768 * 2048)


def test_deepseek2_mla_caches_only_the_latent():
    # V-less MLA cache: K = kv_lora_rank + rope = 576 elements per cell and layer, no V
    fp = estimate(load(DEEPSEEK), RunConfig(num_ctx=4096))
    assert fp.kv_bytes == 27 * 4096 * 576 * 2


def test_full_offload_placement_untied():
    m = load(LLAMA)
    fp = estimate(m, RunConfig(num_ctx=4096))
    token_embd = 4096 // 256 * 144 * 128256  # Q4_K
    assert fp.host_weights_bytes == token_embd
    assert fp.gpu_weights_bytes == fp.weights_bytes - token_embd
    assert fp.layers == 33
    assert len(fp.layer_bytes) == 32


def test_tied_embeddings_get_a_gpu_copy_and_projector_is_separate():
    m = load(GEMMA)
    fp = estimate(m, RunConfig(num_ctx=4096))
    token_embd = 3840 // 256 * 210 * 262208  # Q6_K, also the output matrix
    projector = sum(t.nbytes for t in m.tensors if t.name.startswith(("v.", "mm.")))
    assert fp.host_weights_bytes == token_embd
    assert fp.gpu_weights_bytes == fp.weights_bytes  # everything but the projector, embeddings copied
    assert fp.projector_bytes == projector > 700 * 1024**2
    # the inline SigLIP encoder's compute buffer (clip measured 127139840 bytes with flash attention)
    assert fp.vision_compute_bytes == 127139840
    assert fp.gpu_total_bytes == (fp.gpu_weights_bytes + projector + fp.kv_bytes + fp.compute_bytes
                                  + fp.vision_compute_bytes)


def test_compute_grows_with_context_without_flash_attention():
    m = load(LLAMA)
    small = estimate(m, RunConfig(num_ctx=4096, flash_attention=False)).compute_bytes
    large = estimate(m, RunConfig(num_ctx=32768, flash_attention=False)).compute_bytes
    # the KQ scores: 512 tokens x 32 heads x 4 bytes per extra cell
    assert large - small >= (32768 - 4096) * 512 * 32 * 4


def test_flash_attention_compute_is_much_smaller_at_long_context():
    m = load(LLAMA)
    fa = estimate(m, RunConfig(num_ctx=32768)).compute_bytes
    nofa = estimate(m, RunConfig(num_ctx=32768, flash_attention=False)).compute_bytes
    assert fa < nofa / 5


def test_compute_scales_with_batch():
    m = load(LLAMA)
    b512 = estimate(m, RunConfig(num_ctx=8192)).compute_bytes
    b2048 = estimate(m, RunConfig(num_ctx=8192, num_batch=2048, num_ubatch=2048)).compute_bytes
    assert 3.5 * b512 < b2048 < 4.5 * b512


def test_min_budget_is_the_full_offload_total():
    m = load(QWEN_MOE)
    run = RunConfig(num_ctx=16384)
    assert min_budget(m, run) == estimate(m, run).gpu_total_bytes


def test_max_num_ctx_examples():
    m = load(LLAMA)
    run = RunConfig(num_ctx=131072)
    assert max_num_ctx(m, run, 10**15) == 131072  # capped at the trained context
    assert max_num_ctx(m, run, 1024) is None  # not even the weights fit
    best = max_num_ctx(m, run, 8 * GiB)
    assert best is not None and best % 256 == 0
    assert estimate(m, replace(run, num_ctx=best)).gpu_total_bytes <= 8 * GiB
    assert estimate(m, replace(run, num_ctx=best + 256)).gpu_total_bytes > 8 * GiB


def _toy(arch: str, **info) -> object:
    n_embd, n_layer = 512, 2
    meta = {
        "general.architecture": arch,
        f"{arch}.block_count": n_layer,
        f"{arch}.context_length": 4096,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.attention.head_count": 8,
        f"{arch}.attention.head_count_kv": 8,
        **{f"{arch}.{k}": v for k, v in info.items()},
    }
    tensors = [Tensor("token_embd.weight", "F16", (n_embd, 1000)), Tensor("output.weight", "F16", (n_embd, 1000))]
    for i in range(n_layer):
        tensors += [Tensor(f"blk.{i}.attn_q.weight", "F16", (n_embd, n_embd)),
                    Tensor(f"blk.{i}.attn_k.weight", "F16", (n_embd, n_embd)),
                    Tensor(f"blk.{i}.ffn_up.weight", "F16", (n_embd, 2048))]
    return describe(meta, tensors, name=arch)


def test_unknown_architecture_errs_high_and_says_so():
    unknown = _toy("brand-new-arch", **{"attention.sliding_window": 128})
    known = _toy("llama")
    run = RunConfig(num_ctx=4096)
    fu, fk = estimate(unknown, run), estimate(known, run)
    assert not fu.known_architecture and fk.known_architecture
    assert any("not modelled" in n for n in fu.notes)
    assert fk.kv_bytes == 2 * 4096 * 512 * 2 * 2
    layer = 4096 * 512 * 2 * 2
    assert fu.kv_bytes == 2 * (layer + layer // 10)  # full context on every layer, plus 10 %
    assert fu.compute_bytes > 1.2 * estimate(known, replace(run, flash_attention=False)).compute_bytes


def test_bert_style_encoders_have_no_kv_cache():
    bert = _toy("bert", pooling_type=1)
    assert estimate(bert, RunConfig(num_ctx=512)).kv_bytes == 0


def test_recurrent_state_is_per_sequence_and_independent_of_context():
    # mamba2: n_embd_r = (d_conv - 1) * (d_inner + 2 * n_group * d_state), n_embd_s = d_state * d_inner
    m = _toy("mamba2", **{"ssm.conv_kernel": 4, "ssm.inner_size": 1024, "ssm.state_size": 128,
                          "ssm.group_count": 1, "ssm.time_step_rank": 32})
    per_seq_layer = ((4 - 1) * (1024 + 2 * 128) + 128 * 1024) * 4
    for ctx, par in ((4096, 1), (65536, 1), (4096, 3)):
        fp = estimate(m, RunConfig(num_ctx=ctx, parallel=par))
        assert fp.kv_bytes == fp.recurrent_bytes == 2 * par * per_seq_layer


def test_notes_say_when_the_context_was_capped():
    fp = estimate(load(LLAMA), RunConfig(num_ctx=1_000_000))
    assert fp.num_ctx == 131072
    assert any("capped" in n for n in fp.notes)


def test_estimate_is_cached():
    m, run = load(LLAMA), RunConfig(num_ctx=4096)
    assert estimate(m, run) is estimate(m, run)


@pytest.mark.parametrize("bad", [dict(num_ctx=0), dict(num_ctx=1, parallel=0), dict(num_ctx=1, kv_type_k="q3_k")])
def test_run_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        RunConfig(**bad)


def test_vision_models_get_at_least_2048_context():
    gemma = load(GEMMA)
    small = estimate(gemma, RunConfig(num_ctx=512))
    assert small.num_ctx == 2048
    assert small.kv_bytes == estimate(gemma, RunConfig(num_ctx=2048)).kv_bytes
    assert estimate(load(LLAMA), RunConfig(num_ctx=512)).num_ctx == 512


def test_mtp_blocks_llama_cpp_skips_are_not_weights():
    # deepseek2 / glm4moe / qwen3.5 ... load the last nextn_predict_layers blocks only for MTP drafting
    base = _toy("glm4moe")
    with_mtp = _toy("glm4moe", nextn_predict_layers=1)
    run = RunConfig(num_ctx=4096)
    a, b = estimate(base, run), estimate(with_mtp, run)
    layer1 = 512 * 512 * 2 * 2 + 512 * 2048 * 2  # blk.1: attn_q, attn_k, ffn_up in F16
    assert a.weights_bytes - b.weights_bytes == layer1
    assert b.layer_bytes[1] == 0 and b.kv_bytes == a.kv_bytes // 2
    assert b.layers == a.layers == 3  # Ollama still counts the block for num_gpu


def test_ollamas_gptoss_name_gets_the_gpt_oss_rules():
    show = json.loads((DATA / "show-gpt-oss-20b.json").read_text())
    show["model_info"] = {k.replace("gpt-oss.", "gptoss."): v for k, v in show["model_info"].items()}
    show["model_info"]["general.architecture"] = "gptoss"
    m = description_from_show(show)
    assert m.architecture == "gptoss" and m.known_architecture
    run = RunConfig(num_ctx=8192)
    assert estimate(m, run).kv_bytes == estimate(load(GPT_OSS), run).kv_bytes
