"""Properties the forward estimate and its inverses must keep for any run configuration."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import cache
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.footprint import (
    RunConfig,
    description_from_show,
    estimate,
    max_num_ctx,
    min_budget,
)

DATA = Path(__file__).parent / "data"
NAMES = sorted(p.stem.removeprefix("show-") for p in DATA.glob("show-*.json"))


@cache
def model(name: str):
    return description_from_show(json.loads((DATA / f"show-{name}.json").read_text()), name=name)


@st.composite
def runs(draw):
    fa = draw(st.booleans())
    kv = draw(st.sampled_from(["f16", "q8_0", "q4_0"] if fa else ["f16"]))
    batch = draw(st.sampled_from([128, 256, 512, 1024, 2048]))
    return RunConfig(
        num_ctx=draw(st.integers(1, 200_000)),
        parallel=draw(st.integers(1, 8)),
        kv_type_k=kv,
        kv_type_v=kv,
        flash_attention=fa,
        num_batch=batch,
        num_ubatch=batch,
    )


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NAMES), run=runs(), extra=st.integers(1, 50_000))
def test_monotone_in_context(name, run, extra):
    m = model(name)
    a = estimate(m, run)
    b = estimate(m, replace(run, num_ctx=run.num_ctx + extra))
    assert b.gpu_total_bytes >= a.gpu_total_bytes
    assert b.kv_bytes >= a.kv_bytes
    assert b.compute_bytes >= a.compute_bytes
    assert a.gpu_weights_bytes == b.gpu_weights_bytes


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NAMES), run=runs(), k=st.integers(1, 512))
def test_inverse_of_min_budget_gives_back_at_least_the_context(name, run, k):
    m = model(name)
    ctx = min(256 * k, m.context_length)
    ctx -= ctx % 256
    run = replace(run, num_ctx=ctx)
    assert max_num_ctx(m, run, min_budget(m, run)) >= ctx


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(NAMES), run=runs(), budget=st.integers(0, 200 * 1024**3))
def test_max_num_ctx_is_the_largest_that_fits(name, run, budget):
    m = model(name)
    best = max_num_ctx(m, run, budget)
    if best is None:
        assert estimate(m, replace(run, num_ctx=256)).gpu_total_bytes > budget
        return
    assert best % 256 == 0
    assert best <= max(run.num_ctx, 256) and best <= m.context_length
    assert estimate(m, replace(run, num_ctx=best)).gpu_total_bytes <= budget
    ceiling = min(run.num_ctx, m.context_length)
    if best + 256 <= ceiling:
        assert estimate(m, replace(run, num_ctx=best + 256)).gpu_total_bytes > budget


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(NAMES), run=runs())
def test_total_is_the_sum_of_its_parts(name, run):
    fp = estimate(model(name), run)
    assert fp.gpu_total_bytes == (fp.gpu_weights_bytes + fp.projector_bytes + fp.kv_bytes + fp.compute_bytes
                                  + fp.vision_compute_bytes)
    assert fp.vision_compute_bytes >= fp.vision_reserve_bytes
    assert fp.weights_bytes <= fp.gpu_weights_bytes + fp.host_weights_bytes
    assert sum(fp.layer_bytes) + fp.output_layer_bytes == fp.gpu_weights_bytes + fp.kv_bytes
    assert fp.num_ctx % 256 == 0 and fp.cells == fp.num_ctx * run.parallel
