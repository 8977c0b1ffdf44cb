"""The llama.cpp rule table (proxy.footprint.rules): which generation an Ollama version runs, and
what each generation allocates, with expected values worked out by hand from llama.cpp's sources."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.footprint import RunConfig, description_from_show, estimate, max_num_ctx
from proxy.footprint.describe import describe
from proxy.footprint.model import Tensor
from proxy.footprint.rules import (
    KNOWN,
    LLAMA_SERVER_B9409,
    NEWEST,
    OLDEST,
    RUNNER_PAD_256,
    RUNNER_PER_STREAM,
    RUNNER_UNIFIED,
    llama_cpp_build,
    rules_for_build,
    rules_for_ollama,
)
from proxy.gate.sizing import sizer_for
from proxy.ollama.versions import ServerSettings, parse_version

DATA = Path(__file__).parent / "data"
OVERHEAD = 16 * 1024  # compute_bytes adds this to the peak phase


def load(name: str):
    return description_from_show(json.loads((DATA / f"show-{name}.json").read_text()), name=name)


@pytest.mark.parametrize("version,build,rules", [
    ("0.30.0", "b9452", LLAMA_SERVER_B9409),  # llama-server, before PR #23861 (b9460)
    ("0.30.1", "b9479", NEWEST),
    ("0.32.15", "b10488", NEWEST),
    ("0.33.0-rc2", "b10488", NEWEST),  # newer than the table: the newest rules
    ("0.0.0", "b10488", NEWEST),  # a source build hides its version: treated as current
    ("garbage", "b10488", NEWEST),
    ("0.24.0", "ec98e2002", RUNNER_PAD_256),
    ("0.13.2", "7f8ef50cc", RUNNER_PAD_256),
    ("0.13.1", "3cfa9c3f1", RUNNER_PER_STREAM),
    ("0.11.5", "e54d41bef", RUNNER_PER_STREAM),
    ("0.11.4", "de4c07f93", RUNNER_UNIFIED),
    ("0.7.0", "de4c07f93", RUNNER_UNIFIED),
    ("0.6.8", None, OLDEST),  # older than any known rule: the largest of all
])
def test_ollama_versions_map_to_the_llama_cpp_they_ship(version, build, rules):
    v = parse_version(version)
    assert llama_cpp_build(v) == build
    assert rules_for_ollama(v) is rules


@pytest.mark.parametrize("build,rules", [
    ("b9460", NEWEST), ("b12000", NEWEST), ("b9459", LLAMA_SERVER_B9409), ("b9409", LLAMA_SERVER_B9409),
    ("b9000", OLDEST), ("ec98e2002", RUNNER_PAD_256), ("ec98e2002abcdef", RUNNER_PAD_256),
    ("0123456789", OLDEST), (None, OLDEST),
])
def test_rules_are_keyed_by_the_llama_cpp_build(build, rules):
    assert rules_for_build(build) is rules


def test_the_newest_rules_are_the_default_and_unchanged():
    assert RunConfig(num_ctx=4096).rules is NEWEST
    gemma = load("gemma3-12b-q4_K_M")
    run = RunConfig(num_ctx=32768, num_batch=2048, num_ubatch=2048)
    assert estimate(gemma, run) == estimate(gemma, replace(run, rules=NEWEST))


def _toy_262k():
    """A llama with a 262144-token vocabulary: 2 layers, 256 wide, 4 heads of 64, FFN 512."""
    n_embd, vocab = 256, 262144
    meta = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 4096,
            "llama.embedding_length": n_embd, "llama.feed_forward_length": 512, "llama.attention.head_count": 4,
            "llama.attention.head_count_kv": 4, "llama.vocab_size": vocab}
    tensors = [Tensor("token_embd.weight", "F16", (n_embd, vocab)), Tensor("output.weight", "F16", (n_embd, vocab))]
    for i in range(2):
        tensors += [Tensor(f"blk.{i}.attn_q.weight", "F16", (n_embd, n_embd)),
                    Tensor(f"blk.{i}.attn_k.weight", "F16", (n_embd, n_embd)),
                    Tensor(f"blk.{i}.attn_v.weight", "F16", (n_embd, n_embd)),
                    Tensor(f"blk.{i}.ffn_gate.weight", "F16", (n_embd, 512)),
                    Tensor(f"blk.{i}.ffn_up.weight", "F16", (n_embd, 512)),
                    Tensor(f"blk.{i}.ffn_down.weight", "F16", (512, n_embd))]
    return describe(meta, tensors, name="toy-262k")


def test_output_rows_before_and_after_the_llama_server_limit():
    # -c 4096 -b 2048 -ub 2048 -fa: t = min(4096, 2048) = 2048 tokens in the reserve graph.
    # attention (FA): t x (12 n_embd + 8 q_dim + kv_dim / 2) = 2048 x (3072 + 2048 + 256) plus the f16
    #   mask 4096 x 2048 x 2                                       = 11010048 + 16777216 = 27787264
    # FFN (gated): t x (12 n_ff + 16 n_embd) = 2048 x (6144 + 4096) + mask = 20971520 + 16777216 = 37748736
    # output: rows x n_vocab x 4 + min(2 rows, 2 t) x n_embd x 4
    #   b9460+ (one row per sequence):  1 x 262144 x 4 +    2 x 256 x 4 =      1050624
    #   before (the whole micro-batch): 2048 x 262144 x 4 + 4096 x 256 x 4 = 2151677952
    m = _toy_262k()
    run = RunConfig(num_ctx=4096, num_batch=2048, num_ubatch=2048)
    new = estimate(m, run)
    old = estimate(m, replace(run, rules=LLAMA_SERVER_B9409))
    assert new.compute_bytes == 37748736 + OVERHEAD  # the FFN phase is the peak
    assert old.compute_bytes == 2151677952 + OVERHEAD  # the logits are
    # the logits alone differ by n_ubatch x n_vocab x 4 - n_parallel x n_vocab x 4 (2 GiB - 1 MiB)
    assert 2048 * 262144 * 4 - 1 * 262144 * 4 == 2146435072
    assert old.compute_bytes - new.compute_bytes == 2151677952 - 37748736
    assert old.kv_bytes == new.kv_bytes and old.gpu_weights_bytes == new.gpu_weights_bytes
    # 4 sequences of 1024: the new rule reserves 4 rows (4 x 262144 x 4 + 8 x 256 x 4 = 4202496), below
    # the FFN phase with its mask of 1024 x 2048 x 2: 20971520 + 4194304
    four = replace(run, num_ctx=1024, parallel=4)
    assert estimate(m, four).compute_bytes == 20971520 + 4194304 + OVERHEAD
    assert estimate(m, replace(four, rules=LLAMA_SERVER_B9409)).compute_bytes == 2151677952 + OVERHEAD


def test_gemma3_262k_vocabulary_at_batch_2048():
    # gemma3 12B: 262208 tokens, 3840 wide; before b9460 the output phase is the peak:
    # 2048 x 262208 x 4 + 2 x 2048 x 3840 x 4 = 2148007936 + 62914560
    gemma = load("gemma3-12b-q4_K_M")
    run = RunConfig(num_ctx=32768, num_batch=2048, num_ubatch=2048)
    old = estimate(gemma, replace(run, rules=LLAMA_SERVER_B9409))
    new = estimate(gemma, run)
    assert old.compute_bytes == 2148007936 + 62914560 + OVERHEAD
    assert old.compute_bytes - new.compute_bytes > 1.4 * 1024**3  # up to 2 GiB more, as issue 11 says
    assert old.kv_bytes == new.kv_bytes  # same cells: only the output rows changed


def test_ollamas_runner_keeps_full_size_sliding_window_layers():
    # llama_context_default_params() has swa_full = true: all 48 layers get 32768 cells (not 8 x 32768 +
    # 40 x 1536); 8 KV heads x 256 x (K + V) x 2 bytes = 8192 bytes per cell and layer
    gemma = load("gemma3-12b-q4_K_M")
    run = RunConfig(num_ctx=32768)
    assert estimate(gemma, run).kv_bytes == 8 * 32768 * 8192 + 40 * 1536 * 8192
    old = estimate(gemma, replace(run, rules=RUNNER_PAD_256))
    assert old.kv_bytes == 48 * 32768 * 8192
    assert old.swa_cells == 32768


@pytest.mark.parametrize("rules,fa,expected_cells", [
    # -c 3300 -np 3 (num_ctx 1100 x 3); llama3.1 8B: 32 layers x 4096 bytes per cell (f16 K+V, 8 x 128)
    (NEWEST, True, 3 * 1280),  # pad(3300, 256) = 3328; 3328 / 3 = 1109 -> 1280 per sequence
    (NEWEST, False, 3 * 1280),  # 256 with or without flash attention
    (RUNNER_PER_STREAM, True, 3 * 1280),  # ceil(3300 / 3) = 1100 -> pad 256 = 1280 per stream
    (RUNNER_PER_STREAM, False, 3 * 1120),  # ... -> pad 32 = 1120 without flash attention
    (RUNNER_UNIFIED, True, 3328),  # one stream: pad(3300, 256)
    (RUNNER_UNIFIED, False, 3328),  # pad(3300, 32) = 3328 too
])
def test_cell_padding_and_streams_per_generation(rules, fa, expected_cells):
    fp = estimate(load("llama3.1-8b-q4_K_M"), RunConfig(num_ctx=1100, parallel=3, flash_attention=fa, rules=rules))
    assert fp.cells == expected_cells
    assert fp.kv_bytes == 32 * expected_cells * 4096


def test_unified_cache_pads_the_whole_context_to_32_without_flash_attention():
    fp = estimate(load("llama3.1-8b-q4_K_M"), RunConfig(num_ctx=1000, parallel=2, flash_attention=False,
                                                         rules=RUNNER_UNIFIED))
    assert fp.cells == 2016  # pad(2000, 32); llama-server today: 2 x 1024
    assert estimate(load("llama3.1-8b-q4_K_M"), RunConfig(num_ctx=1000, parallel=2)).cells == 2048


def test_mla_caches_v_before_the_v_less_cache():
    # deepseek-v2-lite: 27 layers, latent K = 512 + 64 = 576, V = kv_lora_rank 512, one KV head
    ds = load("deepseek-v2-lite-q4_K_M")
    run = RunConfig(num_ctx=4096)
    assert estimate(ds, run).kv_bytes == 27 * 4096 * 576 * 2
    assert estimate(ds, replace(run, rules=RUNNER_PAD_256)).kv_bytes == 27 * 4096 * (576 + 512) * 2


@pytest.mark.parametrize("name", ["llama3.1-8b-q4_K_M", "gemma3-12b-q4_K_M", "deepseek-v2-lite-q4_K_M",
                                  "gpt-oss-20b", "qwen3moe-30b-a3b-q4_K_M"])
@pytest.mark.parametrize("run", [
    RunConfig(num_ctx=1100, parallel=3, flash_attention=False),
    RunConfig(num_ctx=32768, num_batch=2048, num_ubatch=2048),
    RunConfig(num_ctx=4096, parallel=4, num_batch=512, num_ubatch=512),
])
def test_an_upstream_older_than_every_rule_gets_the_largest_footprint(name, run):
    model = load(name)
    totals = [estimate(model, replace(run, rules=r)).gpu_total_bytes for r in KNOWN]
    oldest = estimate(model, replace(run, rules=OLDEST))
    assert oldest.gpu_total_bytes == max(totals) >= estimate(model, run).gpu_total_bytes
    assert any(n.startswith(OLDEST.name) for n in oldest.notes)


def test_max_num_ctx_follows_the_rules():
    gemma = load("gemma3-12b-q4_K_M")
    run = RunConfig(num_ctx=131072, num_batch=2048, num_ubatch=2048)
    budget = 16 * 1024**3
    new, old = max_num_ctx(gemma, run, budget), max_num_ctx(gemma, replace(run, rules=RUNNER_PAD_256), budget)
    assert new is not None and old is not None and old < new


def _server(version: str) -> ServerSettings:
    return ServerSettings(parse_version(version), version, 1, "f16", True, 0, 0)


def test_the_gate_sizes_with_the_rules_of_the_servers_version():
    gemma = load("gemma3-12b-q4_K_M")
    new = sizer_for(gemma, _server("0.32.15"))(32768, 1, 2048)
    old = sizer_for(gemma, _server("0.30.0"))(32768, 1, 2048)
    unknown = sizer_for(gemma, _server(""))(32768, 1, 2048)
    assert old.compute_bytes == 2148007936 + 62914560 + OVERHEAD
    assert new == unknown == estimate(gemma, RunConfig(num_ctx=32768, num_batch=2048, num_ubatch=2048))


def test_plan_says_which_rule_set_it_used(capsys):
    show = str(DATA / "show-gemma3-12b-q4_K_M.json")
    assert main(["plan", "--show", show, "--num-ctx", "32768", "--num-batch", "2048", "--ollama-version", "0.30.0",
                 "--json"]) == 0
    old = json.loads(capsys.readouterr().out)
    assert old["rules"]["name"] == LLAMA_SERVER_B9409.name and old["rules"]["output_rows"] == "batch"
    assert "rules" not in old["run"]
    assert old["compute_bytes"] == 2148007936 + 62914560 + OVERHEAD
    assert main(["plan", "--show", show, "--num-ctx", "32768", "--num-batch", "2048", "--ollama-version", "0.32.15",
                 "--json"]) == 0
    new = json.loads(capsys.readouterr().out)
    assert new["rules"]["name"] == NEWEST.name and new["compute_bytes"] < old["compute_bytes"]
    assert main(["plan", "--show", show, "--ollama-version", "0.6.0"]) == 0
    text = capsys.readouterr().out
    assert f"llama.cpp rules: {OLDEST.name}" in text
