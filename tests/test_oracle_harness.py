"""The oracle harness itself: llama.cpp really loads the synthetic models and reports what we expect.

These checks keep the ground truth honest before the estimator is compared against it.
"""

from __future__ import annotations

import dataclasses

import pytest

from tests.oracle.measure import (
    OracleError,
    fit_print,
    measure,
    measure_args,
    server_args,
)
from tests.oracle.models import ARCHITECTURES, build, model_path

pytestmark = pytest.mark.oracle
pytest_plugins = ["tests.oracle.fixtures"]  # the session `oracle` fixture: builds llama.cpp when missing
MiB = 1024 * 1024


@pytest.mark.parametrize("size", ["small", "real"])
@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_loads_and_model_bytes_are_the_tensor_bytes(oracle, arch, size):
    spec, path = build(arch, size)
    m = measure(path, 2048, 1, embedding=spec.embedding, oracle=oracle)
    # the CPU buffer holds every loaded tensor once, padded by at most one alignment unit
    assert 0 <= m.model_bytes - spec.loaded_weights_bytes <= 128, (m.model_bytes, spec.loaded_weights_bytes)
    if spec.skipped_prefixes:  # MTP blocks are in the file but not in memory
        assert m.model_bytes < spec.weights_bytes
    assert m.compute_bytes > 0


def test_sparse_file_measures_exactly_like_the_real_one(oracle):
    """The no_alloc probe reads metadata only: a data-less sparse copy gives identical numbers."""
    spec, real_path = build("gemma3", "small")
    sparse = dataclasses.replace(spec, name="gemma3-small-sparse", sparse=True)
    sparse_path = model_path(sparse)
    assert sparse_path.stat().st_blocks * 512 < sparse_path.stat().st_size // 2  # really a hole
    for ctx, par, fa in [(256, 1, False), (4096, 2, True)]:
        a = measure(real_path, ctx, par, flash_attention=fa, oracle=oracle)
        b = measure(sparse_path, ctx, par, flash_attention=fa, oracle=oracle)
        assert (a.model_bytes, a.context_bytes, a.compute_bytes) == (b.model_bytes, b.context_bytes, b.compute_bytes)


def test_llama_kv_matches_the_documented_formula(oracle):
    """cells x layers x (K + V row bytes); cells = parallel x pad(num_ctx, 256) (machine-notes)."""
    _, path = build("llama", "small")  # 3 layers, 2 KV heads x 64 = 128 wide K and V
    m = measure(path, 1000, 2, type_k="q8_0", type_v="q8_0", flash_attention=True, oracle=oracle)
    cells = 2 * 1024
    assert m.context_bytes == cells * 3 * (128 * 34 // 32) * 2
    assert m.n_ctx == 2048 and m.n_seq_max == 2
    assert [c.cells for c in m.kv_caches] == [1024] and m.kv_caches[0].seqs == 2


def test_quantized_v_without_flash_attention_is_refused(oracle):
    _, path = build("llama", "small")
    with pytest.raises(OracleError):
        measure(path, 2048, 1, type_k="q8_0", type_v="q8_0", flash_attention=False, oracle=oracle)


def test_probe_agrees_with_llama_fit_params(oracle):
    """Cross-check with llama.cpp's own tool: same model/context MiB (fit-print truncates to MiB).

    Compute differs on purpose: the probe applies llama-server's output limits (n_outputs_max =
    parallel) and llama-fit-params reserves logits for a whole ubatch.
    """
    _, path = build("llama", "real")
    args = server_args(8192, 2, flash_attention=True, n_batch=512)
    m = measure(path, 8192, 2, flash_attention=True, n_batch=512, oracle=oracle)
    host = fit_print(path, args, oracle)["Host"]
    assert host[0] == m.model_bytes // MiB
    assert host[1] == m.context_bytes // MiB
    assert host[2] >= m.compute_bytes // MiB


def test_build_is_idempotent(oracle):
    """A second ensure_oracle() finds the finished build and touches nothing."""
    from tests.oracle.build import ensure_oracle

    before = (oracle.fit_params.stat().st_mtime_ns, oracle.probe.stat().st_mtime_ns)
    again = ensure_oracle()
    assert again == oracle
    assert (again.fit_params.stat().st_mtime_ns, again.probe.stat().st_mtime_ns) == before


def test_swa_full_gives_sliding_window_layers_the_whole_context(oracle):
    _, path = build("gemma3", "small")  # 5 of 6 layers slide over a 256-token window
    windowed = measure(path, 8192, 1, flash_attention=True, oracle=oracle)
    full = measure(path, 8192, 1, flash_attention=True, swa_full=True, oracle=oracle)
    assert sorted(windowed.kv_cells) == [768, 8192]  # pad(256 + ubatch 512, 256)
    assert full.kv_cells == (8192, 8192)
    assert full.context_bytes > windowed.context_bytes


def test_no_alloc_numbers_are_what_llama_cpp_really_allocates(oracle):
    """The probe's dry run (no_alloc) and a real allocation of the same context agree to the byte."""
    _, path = build("gemma3", "small")
    args = server_args(4096, 2, flash_attention=False, n_batch=512)
    dry = measure_args(path, args, oracle)
    real = measure_args(path, args, oracle, real_alloc=True)
    assert (dry.context_bytes, dry.compute_bytes) == (real.context_bytes, real.compute_bytes)
    # really allocated, the weights are the mmapped span of the file's data section
    assert abs(real.model_bytes - dry.model_bytes) <= 32 * len(build("gemma3", "small")[0].tensors)


def test_output_buffer_is_logged_even_without_allocation(oracle):
    """llama-server reserves one row of logits per sequence: n_vocab x parallel x 4 bytes."""
    _, path = build("llama", "real")  # 128256-token vocabulary
    m = measure(path, 2048, 4, flash_attention=True, oracle=oracle)
    assert m.output_mib == pytest.approx(128256 * 4 * 4 / MiB, abs=0.006)


def test_no_repack_keeps_every_weight_in_one_host_buffer(oracle):
    """Without -nr the CPU backend moves Q4_K weights into a CPU_REPACK buffer that is not flagged
    as host memory (llama-fit-params would leave it out of its Host row); -nr keeps one buffer."""
    _, path = build("llama", "real")
    args = server_args(2048, 1, flash_attention=True)
    repacked = measure_args(path, [a for a in args if a != "-nr"], oracle)
    plain = measure_args(path, args, oracle)
    assert [b["buft"] for b in plain.buffers] == ["CPU"]
    assert "CPU_REPACK" in [b["buft"] for b in repacked.buffers]
    assert repacked.model_bytes == plain.model_bytes
