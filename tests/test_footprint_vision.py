"""The vision encoder's rules (proxy/footprint/vision.py), pure: no llama.cpp needed.

The expected bytes are what llama.cpp's clip reserved for these shapes (tests/oracle/vision.py,
measured with tests/oracle/probe_vision.cpp; the oracle suite re-measures them).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.footprint import RunConfig, description_from_show, estimate
from proxy.footprint.vision import (
    VisionEncoder,
    compute_bytes,
    encoder_from_projector,
    encoder_inline,
    images,
    vision_compute,
)

DATA = Path(__file__).parent / "data"
GEMMA = DATA / "show-gemma3-12b-q4_K_M.json"
LLAMA = DATA / "show-llama3.1-8b-q4_K_M.json"

SIGLIP = VisionEncoder("gemma3", 896, 14, 1152, 4304, 27, 16, 3840)  # mmproj of gemma3 12B
QWEN25VL = VisionEncoder("qwen2.5vl_merger", 560, 14, 1280, 3420, 32, 16, 3584, merge=2, window_pattern=8)
MISTRAL_SMALL = VisionEncoder("pixtral", 1540, 14, 1024, 4096, 24, 16, 5120, merge=2)  # mistral-small3.1
PIXTRAL_12B = VisionEncoder("pixtral", 1024, 14, 1024, 4096, 24, 16, 5120)

# (encoder, (warmup side, largest side), {flash attention: (warmup bytes, largest bytes)}), as clip measured
MEASURED = [
    (SIGLIP, (896, 896), {True: (127139840, 127139840), False: (1186988032, 1186988032)}),
    (QWEN25VL, (1288, 1792), {True: (739025728, 1984987136), False: (5108210240, 18711871488)}),
    (MISTRAL_SMALL, (448, 896), {True: (67756032, 270368768), False: (90824704, 1167949824)}),
    (PIXTRAL_12B, (224, 448), {True: (17184768, 68083712), False: (16660480, 91152384)}),
]


@pytest.mark.parametrize(("encoder", "sides", "measured"), MEASURED, ids=["siglip", "qwen25vl", "mistral", "pixtral"])
def test_compute_matches_what_clip_reserved(encoder, sides, measured):
    assert images(encoder) == sides
    for fa, (warmup, largest) in measured.items():
        got = vision_compute(encoder, fa)
        assert got.warmup_bytes == pytest.approx(warmup, abs=64)  # alignment of one tensor at most
        assert got.peak_bytes == pytest.approx(max(warmup, largest), abs=64)
        assert (got.warmup_image, got.largest_image) == sides
        assert got.known


def test_qwen_ffn_tensors_that_fit_in_the_freed_mask():
    """With flash attention the f32 window mask is freed after its f16 copy; SwiGLU tensors that fit
    in its hole do not raise the peak (measured: 0 fit at 3136 patches, 1 at 4096, 2 at 8464)."""
    assert compute_bytes(QWEN25VL, 784, True) == 259366016
    assert compute_bytes(QWEN25VL, 896, True) == 306323456
    assert compute_bytes(QWEN25VL, 1456, True) == 949060736  # all 3 fit: the attention is the peak


def test_small_images_err_high_but_within_the_floor():
    """Below ~3000 patches the Qwen FFN's holes are filled differently: the rule errs high, by MiBs."""
    measured = {224: 13996544, 448: 66996224, 672: 167256576}
    for side, bytes_ in measured.items():
        est = compute_bytes(QWEN25VL, side, True)
        assert bytes_ <= est <= bytes_ + (32 << 20)


def test_gemma3_small_image_keeps_the_transposed_projection_below_the_last_ffn():
    small = VisionEncoder("gemma3", 224, 14, 1152, 6000, 4, 16, 3840)
    assert compute_bytes(small, 224, True) == 20889600  # measured: 4P 5E + 2TE + 4PF
    assert compute_bytes(small, 224, False) == 20889600


def test_flash_attention_off_costs_the_score_matrices():
    for encoder, _, measured in MEASURED:
        assert measured[False][1] > measured[True][1]  # clip: the largest image costs more without it
        assert vision_compute(encoder, False).peak_bytes > vision_compute(encoder, True).peak_bytes
    assert vision_compute(QWEN25VL, False).peak_bytes > 17 << 30  # 16 heads x 16384^2 f32 scores


def test_encoder_from_projector_info():
    """Ollama's projector_info: the projector blob's key/values, arrays null without verbose."""
    info = {
        "general.architecture": "clip", "clip.projector_type": "qwen2.5vl_merger", "clip.has_vision_encoder": True,
        "clip.vision.image_size": 560, "clip.vision.patch_size": 14, "clip.vision.embedding_length": 1280,
        "clip.vision.feed_forward_length": 3420, "clip.vision.block_count": 32,
        "clip.vision.attention.head_count": 16, "clip.vision.projection_dim": 3584,
        "clip.vision.spatial_merge_size": 2, "clip.vision.n_wa_pattern": 8, "clip.vision.image_mean": None,
    }
    assert encoder_from_projector(info) == QWEN25VL
    assert encoder_from_projector({**info, "clip.has_vision_encoder": False}) is None  # an audio projector
    assert encoder_from_projector({"general.architecture": "clip"}) is None


def test_inline_encoder_of_an_ollama_gemma3():
    show = json.loads(GEMMA.read_text())
    m = description_from_show(show)
    assert m.vision == replace(SIGLIP, merge=0)
    assert encoder_inline({"qwen25vl.vision.block_count": 32, "qwen25vl.vision.embedding_length": 1280,
                           "qwen25vl.vision.attention.head_count": 16, "qwen25vl.vision.patch_size": 14,
                           "qwen25vl.vision.spatial_merge_size": 2, "qwen25vl.embedding_length": 3584,
                           "qwen25vl.vision.fullatt_block_indexes": None}, "qwen25vl", ffn_width=3420) == QWEN25VL
    # llama3.2-vision's inline encoder: Ollama >= 0.30 passes no --mmproj for mllama (no clip handler)
    assert encoder_inline({"mllama.vision.block_count": 32, "mllama.vision.embedding_length": 1280}, "mllama") is None


def test_footprint_counts_the_encoder_on_the_gpu():
    show = json.loads(GEMMA.read_text())
    m = description_from_show(show)
    for fa, peak in ((True, 127139840), (False, 1186988032)):
        fp = estimate(m, RunConfig(num_ctx=8192, flash_attention=fa))
        assert fp.vision_compute_bytes == fp.vision_reserve_bytes == peak
        assert fp.vision_image_size == 896
        assert fp.gpu_total_bytes == (fp.gpu_weights_bytes + fp.projector_bytes + fp.kv_bytes + fp.compute_bytes
                                      + peak)
    text_only = description_from_show(json.loads(LLAMA.read_text()))
    assert text_only.vision is None
    assert estimate(text_only, RunConfig(num_ctx=8192)).vision_compute_bytes == 0


def test_separate_projector_from_show():
    show = json.loads(LLAMA.read_text())
    show["projector_info"] = {
        "general.architecture": "clip", "general.parameter_count": 439_000_000, "general.file_type": 1,
        "clip.projector_type": "pixtral", "clip.has_vision_encoder": True, "clip.vision.image_size": 1540,
        "clip.vision.patch_size": 14, "clip.vision.embedding_length": 1024, "clip.vision.feed_forward_length": 4096,
        "clip.vision.block_count": 24, "clip.vision.attention.head_count": 16, "clip.vision.projection_dim": 5120,
        "clip.vision.spatial_merge_size": 2,
    }
    m = description_from_show(show)
    assert m.vision == MISTRAL_SMALL
    fp = estimate(m, RunConfig(num_ctx=8192))
    assert fp.vision_compute_bytes == 270368768 and fp.vision_reserve_bytes == 67756032
    assert fp.projector_bytes == 878_000_000  # parameter count x 2 bytes (f16)


def test_unknown_projector_type_errs_high_with_a_note():
    show = json.loads(LLAMA.read_text())
    show["projector_info"] = {
        "clip.projector_type": "idefics3", "clip.vision.image_size": 512, "clip.vision.patch_size": 16,
        "clip.vision.embedding_length": 768, "clip.vision.feed_forward_length": 3072, "clip.vision.block_count": 12,
        "clip.vision.attention.head_count": 12, "clip.vision.projection_dim": 4096,
    }
    m = description_from_show(show)
    assert m.vision is not None and not m.vision.known
    fp = estimate(m, RunConfig(num_ctx=8192, flash_attention=False))
    p = (512 // 16) ** 2
    assert fp.vision_compute_bytes > 4 * 12 * p * p + 24 * 768 * p  # the SigLIP rule for this shape
    assert any("idefics3" in n and "errs high" in n for n in fp.notes)


def test_plan_prints_the_vision_encoder(capsys):
    assert main(["plan", "--show", str(GEMMA), "--num-ctx", "8192", "--flash-attention", "on"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.lstrip().startswith("vision encoder"))
    assert "121.2 MiB" in line, line
    assert "896x896" in line
    assert main(["plan", "--show", str(GEMMA), "--num-ctx", "8192", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["vision_compute_bytes"] > 0 and d["vision_image_size"] == 896
    assert main(["plan", "--show", str(LLAMA), "--num-ctx", "8192"]) == 0
    assert "vision encoder" not in capsys.readouterr().out
