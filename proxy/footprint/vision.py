"""The vision encoder: what llama.cpp's clip (tools/mtmd) reserves for a model's projector.

Ollama (>= 0.30) hands a model's projector to llama-server as ``--mmproj`` (a separate
``projector`` layer, or the model file itself for Ollama-format GGUFs with inline ``v.*``
tensors), and keeps it on the GPU at full offload (``--no-mmproj-offload`` only for CPU-only or
partial loads, or a GPU with less free memory than the projector plus 1 GiB). llama-server creates
the encoder with ``mtmd_init_from_file``: ``clip_init`` puts the weights on the GPU backend and
its warmup reserves the encoder's compute graph for a warmup image. A real image as large as the
preprocessor allows later grows that buffer (ggml-alloc re-reserves a larger graph and never
shrinks), so the buffer to plan for is the larger of the two. One image is encoded at a time for
the encoders here (none of their graphs batches images).

The images (clip.cpp ``load_hparams``): gemma3 always resizes to ``image_size``; Qwen-VL allows
up to 4096 merged tokens (``set_limit_image_tokens(8, 4096)``: a square of
``sqrt(4096 * (patch * merge)^2)`` px, 1792 px for patch 14) and warms up with 46 x 46 tokens;
pixtral allows 1024 tokens and warms up with 16 x 16. ``P`` below is the number of patches of the
image, ``E`` / ``F`` / ``H`` the encoder's width, FFN width and heads, ``T`` the text width.

The compute buffer is the peak of ggml-alloc's packing of the encoder graph, read from traces of
that packing (tests/oracle/probe_vision.cpp ``--trace``) and checked against the oracle
(tests/test_oracle_vision.py; exact for most shapes). Every graph starts with the image itself,
``12 P patch^2`` bytes (f32 RGB), and small position inputs; then:

* **SigLIP / gemma3** (``siglip.cpp``): without flash attention the last layer's
  ``P x P x H`` f32 scores plus six E-wide f32 tensors (``4HP^2 + 24EP``); with it the FFN's
  up projection with the layer input, its norm and one hole (``4P(3E + F)``). When the f16 copy of
  the transposed ``mm.input_projection`` (``2TE``, made in the last layer) is larger than an
  E-wide tensor (small images), it sits below the last FFN: ``4P 5E + 2TE + 4PF``.
* **Qwen2.5-VL** (``qwen2vl.cpp``): window attention adds an f32 ``P x P`` mask input. With flash
  attention its f16 copy, made at the first layer, lives to the last windowed layer and the f32
  original is freed: the first layer's attention peaks at ``6P^2 + 16EP`` (both masks, the layer
  input, f16 K and V, a hole, Q), and the FFN's three F-wide tensors (gate, up, SwiGLU) go above
  the f16 mask except those that fit in the freed f32 mask (``min(3, P // F)``):
  ``+ (3 - fit) 4PF``; below ~3000 patches the holes are filled differently and this errs high
  (up to 20 %, MiBs). Without flash attention the f32 mask lives through the graph and the first
  layer's scores peak, ``4HP^2 + 4P^2 + 20EP``; small images peak in the FFN,
  ``4P^2 + 4P(3E + 3F)``.
* **Pixtral / mistral-small3.1** (``pixtral.cpp``): 2-D RoPE positions (``8P``) and the
  [IMG_BREAK] rows (``4T rows``) are inputs; with flash attention the SwiGLU FFN
  (``4P(3.5E + 3F)``); without it the larger of the scores (``4HP^2 + 20EP``) and the FFN
  (``4P(3E + 3F)``); a text width large next to F makes the projection (``4P E + 8TP / merge^2``,
  another E without flash attention) the peak.
* Any other projector type (llava's ``mlp``, ``qwen3vl_merger``, ``llama4``, ...): a generic ViT
  bound (attention with its scores, or a SwiGLU FFN, whichever is larger) plus a quarter and
  16 MiB, and a note: it errs high (qwen3-vl, measured: about twice its buffer with flash
  attention, a quarter more without).

On CUDA the same graph is reserved on the GPU backend (clip's scheduler keeps a small host
buffer for the inputs), so the whole buffer is charged to the GPU. Flash attention follows the
text model's (Ollama passes the same ``--flash-attn`` to both): CUDA's flash attention supports
the encoders' head sizes (72 for SigLIP, 80 for Qwen2.5-VL, 64 for pixtral), so ``auto`` enables
it there. Pure functions of plain data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

F32 = 4
MiB = 1024 * 1024
UNKNOWN_MARGIN = 1.25

#: Projector types whose graphs were traced and measured (the rest get the generic bound).
MODELLED = frozenset({"gemma3", "qwen2.5vl_merger", "pixtral"})

#: Ollama-format GGUFs with the encoder inline: Ollama passes the model file as ``--mmproj`` only
#: for these architectures (``compatClipArches`` in llm/llama_server.go), and its compat layer
#: (llama/compat) hands clip this projector type. Other inline encoders are not loaded.
INLINE_PROJECTOR_TYPES = {
    "gemma3": "gemma3",
    "gemma4": "gemma4v",
    "qwen35": "qwen3vl_merger",
    "qwen35moe": "qwen3vl_merger",
    "qwen25vl": "qwen2.5vl_merger",
    "qwen3vl": "qwen3vl_merger",
    "qwen3vlmoe": "qwen3vl_merger",
    "mistral3": "pixtral",
    "deepseekocr": "deepseekocr",
    "glmocr": "glm4v",
    "llama4": "llama4",
    "nemotron_h_omni": "nemotron_v2_vl",
}

#: clip.cpp's defaults per projector type: (merge, max merged tokens, warmup tokens per side);
#: max 0 = a fixed-size encoder (the image is resized to image_size).
_IMAGE_RULES: dict[str, tuple[int, int, int]] = {
    "gemma3": (4, 0, 0),
    "qwen2vl_merger": (2, 4096, 46),
    "qwen2.5vl_merger": (2, 4096, 46),
    "qwen3vl_merger": (2, 4096, 46),
    "pixtral": (1, 1024, 16),
}


@dataclass(frozen=True)
class VisionEncoder:
    """The hyper-parameters clip sizes the encoder's graph from (``clip.vision.*`` keys)."""

    projector_type: str  # clip.projector_type, as clip-impl.h names it
    image_size: int
    patch_size: int
    embedding_length: int
    feed_forward_length: int
    block_count: int
    head_count: int
    projection_dim: int = 0  # the text model's width (the projector's output)
    merge: int = 0  # spatial_merge_size / projector.scale_factor; 0: the projector type's default
    window_pattern: int = 0  # n_wa_pattern: a full-attention layer every N, the rest windowed
    image_max_pixels: int = 0  # clip.vision.image_max_pixels, when the GGUF sets it

    @property
    def known(self) -> bool:
        return self.projector_type in MODELLED

    @property
    def effective_merge(self) -> int:
        if self.merge > 0:
            return self.merge
        return _IMAGE_RULES.get(self.projector_type, (1, 0, 0))[0]


@dataclass(frozen=True)
class VisionCompute:
    """The encoder's compute buffer: reserved at load, and after the largest image."""

    warmup_bytes: int  # what llama-server's warmup reserves at load
    peak_bytes: int  # the buffer once the largest image was encoded (>= warmup)
    warmup_image: int  # side of the square warmup image, px
    largest_image: int  # side of the largest image the preprocessor produces, px
    largest_patches: int
    flash_attention: bool
    known: bool


def _u(md: Mapping[str, Any], key: str, default: int = 0) -> int:
    value = md.get(key)
    if value is None or isinstance(value, (list, tuple, str, bool)):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def encoder_from_projector(md: Mapping[str, Any]) -> VisionEncoder | None:
    """The vision encoder of a projector GGUF's metadata (``/api/show``'s ``projector_info``)."""
    if md.get("clip.has_vision_encoder") is False:
        return None
    ptype = md.get("clip.projector_type") or md.get("clip.vision.projector_type")
    if not isinstance(ptype, str) or _u(md, "clip.vision.block_count") <= 0:
        return None
    merge = _u(md, "clip.vision.spatial_merge_size") or _u(md, "clip.vision.projector.scale_factor")
    return VisionEncoder(
        projector_type=ptype,
        image_size=_u(md, "clip.vision.image_size"),
        patch_size=_u(md, "clip.vision.patch_size", 14),
        embedding_length=_u(md, "clip.vision.embedding_length"),
        feed_forward_length=_u(md, "clip.vision.feed_forward_length"),
        block_count=_u(md, "clip.vision.block_count"),
        head_count=_u(md, "clip.vision.attention.head_count"),
        projection_dim=_u(md, "clip.vision.projection_dim"),
        merge=merge,
        window_pattern=_u(md, "clip.vision.n_wa_pattern"),
        image_max_pixels=_u(md, "clip.vision.image_max_pixels"),
    )


def encoder_inline(md: Mapping[str, Any], arch: str, ffn_width: int = 0) -> VisionEncoder | None:
    """The encoder of an Ollama-format GGUF with inline ``v.*`` tensors (``<arch>.vision.*`` keys),
    as Ollama's compat layer hands it to clip; ``ffn_width`` from ``v.blk.0.ffn_up`` when the key
    is missing (qwen25vl). None for an architecture whose file Ollama does not pass as --mmproj."""
    ptype = INLINE_PROJECTOR_TYPES.get(arch)
    v = f"{arch}.vision."
    if ptype is None or _u(md, v + "block_count") <= 0:
        return None
    window = 0
    if ptype == "qwen2.5vl_merger":
        full = md.get(v + "fullatt_block_indexes")
        window = int(full[0]) + 1 if isinstance(full, (list, tuple)) and full else 8  # compat's default
    merge = _u(md, v + "spatial_merge_size") or _u(md, f"{arch}.spatial_merge_size") or _u(
        md, v + "projector.scale_factor")
    default_size = 560 if ptype == "qwen2.5vl_merger" else 768 if ptype == "qwen3vl_merger" else 0
    return VisionEncoder(
        projector_type=ptype,
        image_size=_u(md, v + "image_size", default_size),
        patch_size=_u(md, v + "patch_size", 14),
        embedding_length=_u(md, v + "embedding_length"),
        feed_forward_length=_u(md, v + "feed_forward_length", ffn_width),
        block_count=_u(md, v + "block_count"),
        head_count=_u(md, v + "attention.head_count") or _u(md, v + "head_count"),
        projection_dim=_u(md, f"{arch}.embedding_length"),
        merge=merge,
        window_pattern=window,
    )


def images(enc: VisionEncoder) -> tuple[int, int]:
    """(warmup side, largest side) in px of the square images clip reserves for."""
    _, max_tokens, warm_side = _IMAGE_RULES.get(enc.projector_type, (0, 0, 0))
    align = max(1, enc.patch_size * enc.effective_merge)
    # the modelled types take their limits from clip's code; the GGUF key only for the others
    max_pixels = max_tokens * align * align if max_tokens else enc.image_max_pixels
    if max_pixels <= 0:  # fixed size (gemma3), or a type whose limits we do not know
        side = max(enc.image_size, align)
        return side, side
    largest = max(align, int(math.isqrt(max_pixels)) // align * align)
    warmup = warm_side * align if warm_side else largest
    return warmup, largest


def compute_bytes(enc: VisionEncoder, side: int, flash_attention: bool) -> int:
    """The compute buffer clip reserves for one square image of ``side`` px (see the module doc)."""
    patch = max(1, enc.patch_size)
    n = side // patch
    p = n * n
    e, f, h = enc.embedding_length, enc.feed_forward_length, max(1, enc.head_count)
    t = enc.projection_dim or e
    merge = enc.effective_merge
    image = 12 * p * patch * patch  # inp_raw: f32 RGB
    scores = F32 * h * p * p
    kind = enc.projector_type
    if kind == "gemma3":
        last = 0
        weight_t = 2 * t * e  # f16 copy of the transposed mm.input_projection
        if weight_t > F32 * e * p:
            last = F32 * p * 5 * e + weight_t + F32 * p * f
        phase = F32 * p * (3 * e + f) if flash_attention else scores + 24 * e * p
        return max(phase, last)
    if kind == "qwen2.5vl_merger":
        windowed = enc.window_pattern > 0
        base = image + 16 * p + (2 * p if windowed else 0)
        if flash_attention:
            attention = base + 16 * e * p + (6 * p * p if windowed else 0)
            fit = min(3, p // f) if windowed and f else 0
            return attention + (3 - fit) * F32 * p * f
        mask = F32 * p * p if windowed else 0
        return max(base + scores + mask + 20 * e * p, base + mask + F32 * p * (3 * e + 3 * f))
    if kind == "pixtral":
        rows = n // max(1, merge)
        base = image + 8 * p + F32 * t * rows
        if flash_attention:
            phase = base + 2 * p * (7 * e + 6 * f)  # 4P(3.5E + 3F)
        else:
            phase = max(base + F32 * p * (3 * e + 3 * f), base + scores + 20 * e * p)
        project = base + F32 * p * e * (1 if flash_attention else 2) + 2 * F32 * t * p // (merge * merge)
        return max(phase, project)
    # not traced: the larger of a ViT's attention and its FFN, plus a margin
    attention = F32 * p * 6 * e + (0 if flash_attention else scores)
    ffn = F32 * p * (4 * e + 3 * f)
    return int((image + max(attention, ffn)) * UNKNOWN_MARGIN) + 16 * MiB


def vision_compute(enc: VisionEncoder, flash_attention: bool) -> VisionCompute:
    """The encoder's buffer at load (warmup) and after the largest image."""
    warmup_side, largest_side = images(enc)
    warmup = compute_bytes(enc, warmup_side, flash_attention)
    largest = compute_bytes(enc, largest_side, flash_attention)
    n = largest_side // max(1, enc.patch_size)
    return VisionCompute(
        warmup_bytes=warmup,
        peak_bytes=max(warmup, largest),
        warmup_image=warmup_side,
        largest_image=largest_side,
        largest_patches=n * n,
        flash_attention=flash_attention,
        known=enc.known,
    )
