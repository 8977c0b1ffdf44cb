"""The footprint estimator against llama.cpp itself, over a grid of run configurations.

Ground truth: the llama.cpp vendored in llama-cpp-python 0.3.36 (built once into the cache by the
`oracle` fixture), loading synthetic GGUFs of ten architectures with no_alloc, launched as Ollama
launches llama-server. Tolerances (tests/oracle/compare.py): weights and KV within 0.5% or 1 MiB,
compute within 10% or 32 MiB, total within 3% or 34 MiB. A failure lists every configuration
outside them, worst first. `uv run python -m tests.oracle.report` prints the whole table.
"""

from __future__ import annotations

import dataclasses

import pytest

from proxy.footprint import RunConfig, description_from_show, estimate
from tests.oracle.compare import COMPONENTS, compare_model, gguf_description
from tests.oracle.measure import measure
from tests.oracle.models import ARCHITECTURES, SIZES, UNKNOWN_ARCHITECTURES, build
from tests.oracle.show import show_response

pytestmark = pytest.mark.oracle
pytest_plugins = ["tests.oracle.fixtures"]  # the session `oracle` fixture: builds llama.cpp when missing

MODELS = [(arch, size) for arch in ARCHITECTURES for size in SIZES]


def _ids(model: tuple[str, str]) -> str:
    return f"{model[0]}-{model[1]}"


@pytest.mark.parametrize("model", MODELS, ids=_ids)
def test_estimate_matches_llama_cpp(oracle, model):
    arch, size = model
    rows = compare_model(arch, size)
    assert rows, "the grid is empty"
    failing = sorted((r for r in rows if not r.ok), key=lambda r: -abs(r.rel_err))
    if failing:
        by_component = {c: sum(1 for r in failing if r.component == c) for c in COMPONENTS}
        lines = [r.describe() for r in failing[:20]]
        more = f"\n... and {len(failing) - 20} more" if len(failing) > 20 else ""
        pytest.fail(
            f"{len(failing)} of {len(rows)} comparisons outside tolerance {by_component}:\n"
            + "\n".join(lines) + more,
            pytrace=False,
        )


def _needs_verbose(spec) -> bool:
    """A per-layer array that Ollama nulls without verbose and the tensor list cannot recover."""
    return any(isinstance(v, list) and k.endswith("sliding_window_pattern") for k, v in spec.kv)


SHOW_CASES = [
    pytest.param(m, verbose, id=f"{_ids(m)}-{'verbose' if verbose else 'plain'}")
    for m in MODELS
    for verbose in (True, False)
    if verbose or not _needs_verbose(build(*m)[0])  # plain: see the errs-high test below
]


@pytest.mark.parametrize(("model", "verbose"), SHOW_CASES)
def test_show_and_gguf_describe_the_same_model(model, verbose):
    """/api/show JSON (as Ollama serialises it) and the GGUF file give the same description.

    Without verbose, Ollama nulls every array (per-layer head_count_kv of lfm2, ...): the
    description must still come out the same, recovered from the tensor list.
    """
    arch, size = model
    _, path = build(arch, size)
    from_gguf = gguf_description(path)
    from_show = description_from_show(show_response(path, verbose=verbose), name="m")
    diffs = {
        f.name: (getattr(from_show, f.name), getattr(from_gguf, f.name))
        for f in dataclasses.fields(from_gguf)
        if f.name != "tensors" and getattr(from_show, f.name) != getattr(from_gguf, f.name)
    }
    assert not diffs, f"show vs gguf differ: {diffs}"
    assert from_show.tensors == from_gguf.tensors
    run = RunConfig(num_ctx=4096, parallel=2, flash_attention=False)
    assert estimate(from_show, run) == estimate(from_gguf, run)


@pytest.mark.parametrize("model", [m for m in MODELS if _needs_verbose(build(*m)[0])], ids=_ids)
def test_show_without_verbose_errs_high_when_layers_are_unknowable(oracle, model):
    """A GGUF-level sliding_window_pattern array comes back null from a plain /api/show.

    Nothing else tells which layers slide, so the estimate from the plain response may differ from
    the file's, but only upwards (never below what llama.cpp allocates), and it must say that
    `verbose` would make it exact.
    """
    arch, size = model
    _, path = build(arch, size)
    from_show = description_from_show(show_response(path, verbose=False), name="m")
    for ctx, par, fa in [(4096, 1, True), (32768, 2, False)]:
        run = RunConfig(num_ctx=ctx, parallel=par, flash_attention=fa)
        fp = estimate(from_show, run)
        m = measure(path, ctx, par, flash_attention=fa, oracle=oracle)
        assert fp.kv_bytes >= m.context_bytes, (ctx, par, fa, fp.kv_bytes, m.context_bytes)
        assert fp.weights_bytes + fp.kv_bytes + fp.compute_bytes >= m.total_bytes
        assert any("verbose" in note for note in fp.notes), fp.notes


@pytest.mark.parametrize("model", [(a, s) for a in UNKNOWN_ARCHITECTURES for s in SIZES], ids=_ids)
def test_unknown_architecture_is_flagged_and_errs_high(oracle, model):
    """An architecture the estimator does not model: it says so, and never under-estimates."""
    arch, size = model
    rows = compare_model(arch, size)
    description = gguf_description(build(arch, size)[1])
    fp = estimate(description, RunConfig(num_ctx=4096))
    assert fp.known_architecture is False
    assert any(arch in note for note in fp.notes), fp.notes
    weights = [r for r in rows if r.component == "weights"]
    assert all(r.ok for r in weights), [r.describe() for r in weights if not r.ok]
    low = [r for r in rows if r.component in ("kv", "total") and (r.estimated is None or r.estimated < r.measured)]
    assert not low, "under-estimates:\n" + "\n".join(r.describe() for r in low[:20])
