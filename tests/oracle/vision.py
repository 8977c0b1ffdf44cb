"""Vision projectors (mmproj GGUFs) measured with llama.cpp's own clip (tools/mtmd).

Ollama >= 0.30 starts llama-server with `--mmproj FILE` (a separate projector layer, or the model
file itself for Ollama-format GGUFs with inline `v.*` tensors) and llama-server creates the
encoder with mtmd: clip_init with the server's flash-attention mode, then a warmup that reserves
the encoder's compute buffer. tests/oracle/probe_vision.cpp does the same with no_alloc and
prints the weight bytes, the warmup reserve, and the reserve for the largest image the
preprocessor produces (what a real request grows the buffer to).

The projectors here have the real shapes of the encoders Ollama users pull, written as sparse
files (header, metadata and tensor infos are real; the data section is a hole clip never reads
with no_alloc). Keys and tensor names are the ones clip.cpp reads (clip-impl.h `KEY_*`/`TN_*`):

- SigLIP-so400m as in gemma3 (projector_type gemma3): 896 px, patch 14, 27 x 1152, ffn 4304,
  16 heads, avg-pooled 4x4 to 256 tokens, projected to the text width (3840 for gemma3 12B);
- the Qwen2.5-VL encoder (qwen2.5vl_merger): 32 x 1280, 16 heads, SwiGLU 3420, patch 14 with
  a 2x2 merger, window attention with a full-attention layer every 8 (n_wa_pattern);
- Pixtral as in mistral-small3.1 (pixtral with a 2x2 patch merger): 24 x 1024, 16 heads,
  SwiGLU 4096, 2-D RoPE, [IMG_BREAK] per row; and the original pixtral-12b (no merger);
- the Qwen3-VL encoder (qwen3vl_merger, 27 x 1152, patch 16, deepstack mergers), which the
  estimator does not model: it must err high.

Llama-3.2-vision (Ollama's `mllama`) has no clip handler in this llama.cpp (no PROJECTOR_TYPE for
it, and Ollama's compat layer has none either), so llama-server cannot load its projector: there is
nothing to measure.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, GGUFWriter

from .build import ensure_vision_probe
from .measure import cached_measurement
from .models import F16, F32, TensorSpec, cached_gguf, leave_data_as_hole, write_head

GENERATOR_VERSION = 1
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


@dataclass(frozen=True)
class ProjectorSpec:
    name: str
    kv: tuple[tuple[str, Any], ...]
    tensors: tuple[TensorSpec, ...]
    #: llama-server arguments Ollama adds for this kind of model (qwen-VL: --image-min-tokens 1024)
    launch: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def key(self) -> str:
        blob = json.dumps(
            [GENERATOR_VERSION, [list(kv) for kv in self.kv], [(t.name, t.shape, int(t.type)) for t in self.tensors]],
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def meta(self, key: str) -> Any:
        return dict(self.kv)[key]


class _Projector:
    def __init__(self, projector_type: str):
        self.kv: list[tuple[str, Any]] = [
            ("general.name", "vramgate synthetic projector"),
            ("clip.projector_type", projector_type),
            ("clip.has_vision_encoder", True),
        ]
        self.tensors: list[TensorSpec] = []

    def key(self, name: str, value: Any) -> None:
        self.kv.append((name if name.startswith(("clip.", "general.")) else f"clip.vision.{name}", value))

    def weight(self, name: str, *shape: int, qtype=None) -> None:
        typ = qtype if qtype is not None else (F32 if len(shape) == 1 else F16)
        self.tensors.append(TensorSpec(name, tuple(shape), typ))

    def linear(self, name: str, n_in: int, n_out: int, bias: bool = True) -> None:
        self.weight(f"{name}.weight", n_in, n_out)
        if bias:
            self.weight(f"{name}.bias", n_out)

    def encoder_keys(self, *, image_size: int, patch: int, n_embd: int, n_ff: int, n_layer: int, n_head: int,
                     proj_dim: int, eps: float, act: str, mean: list[float], std: list[float]) -> None:
        self.key(f"clip.use_{act}", True)
        self.key("image_size", image_size)
        self.key("patch_size", patch)
        self.key("embedding_length", n_embd)
        self.key("feed_forward_length", n_ff)
        self.key("block_count", n_layer)
        self.key("projection_dim", proj_dim)
        self.key("attention.head_count", n_head)
        self.key("attention.layer_norm_epsilon", eps)
        self.key("image_mean", mean)
        self.key("image_std", std)

    def spec(self, name: str, launch: tuple[str, ...] = (), notes: tuple[str, ...] = ()) -> ProjectorSpec:
        return ProjectorSpec(name, tuple(self.kv), tuple(self.tensors), launch, notes)


def gemma3_siglip(text_embd: int = 3840, *, n_embd: int = 1152, n_ff: int = 4304, n_layer: int = 27,
                  n_head: int = 16, patch: int = 14, image: int = 896, name: str = "") -> ProjectorSpec:
    """mmproj of gemma3 (12B: text width 3840; 4B: 2560; 27B: 5376): SigLIP-so400m at 896 px."""
    p = _Projector("gemma3")
    p.encoder_keys(image_size=image, patch=patch, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head,
                   proj_dim=text_embd, eps=1e-6, act="gelu", mean=[0.5] * 3, std=[0.5] * 3)
    p.weight("v.patch_embd.weight", patch, patch, 3, n_embd, qtype=F32)
    p.weight("v.patch_embd.bias", n_embd)
    p.weight("v.position_embd.weight", n_embd, (image // patch) ** 2, qtype=F32)
    for i in range(n_layer):
        b = f"v.blk.{i}."
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            p.linear(b + proj, n_embd, n_embd)
        for norm in ("ln1", "ln2"):
            p.weight(b + f"{norm}.weight", n_embd)
            p.weight(b + f"{norm}.bias", n_embd)
        p.linear(b + "ffn_up", n_embd, n_ff)
        p.linear(b + "ffn_down", n_ff, n_embd)
    p.weight("v.post_ln.weight", n_embd)
    p.weight("v.post_ln.bias", n_embd)
    p.weight("mm.input_projection.weight", text_embd, n_embd)
    p.weight("mm.soft_emb_norm.weight", n_embd)
    return p.spec(name or f"gemma3-siglip-{text_embd}")


def qwen25vl(text_embd: int = 3584, *, n_embd: int = 1280, n_ff: int = 3420, n_layer: int = 32,
             n_head: int = 16, patch: int = 14, wa_pattern: int = 8, name: str = "") -> ProjectorSpec:
    """mmproj of qwen2.5vl (7B: text width 3584; 3B: 2048): 32 x 1280, window attention."""
    p = _Projector("qwen2.5vl_merger")
    p.encoder_keys(image_size=560, patch=patch, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head,
                   proj_dim=text_embd, eps=1e-6, act="silu", mean=CLIP_MEAN, std=CLIP_STD)
    p.key("n_wa_pattern", wa_pattern)  # fullatt_block_indexes [7, 15, 23, 31]
    p.key("spatial_merge_size", 2)
    p.key("window_size", 112)
    p.weight("v.patch_embd.weight", patch, patch, 3, n_embd, qtype=F32)
    p.weight("v.patch_embd.weight.1", patch, patch, 3, n_embd, qtype=F32)  # the second temporal slice
    for i in range(n_layer):
        b = f"v.blk.{i}."
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            p.linear(b + proj, n_embd, n_embd)
        p.weight(b + "ln1.weight", n_embd)
        p.weight(b + "ln2.weight", n_embd)
        p.linear(b + "ffn_gate", n_embd, n_ff)
        p.linear(b + "ffn_up", n_embd, n_ff)
        p.linear(b + "ffn_down", n_ff, n_embd)
    p.weight("v.post_ln.weight", n_embd)
    p.linear("mm.0", 4 * n_embd, 4 * n_embd)
    p.linear("mm.2", 4 * n_embd, text_embd)
    return p.spec(name or f"qwen25vl-{text_embd}", launch=("--image-min-tokens", "1024"))


def qwen3vl(text_embd: int = 4096, *, n_embd: int = 1152, n_ff: int = 4304, n_layer: int = 27, n_head: int = 16,
            patch: int = 16, deepstack: tuple[int, ...] = (8, 16, 24), name: str = "") -> ProjectorSpec:
    """mmproj of qwen3-vl (8B: text width 4096): 27 x 1152, patch 16, fused QKV, a learned 48 x 48
    position grid resized to the image, deepstack mergers after layers 8, 16 and 24."""
    p = _Projector("qwen3vl_merger")
    p.encoder_keys(image_size=48 * patch, patch=patch, n_embd=n_embd, n_ff=n_ff, n_layer=n_layer, n_head=n_head,
                   proj_dim=text_embd, eps=1e-6, act="gelu", mean=[0.5] * 3, std=[0.5] * 3)
    p.key("spatial_merge_size", 2)
    p.weight("v.patch_embd.weight", patch, patch, 3, n_embd, qtype=F32)
    p.weight("v.patch_embd.weight.1", patch, patch, 3, n_embd, qtype=F32)
    p.weight("v.patch_embd.bias", n_embd)
    p.weight("v.position_embd.weight", n_embd, 48 * 48, qtype=F32)
    for i in range(n_layer):
        b = f"v.blk.{i}."
        p.linear(b + "attn_qkv", n_embd, 3 * n_embd)
        p.linear(b + "attn_out", n_embd, n_embd)
        for norm in ("ln1", "ln2"):
            p.weight(b + f"{norm}.weight", n_embd)
            p.weight(b + f"{norm}.bias", n_embd)
        p.linear(b + "ffn_up", n_embd, n_ff)
        p.linear(b + "ffn_down", n_ff, n_embd)
        if i in deepstack:
            d = f"v.deepstack.{i}."
            p.weight(d + "norm.weight", 4 * n_embd)
            p.weight(d + "norm.bias", 4 * n_embd)
            p.linear(d + "fc1", 4 * n_embd, 4 * n_embd)
            p.linear(d + "fc2", 4 * n_embd, text_embd)
    p.weight("v.post_ln.weight", n_embd)
    p.weight("v.post_ln.bias", n_embd)
    p.linear("mm.0", 4 * n_embd, 4 * n_embd)
    p.linear("mm.2", 4 * n_embd, text_embd)
    return p.spec(name or f"qwen3vl-{text_embd}", launch=("--image-min-tokens", "1024"))


def pixtral(text_embd: int = 5120, merge: int = 2, *, n_embd: int = 1024, n_ff: int = 4096, n_layer: int = 24,
            n_head: int = 16, patch: int = 14, name: str = "") -> ProjectorSpec:
    """mmproj of mistral-small3.1 (merge 2, 1540 px) or pixtral-12b (merge 1, 1024 px): 24 x 1024."""
    p = _Projector("pixtral")
    p.encoder_keys(image_size=1540 if merge > 1 else 1024, patch=patch, n_embd=n_embd, n_ff=n_ff,
                   n_layer=n_layer, n_head=n_head, proj_dim=text_embd, eps=1e-5, act="silu",
                   mean=CLIP_MEAN, std=CLIP_STD)
    if merge > 1:
        p.key("spatial_merge_size", merge)
    p.weight("v.patch_embd.weight", patch, patch, 3, n_embd, qtype=F32)
    p.weight("v.pre_ln.weight", n_embd)
    for i in range(n_layer):
        b = f"v.blk.{i}."
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            p.linear(b + proj, n_embd, n_embd, bias=False)
        p.weight(b + "ln1.weight", n_embd)
        p.weight(b + "ln2.weight", n_embd)
        p.linear(b + "ffn_gate", n_embd, n_ff, bias=False)
        p.linear(b + "ffn_up", n_embd, n_ff, bias=False)
        p.linear(b + "ffn_down", n_ff, n_embd, bias=False)
    if merge > 1:  # mistral-small 3.1's patch merger
        p.weight("mm.input_norm.weight", n_embd)
        p.weight("mm.patch_merger.weight", merge * merge * n_embd, n_embd)
    p.linear("mm.1", n_embd, text_embd, bias=merge == 1)
    p.linear("mm.2", text_embd, text_embd, bias=merge == 1)
    p.weight("v.token_embd.img_break", text_embd)
    return p.spec(name or ("mistral-small31-pixtral" if merge > 1 else "pixtral-12b"))


PROJECTORS: dict[str, Callable[[], ProjectorSpec]] = {
    "gemma3-12b": gemma3_siglip,
    "gemma3-4b": lambda: gemma3_siglip(2560),
    "qwen25vl-7b": qwen25vl,
    "mistral-small3.1": pixtral,
    "pixtral-12b": lambda: pixtral(5120, merge=1),
}
#: Loaded by clip, not modelled by the estimator (qwen3-vl's deepstack mergers keep three layer
#: outputs to the end and fragment the buffer differently with each shape): it must err high.
UNMODELLED: dict[str, Callable[[], ProjectorSpec]] = {"qwen3vl-8b": qwen3vl}

#: Other shapes of the same graphs (not real models), and the square image sides each is reserved
#: at: the rules must hold for any image the preprocessor produces and for other widths, not only
#: for the shapes above.
VARIANTS: dict[str, tuple[Callable[[], ProjectorSpec], tuple[int, ...]]] = {
    "siglip-base-448": (lambda: gemma3_siglip(2560, n_embd=768, n_ff=3072, n_head=12, n_layer=12, image=448,
                                              name="siglip-base-448"), ()),
    "siglip-672": (lambda: gemma3_siglip(3840, n_embd=1024, n_ff=2048, n_head=8, n_layer=6, image=672,
                                         name="siglip-672"), ()),
    "siglip-224": (lambda: gemma3_siglip(3840, n_ff=6000, n_layer=4, image=224, name="siglip-224"), ()),
    "qwen25vl-7b": (qwen25vl, (224, 448, 672, 896, 1120, 1344, 1568)),
    "qwen25vl-narrow": (lambda: qwen25vl(3584, n_embd=1024, n_ff=2816, n_layer=8, name="qwen25vl-narrow"),
                        (224, 560, 1008, 1568)),
    "mistral-small3.1": (pixtral, (112, 224, 672, 1344)),
    "pixtral-12b": (lambda: pixtral(5120, merge=1), (56, 112, 336, 672, 896)),
    "pixtral-narrow": (lambda: pixtral(3072, 2, n_embd=768, n_ff=2048, n_head=12, n_layer=6,
                                       name="pixtral-narrow"), (112, 448, 896)),
    "pixtral-wide-text": (lambda: pixtral(8192, 1, n_layer=4, name="pixtral-wide-text"), (56, 224, 448, 896)),
}


# --------------------------------------------------------------------------- writing


def write_projector(spec: ProjectorSpec, path: Path) -> None:
    """A sparse mmproj GGUF: real header, metadata and tensor infos; the data is a hole."""
    w = GGUFWriter(path, "clip")
    for key, value in spec.kv:
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, list):
            w.add_key_value(key, [float(v) for v in value], GGUFValueType.ARRAY, sub_type=GGUFValueType.FLOAT32)
        else:
            raise TypeError(f"{key}: unsupported value {value!r}")
    import numpy as np

    for t in spec.tensors:
        w.add_tensor_info(t.name, tuple(reversed(t.shape)), np.dtype(np.float32), t.nbytes, raw_dtype=t.type)
    write_head(w)
    leave_data_as_hole(w, spec.tensors)
    w.close()


def projector_path(spec: ProjectorSpec) -> Path:
    return cached_gguf(f"mmproj-{spec.name}-{spec.key()}.gguf", lambda tmp: write_projector(spec, tmp))


def build_projector(name: str) -> tuple[ProjectorSpec, Path]:
    if name in VARIANTS:
        spec = VARIANTS[name][0]()
    else:
        spec = (PROJECTORS.get(name) or UNMODELLED[name])()
    return spec, projector_path(spec)


# --------------------------------------------------------------------------- measuring


class VisionOracleError(RuntimeError):
    """clip refused the projector (message carries its log tail)."""


@dataclass(frozen=True)
class ImageReserve:
    image: tuple[int, int]
    n_patches: int
    n_tokens: int
    compute_bytes: int
    largest: bool


@dataclass(frozen=True)
class VisionMeasurement:
    """What clip allocates for a projector (CPU build: every buffer is on the host)."""

    projector: str
    weights_bytes: int
    warmup_compute_bytes: int  # reserved at load (llama-server's warmup)
    flash_attn: bool  # the mode clip ended up with
    warmup_image_size: int
    warmup_patches: int
    warmup_tokens: int
    image_min_pixels: int
    image_max_pixels: int
    n_merge: int
    mmproj_embd: int
    reserves: tuple[ImageReserve, ...]
    args: tuple[str, ...] = ()

    @property
    def largest(self) -> ImageReserve:
        return next(r for r in self.reserves if r.largest)

    @property
    def peak_compute_bytes(self) -> int:
        """The compute buffer after the largest image: ggml-alloc only ever grows it."""
        return max(self.warmup_compute_bytes, self.largest.compute_bytes)


def vision_args(flash_attention: bool | None, launch: tuple[str, ...] = (),
                images: tuple[tuple[int, int], ...] = ()) -> list[str]:
    args = ["-fa", "auto" if flash_attention is None else ("on" if flash_attention else "off"), *launch]
    for w, h in images:
        args += ["--image", str(w), str(h)]
    return args


def _parse(stdout: str, log: str, args: list[str]) -> VisionMeasurement:
    rows = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    errors = [r["error"] for r in rows if "error" in r]
    if errors or not rows:
        raise VisionOracleError(f"{errors[0] if errors else 'no output'}; clip log tail:\n"
                                + "\n".join(log.splitlines()[-15:]))
    head = rows[0]
    reserves = tuple(
        ImageReserve(tuple(r["image"]), r["n_patches"], r["n_tokens"], r["compute"], r["largest"])  # type: ignore[arg-type]
        for r in rows[1:]
    )
    return VisionMeasurement(
        projector=head["projector"], weights_bytes=head["weights"], warmup_compute_bytes=head["warmup_compute"],
        flash_attn=head["flash_attn"], warmup_image_size=head["warmup_image_size"],
        warmup_patches=head["warmup_patches"], warmup_tokens=head["warmup_tokens"],
        image_min_pixels=head["image_min_pixels"], image_max_pixels=head["image_max_pixels"],
        n_merge=head["n_merge"], mmproj_embd=head["mmproj_embd"], reserves=reserves, args=tuple(args),
    )


def _from_json(data: dict) -> VisionMeasurement:
    data = dict(data)
    data["reserves"] = tuple(ImageReserve(**{**r, "image": tuple(r["image"])}) for r in data["reserves"])
    data["args"] = tuple(data["args"])
    return VisionMeasurement(**data)


_memo: dict[str, VisionMeasurement] = {}


def measure_projector(path: Path | str, args: list[str], probe: Path | None = None) -> VisionMeasurement:
    """Run the vision probe (cached in memory and on disk, keyed by the probe binary, file and args)."""
    path = Path(path)
    probe = probe or ensure_vision_probe()
    st, pst = path.stat(), probe.stat()
    key = hashlib.sha256(json.dumps(
        [f"{probe}:{pst.st_size}:{pst.st_mtime_ns}", f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}", args]
    ).encode()).hexdigest()[:32]

    def run() -> VisionMeasurement:
        proc = subprocess.run([str(probe), "-m", str(path), *args], capture_output=True, text=True, timeout=300,
                              check=False)
        if proc.returncode != 0 and '"error"' not in proc.stdout:
            raise VisionOracleError(f"vision probe exited {proc.returncode}; clip log tail:\n"
                                    + "\n".join(proc.stderr.splitlines()[-15:]))
        return _parse(proc.stdout, proc.stderr, args)

    return cached_measurement("vision-" + key, _memo, _from_json, run)


__all__ = [
    "PROJECTORS", "UNMODELLED", "VARIANTS", "ImageReserve", "ProjectorSpec", "VisionMeasurement", "VisionOracleError",
    "VisionRow", "build_projector", "compare_projector", "measure_projector", "vision_args",
]


# --------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class VisionRow:
    """One component of one projector and configuration: the estimate against clip's own count."""

    projector: str
    flash_attention: bool
    component: str  # "weights", "warmup" (compute reserved at load), "largest" (after the largest image)
    estimated: int
    measured: int
    detail: str = ""

    @property
    def rel_err(self) -> float:
        if self.measured == 0:
            return 0.0 if self.estimated == 0 else float("inf")
        return (self.estimated - self.measured) / self.measured

    @property
    def ok(self) -> bool:
        from .compare import TOLERANCES

        rel, absolute = TOLERANCES["weights" if self.component == "weights" else "compute"]
        return abs(self.estimated - self.measured) <= absolute or abs(self.rel_err) <= rel

    def describe(self) -> str:
        fa = "fa" if self.flash_attention else "nofa"
        return (f"{self.projector} {fa} {self.component:8s} {self.detail}: estimated "
                f"{self.estimated / 2**20:9.2f} MiB, clip {self.measured / 2**20:9.2f} MiB, "
                f"error {self.rel_err:+.2%} ({(self.estimated - self.measured) / 2**20:+.2f} MiB)")


def projector_description(path: Path):
    """The estimator's vision encoder and projector bytes, read from the mmproj GGUF."""
    from proxy.footprint.gguf_file import read_gguf_header
    from proxy.footprint.vision import encoder_from_projector

    metadata, tensors = read_gguf_header(path)
    return encoder_from_projector(metadata), sum(t.nbytes for t in tensors)


def compare_projector(name: str, probe: Path | None = None) -> list[VisionRow]:
    """Weights, warmup and largest-image compute, flash attention on and off."""
    from proxy.footprint.vision import compute_bytes, images

    spec, path = build_projector(name)
    encoder, weights = projector_description(path)
    assert encoder is not None, f"{name}: no vision encoder read from {path}"
    warmup_side, largest_side = images(encoder)
    rows = []
    for fa in (True, False):
        m = measure_projector(path, vision_args(fa, spec.launch), probe)
        if fa:
            rows.append(VisionRow(name, fa, "weights", weights, m.weights_bytes))
        rows.append(VisionRow(name, fa, "warmup", compute_bytes(encoder, warmup_side, fa), m.warmup_compute_bytes,
                              f"{m.warmup_image_size} px, {m.warmup_patches} patches"))
        big = m.largest
        rows.append(VisionRow(name, fa, "largest", compute_bytes(encoder, largest_side, fa), big.compute_bytes,
                              f"{big.image[0]} px, {big.n_patches} patches"))
        # the images themselves must be the ones clip picks
        assert (m.warmup_image_size, big.image[0]) == (warmup_side, largest_side), (name, m, warmup_side, largest_side)
    return rows


def compare_sizes(name: str, probe: Path | None = None) -> list[VisionRow]:
    """The compute of a VARIANTS entry at each of its image sides, flash attention on and off."""
    from proxy.footprint.vision import compute_bytes

    spec, path = build_projector(name)
    encoder, _ = projector_description(path)
    assert encoder is not None
    sides = VARIANTS[name][1]
    rows = []
    for fa in (True, False):
        m = measure_projector(path, vision_args(fa, spec.launch, tuple((s, s) for s in sides)), probe)
        for r in m.reserves:
            rows.append(VisionRow(name, fa, "image", compute_bytes(encoder, r.image[0], fa), r.compute_bytes,
                                  f"{r.image[0]} px, {r.n_patches} patches"))
    return rows


def report() -> int:
    """`uv run python -m tests.oracle.vision`: the measured-vs-estimated table (markdown)."""
    from .compare import TOLERANCES

    rows: list[VisionRow] = []
    print("| projector | flash attention | component | image | clip (MiB) | estimate (MiB) | error |")
    print("|---|---|---|---|---|---|---|")
    for name in PROJECTORS:
        for r in compare_projector(name):
            rows.append(r)
            fa = "on" if r.flash_attention else "off"
            if r.component == "weights":
                fa = "-"
            mark = "" if r.ok else " !"
            print(f"| {name} | {fa} | {r.component} | {r.detail or '-'} | {r.measured / 2**20:.2f} | "
                  f"{r.estimated / 2**20:.2f} | {r.rel_err:+.2%}{mark} |")
    sweep = [r for name in VARIANTS for r in compare_sizes(name)]
    bad = [r for r in rows + sweep if not r.ok]
    worst = max(sweep, key=lambda r: abs(r.rel_err))
    print(f"\nimage-size and shape sweep ({len(sweep)} reserves): worst {worst.describe()}")
    print(f"tolerance: compute {TOLERANCES['compute'][0]:.0%} or {TOLERANCES['compute'][1] >> 20} MiB; "
          f"{len(bad)} outside")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(report())
