"""Vision projectors: the footprint estimator against llama.cpp's own clip (tools/mtmd).

Ground truth: clip from the llama-cpp-python 0.3.36 sdist, compiled into the vision probe
(tests/oracle/probe_vision.cpp; built once after llama.cpp by the `vision_probe` fixture), loading
synthetic mmproj GGUFs of real shapes (tests/oracle/vision.py) with no_alloc, as llama-server
creates them: the weights, the compute buffer its warmup reserves at load, and the buffer after
the largest image the preprocessor produces. Tolerances as for text models (tests/oracle/compare.py):
weights within 0.5 % or 1 MiB, compute within 10 % or 32 MiB. `uv run python -m tests.oracle.vision`
prints the table.
"""

from __future__ import annotations

import pytest

from proxy.footprint import RunConfig, description_from_gguf, description_from_show, estimate
from tests.oracle.models import build
from tests.oracle.show import show_response
from tests.oracle.vision import (
    PROJECTORS,
    UNMODELLED,
    VARIANTS,
    ProjectorSpec,
    VisionOracleError,
    build_projector,
    compare_projector,
    compare_sizes,
    measure_projector,
    projector_path,
    vision_args,
)

pytestmark = pytest.mark.oracle
pytest_plugins = ["tests.oracle.fixtures"]  # `vision_probe`: builds llama.cpp and the probe when missing


def _fail(rows) -> None:
    failing = sorted((r for r in rows if not r.ok), key=lambda r: -abs(r.rel_err))
    if failing:
        pytest.fail(f"{len(failing)} of {len(rows)} comparisons outside tolerance:\n"
                    + "\n".join(r.describe() for r in failing), pytrace=False)


@pytest.mark.parametrize("name", list(PROJECTORS))
def test_projector_weights_and_encoder_compute_match_clip(vision_probe, name):
    rows = compare_projector(name, vision_probe)
    weights = [r for r in rows if r.component == "weights"]
    assert weights and all(r.estimated == r.measured for r in weights), [r.describe() for r in weights]
    _fail(rows)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_encoder_compute_over_image_sizes_and_shapes(vision_probe, name):
    _fail(compare_sizes(name, vision_probe))


def test_the_largest_image_is_the_square_one(vision_probe):
    """Images of the same token budget in other aspect ratios need no more than the square the
    estimate is sized for, within the compute tolerance: for Qwen-VL the patch count is all that
    matters, pixtral's tall images add an [IMG_BREAK] row per patch row (under 3 % at 1:16)."""
    for name, shapes in [("qwen25vl-7b", [(3584, 896), (896, 3584), (2688, 1176)]),
                         ("mistral-small3.1", [(1792, 448), (448, 1792), (224, 3584)]),
                         ("pixtral-12b", [(896, 224), (224, 896), (112, 1792)])]:
        spec, path = build_projector(name)
        for fa in (True, False):
            m = measure_projector(path, vision_args(fa, spec.launch, tuple(shapes)), vision_probe)
            square = m.largest.compute_bytes
            for r in m.reserves:
                assert r.compute_bytes <= max(square * 1.10, square + (32 << 20)), (name, fa, r, square)


def test_footprint_charges_projector_and_encoder_to_the_gpu(vision_probe):
    """A text model with a separate projector: its weights and the encoder's buffer after the
    largest image are on the GPU, on top of the text model's own buffers."""
    _, text = build("gemma3", "real")
    for name in PROJECTORS:
        spec, mmproj = build_projector(name)
        for fa in (True, False):
            run = RunConfig(num_ctx=8192, flash_attention=fa)
            alone = estimate(description_from_gguf(text, name="m"), run)
            with_projector = estimate(description_from_gguf(text, name="m", projector=mmproj), run)
            m = measure_projector(mmproj, vision_args(fa, spec.launch), vision_probe)
            assert with_projector.projector_bytes == m.weights_bytes
            assert with_projector.vision_reserve_bytes == pytest.approx(m.warmup_compute_bytes, rel=0.10, abs=32 << 20)
            assert with_projector.vision_compute_bytes == pytest.approx(m.peak_compute_bytes, rel=0.10, abs=32 << 20)
            extra = with_projector.gpu_total_bytes - alone.gpu_total_bytes
            assert extra == m.weights_bytes + with_projector.vision_compute_bytes
            assert with_projector.vision_image_size == m.largest.image[0]


@pytest.mark.parametrize("verbose", [True, False])
@pytest.mark.parametrize("name", list(PROJECTORS))
def test_show_projector_info_describes_the_same_encoder(name, verbose):
    """Ollama's /api/show returns the projector blob's key/values as projector_info (arrays null
    without verbose): the encoder read from it is the one read from the mmproj file."""
    _, text = build("llama", "small")
    _, mmproj = build_projector(name)
    from_gguf = description_from_gguf(text, name="m", projector=mmproj)
    show = show_response(text, verbose=verbose, projector=mmproj)
    assert "vision" in show["capabilities"]
    from_show = description_from_show(show, name="m")
    assert from_show.vision == from_gguf.vision is not None
    run = RunConfig(num_ctx=4096)
    a, b = estimate(from_show, run), estimate(from_gguf, run)
    assert (a.vision_compute_bytes, a.vision_reserve_bytes) == (b.vision_compute_bytes, b.vision_reserve_bytes)
    # projector_info has no tensor list: the weights come from its parameter count, close to exact
    assert a.projector_bytes == pytest.approx(b.projector_bytes, rel=0.01) or a.projector_bytes == 0


@pytest.mark.parametrize("name", list(UNMODELLED))
def test_unmodelled_projector_is_flagged_and_errs_high(vision_probe, name):
    """A projector type clip loads but the estimator has no traced rule for: weights still exact,
    the encoder's buffer never under-estimated (warmup, largest image, flash attention on and off)."""
    spec, mmproj = build_projector(name)
    _, text = build("llama", "small")
    m_desc = description_from_gguf(text, name="m", projector=mmproj)
    assert m_desc.vision is not None and not m_desc.vision.known
    for fa in (True, False):
        fp = estimate(m_desc, RunConfig(num_ctx=4096, flash_attention=fa))
        assert any(m_desc.vision.projector_type in n and "errs high" in n for n in fp.notes), fp.notes
        m = measure_projector(mmproj, vision_args(fa, spec.launch), vision_probe)
        assert fp.projector_bytes == m.weights_bytes
        assert fp.vision_reserve_bytes >= m.warmup_compute_bytes, (fa, fp.vision_reserve_bytes, m)
        assert fp.vision_compute_bytes >= m.peak_compute_bytes, (fa, fp.vision_compute_bytes, m)
        assert fp.vision_image_size == m.largest.image[0]


def test_llama32_vision_has_no_clip_handler(vision_probe):
    """Llama-3.2-vision (Ollama's mllama) has no projector type in this llama.cpp's clip: llama-server
    cannot load its projector, so there is nothing to measure (and Ollama >= 0.30 cannot run it)."""
    gemma = PROJECTORS["gemma3-12b"]()
    kv = tuple((k, "mllama" if k == "clip.projector_type" else v) for k, v in gemma.kv)
    path = projector_path(ProjectorSpec("mllama-probe", kv, gemma.tensors))
    with pytest.raises(VisionOracleError):
        measure_projector(path, vision_args(True), vision_probe)
