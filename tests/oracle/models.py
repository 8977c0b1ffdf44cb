"""Synthetic GGUF models that the vendored llama.cpp really loads, for many architectures.

Each architecture has a builder that returns a ModelSpec (metadata + tensor table) from a few
shape parameters, with tensor names and shapes taken from llama.cpp's src/models/<arch>.cpp
load_arch_tensors. Two sizes per architecture:
- "small": tiny shapes, a 259-token SPM vocab, real (random) tensor data written;
- "real": real-scale shapes of a known model (llama3.1-8B, qwen3-30b-a3b, gemma3-12b, ...) written
  as sparse files: header, metadata and tensor infos are real, the data section is a hole.
  llama.cpp's no_alloc probe reads metadata only, so these cost no disk and no time.

Files are cached under $VRAMGATE_CACHE/models, named by a hash of the spec, so CI re-runs are fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFValueType, GGUFWriter
from gguf import GGMLQuantizationType as T

from .build import cache_dir, file_lock, log

GENERATOR_VERSION = 1
F32, F16, Q8_0, Q4_K, Q6_K, MXFP4 = T.F32, T.F16, T.Q8_0, T.Q4_K, T.Q6_K, T.MXFP4


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first, as llama.cpp's create_tensor
    type: T

    @property
    def nbytes(self) -> int:
        block, size = GGML_QUANT_SIZES[self.type]
        n = int(np.prod(self.shape))
        assert self.shape[0] % block == 0, f"{self.name}: ne0 {self.shape[0]} not a multiple of {block}"
        return n // block * size


@dataclass(frozen=True)
class ModelSpec:
    name: str  # e.g. "llama-small"
    arch: str
    kv: tuple[tuple[str, Any], ...]
    tensors: tuple[TensorSpec, ...]
    n_vocab: int
    sparse: bool
    embedding: bool = False  # an embedding model (llama-server started with --embeddings)
    n_ctx_train: int = 0
    notes: tuple[str, ...] = field(default=())
    skipped_prefixes: tuple[str, ...] = ()  # tensors llama.cpp does not load (MTP blocks)

    def key(self) -> str:
        blob = json.dumps(
            [GENERATOR_VERSION, self.arch, [list(kv) for kv in self.kv],
             [(t.name, t.shape, int(t.type)) for t in self.tensors], self.n_vocab, self.sparse],
            default=str,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def weights_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def loaded_weights_bytes(self) -> int:
        """What llama.cpp loads: every tensor except skipped (MTP) blocks."""
        return sum(t.nbytes for t in self.tensors if not t.name.startswith(self.skipped_prefixes))


# --------------------------------------------------------------------------- writing


def _vocab(n_vocab: int) -> tuple[list[str], list[float], list[int]]:
    """SPM vocab llama.cpp accepts: <unk> <s> </s>, 256 byte tokens, then filler pieces."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    types = [2, 3, 3] + [6] * 256  # UNKNOWN, CONTROL, CONTROL, BYTE
    extra = n_vocab - len(tokens)
    assert extra >= 0, "n_vocab must be at least 259"
    tokens += [f"\u2581t{i}" for i in range(extra)]
    types += [1] * extra  # NORMAL
    scores = [0.0] * len(tokens)
    return tokens, scores, types


def _random_data(t: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    if t.type == F32:
        return (rng.standard_normal(int(np.prod(t.shape)), dtype=np.float32) * 0.02)
    if t.type == F16:
        return (rng.standard_normal(int(np.prod(t.shape)), dtype=np.float32) * 0.02).astype(np.float16)
    return rng.integers(0, 256, size=t.nbytes, dtype=np.uint8)


def write_gguf(spec: ModelSpec, path: Path) -> None:
    """Write the model; sparse specs leave the tensor data as a hole of the right size."""
    w = GGUFWriter(path, spec.arch)
    for key, value in spec.kv:
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, float):
            w.add_float32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        elif isinstance(value, (list, tuple)):
            if all(isinstance(v, bool) for v in value):
                w.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
            else:
                w.add_key_value(key, list(value), GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
        else:
            raise TypeError(f"{key}: unsupported value {value!r}")
    tokens, scores, types = _vocab(spec.n_vocab)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for t in spec.tensors:
        # GGUFWriter takes numpy order (slowest dimension first) and reverses it on disk
        w.add_tensor_info(t.name, tuple(reversed(t.shape)), np.dtype(np.float32), t.nbytes, raw_dtype=t.type)
    fout = write_head(w)
    if spec.sparse:
        leave_data_as_hole(w, spec.tensors)
    else:
        rng = np.random.default_rng(int(spec.key(), 16) % (2**32))
        for t in spec.tensors:
            data = _random_data(t, rng)
            data.tofile(fout)
            w.write_padding(fout, data.nbytes)
    w.close()


def write_head(w: GGUFWriter) -> Any:
    """Header, key/values and tensor infos, padded to where the tensor data starts; the open file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    assert w.fout is not None
    fout = w.fout[0]
    w.write_padding(fout, fout.tell())
    return fout


def leave_data_as_hole(w: GGUFWriter, tensors: Iterable[TensorSpec]) -> None:
    """The tensor data as a sparse hole of its full size: llama.cpp's no-alloc paths never read it."""
    assert w.fout is not None
    fout = w.fout[0]
    total = fout.tell() + sum(GGUFWriter.ggml_pad(t.nbytes, w.data_alignment) for t in tensors)
    fout.flush()
    fout.truncate(total)


def model_path(spec: ModelSpec) -> Path:
    """The cached GGUF for this spec, written (atomically) when missing."""
    return cached_gguf(f"{spec.name}-{spec.key()}.gguf", lambda tmp: write_gguf(spec, tmp))


def cached_gguf(name: str, write: Callable[[Path], None]) -> Path:
    """``models/<name>`` in the cache, made by ``write(tmp)`` then renamed into place when missing."""
    directory = cache_dir() / "models"
    path = directory / name
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    # one writer at a time (xdist workers collect the same modules at once): the others wait, then find it
    with file_lock(directory / ".write.lock", "another process is writing test models; waiting for it"):
        if path.exists():
            return path
        began = time.monotonic()
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=directory)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        _report_written(directory, time.monotonic() - began)
    return path


_written = {"count": 0, "seconds": 0.0, "logged_at": 0.0}


def _report_written(directory: Path, seconds: float) -> None:
    """A line for the first model this process writes, then one every 5 s (a cold run writes ~35)."""
    _written["count"] += 1
    _written["seconds"] += seconds
    now = time.monotonic()
    if _written["count"] == 1:
        log(f"writing the synthetic test models into {directory} (once; the real-scale ones are sparse files)")
    elif now - _written["logged_at"] >= 5:
        log(f"wrote {_written['count']} test models so far ({_written['seconds']:.0f} s)")
    else:
        return
    _written["logged_at"] = now


# --------------------------------------------------------------------------- building blocks


class _Builder:
    """Collects metadata and tensors; picks tensor types like a Q4_K_M-style mix for real shapes."""

    def __init__(self, arch: str, sparse: bool):
        self.arch = arch
        self.sparse = sparse
        self.kv: list[tuple[str, Any]] = []
        self.tensors: list[TensorSpec] = []

    def key(self, name: str, value: Any) -> None:
        self.kv.append((f"{self.arch}.{name}" if not name.startswith(("general.", "tokenizer.")) else name, value))

    def weight(self, name: str, *shape: int, qtype: T | None = None) -> None:
        if len(shape) == 1:
            typ = F32  # norms, biases, sinks: F32 as the converters write them
        elif qtype is not None:
            typ = qtype
        elif not self.sparse:
            typ = F16 if shape[0] % 32 else Q8_0
        else:
            typ = Q4_K if shape[0] % 256 == 0 else (Q8_0 if shape[0] % 32 == 0 else F16)
        if typ != F32 and shape[0] % GGML_QUANT_SIZES[typ][0]:
            typ = Q8_0 if shape[0] % 32 == 0 else F16
        self.tensors.append(TensorSpec(name, tuple(shape), typ))

    def hi(self) -> T | None:
        """The higher-precision type a K-quant mix uses for output / attn_v / ffn_down."""
        return Q6_K if self.sparse else None

    def spec(self, name: str, n_vocab: int, n_ctx_train: int, embedding: bool = False, notes=(),
             skipped_prefixes=()) -> ModelSpec:
        return ModelSpec(name, self.arch, tuple(self.kv), tuple(self.tensors), n_vocab, self.sparse,
                         embedding, n_ctx_train, tuple(notes), tuple(skipped_prefixes))


def _common(b: _Builder, *, n_ctx: int, n_embd: int, n_layer: int, n_ff: int | list[int], n_head: int,
            n_head_kv: int | list[int], head_dim: int | None = None, rms: bool = True) -> None:
    b.key("general.name", "vramgate synthetic")  # not "phi3": that name makes llama.cpp expect <|endoftext|>
    b.key("context_length", n_ctx)
    b.key("embedding_length", n_embd)
    b.key("block_count", n_layer)
    b.key("feed_forward_length", n_ff)
    b.key("attention.head_count", n_head)
    b.key("attention.head_count_kv", n_head_kv)
    if head_dim is not None:
        b.key("attention.key_length", head_dim)
        b.key("attention.value_length", head_dim)
    b.key("attention.layer_norm_rms_epsilon" if rms else "attention.layer_norm_epsilon", 1e-5)


def _embed_and_output(b: _Builder, n_embd: int, n_vocab: int, tied: bool, norm_name: str = "output_norm") -> None:
    b.weight("token_embd.weight", n_embd, n_vocab, qtype=Q6_K if b.sparse and tied else None)
    b.weight(f"{norm_name}.weight", n_embd)
    if not tied:
        b.weight("output.weight", n_embd, n_vocab, qtype=b.hi())


def _attn_qkvo(b: _Builder, i: int, n_embd: int, n_q: int, n_kv: int, bias: bool = False) -> None:
    p = f"blk.{i}."
    b.weight(p + "attn_q.weight", n_embd, n_q)
    b.weight(p + "attn_k.weight", n_embd, n_kv)
    b.weight(p + "attn_v.weight", n_embd, n_kv, qtype=b.hi())
    if bias:
        b.weight(p + "attn_q.bias", n_q)
        b.weight(p + "attn_k.bias", n_kv)
        b.weight(p + "attn_v.bias", n_kv)
    b.weight(p + "attn_output.weight", n_q, n_embd)


def _ffn(b: _Builder, i: int, n_embd: int, n_ff: int) -> None:
    p = f"blk.{i}."
    b.weight(p + "ffn_gate.weight", n_embd, n_ff)
    b.weight(p + "ffn_up.weight", n_embd, n_ff)
    b.weight(p + "ffn_down.weight", n_ff, n_embd, qtype=b.hi())


def _moe(b: _Builder, i: int, n_embd: int, n_ff_exp: int, n_expert: int, qtype: T | None = None) -> None:
    p = f"blk.{i}."
    b.weight(p + "ffn_gate_inp.weight", n_embd, n_expert, qtype=F32 if not b.sparse else None)
    b.weight(p + "ffn_gate_exps.weight", n_embd, n_ff_exp, n_expert, qtype=qtype)
    b.weight(p + "ffn_up_exps.weight", n_embd, n_ff_exp, n_expert, qtype=qtype)
    b.weight(p + "ffn_down_exps.weight", n_ff_exp, n_embd, n_expert, qtype=qtype or b.hi())


# --------------------------------------------------------------------------- architectures


def llama(size: str, tied: bool = False) -> ModelSpec:
    """Llama with GQA (llama3.1-8B-like), or tied embeddings (llama3.2-1B-like)."""
    real = size == "real"
    if tied:
        n_embd, n_layer, n_ff, n_head, n_kv, n_vocab = (2048, 16, 8192, 32, 8, 128256) if real else (256, 2, 512, 4, 2, 259)
    else:
        n_embd, n_layer, n_ff, n_head, n_kv, n_vocab = (4096, 32, 14336, 32, 8, 128256) if real else (256, 3, 512, 4, 2, 259)
    n_ctx = 131072 if real else 32768
    head = n_embd // n_head
    b = _Builder("llama", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_kv)
    b.key("rope.dimension_count", head)
    b.key("rope.freq_base", 500000.0)
    _embed_and_output(b, n_embd, n_vocab, tied)
    for i in range(n_layer):
        b.weight(f"blk.{i}.attn_norm.weight", n_embd)
        _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        b.weight(f"blk.{i}.ffn_norm.weight", n_embd)
        _ffn(b, i, n_embd, n_ff)
    name = ("llama-tied" if tied else "llama") + f"-{size}"
    return b.spec(name, n_vocab, n_ctx)


def mixtral(size: str) -> ModelSpec:
    """Mixtral-8x7B-like: the llama architecture with 8 experts, 2 used per token."""
    real = size == "real"
    n_embd, n_layer, n_ff, n_head, n_kv, n_vocab = (4096, 32, 14336, 32, 8, 32000) if real else (256, 2, 512, 4, 2, 259)
    n_expert, n_used = (8, 2) if real else (4, 2)
    n_ctx = 32768
    head = n_embd // n_head
    b = _Builder("llama", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_kv)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_used)
    b.key("rope.dimension_count", head)
    b.key("rope.freq_base", 1000000.0)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    for i in range(n_layer):
        b.weight(f"blk.{i}.attn_norm.weight", n_embd)
        _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        b.weight(f"blk.{i}.ffn_norm.weight", n_embd)
        _moe(b, i, n_embd, n_ff, n_expert)
    return b.spec(f"mixtral-{size}", n_vocab, n_ctx)


def qwen2(size: str) -> ModelSpec:
    """Qwen2.5-7B-like: GQA with q/k/v biases."""
    real = size == "real"
    n_embd, n_layer, n_ff, n_head, n_kv, n_vocab = (3584, 28, 18944, 28, 4, 152064) if real else (256, 2, 512, 4, 2, 259)
    n_ctx = 32768
    b = _Builder("qwen2", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_kv)
    b.key("rope.freq_base", 1000000.0)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    head = n_embd // n_head
    for i in range(n_layer):
        b.weight(f"blk.{i}.attn_norm.weight", n_embd)
        _attn_qkvo(b, i, n_embd, n_embd, n_kv * head, bias=True)
        b.weight(f"blk.{i}.ffn_norm.weight", n_embd)
        _ffn(b, i, n_embd, n_ff)
    return b.spec(f"qwen2-{size}", n_vocab, n_ctx)


def qwen3moe(size: str) -> ModelSpec:
    """Qwen3-30B-A3B-like MoE: 128 experts, 8 used, explicit head_dim 128, q/k norms."""
    real = size == "real"
    if real:
        n_embd, n_layer, n_head, n_kv, head, n_expert, n_used, n_ff_exp, n_vocab = 2048, 48, 32, 4, 128, 128, 8, 768, 151936
    else:
        n_embd, n_layer, n_head, n_kv, head, n_expert, n_used, n_ff_exp, n_vocab = 256, 2, 4, 2, 64, 4, 2, 256, 259
    n_ctx = 40960
    b = _Builder("qwen3moe", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=6144 if real else 512, n_head=n_head,
            n_head_kv=n_kv, head_dim=head)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_used)
    b.key("expert_feed_forward_length", n_ff_exp)
    b.key("rope.freq_base", 1000000.0)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    for i in range(n_layer):
        b.weight(f"blk.{i}.attn_norm.weight", n_embd)
        _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        b.weight(f"blk.{i}.attn_q_norm.weight", head)
        b.weight(f"blk.{i}.attn_k_norm.weight", head)
        b.weight(f"blk.{i}.ffn_norm.weight", n_embd)
        _moe(b, i, n_embd, n_ff_exp, n_expert)
    return b.spec(f"qwen3moe-{size}", n_vocab, n_ctx)


def gemma3(size: str, swa_array: bool = False) -> ModelSpec:
    """Gemma3-12B-like: sliding window 1024 on 5 of every 6 layers, head_dim 256, tied embeddings.

    swa_array: the GGUF carries sliding_window_pattern as a per-layer bool array (as the current
    converter writes it for newer models), here 3 of every 4 layers, not the architecture's default.
    """
    real = size == "real"
    if real:
        n_embd, n_layer, n_ff, n_head, n_kv, head, n_vocab, swa = 3840, 48, 15360, 16, 8, 256, 262144, 1024
    else:
        n_embd, n_layer, n_ff, n_head, n_kv, head, n_vocab, swa = 256, 6, 512, 4, 2, 64, 259, 256
    n_ctx = 131072 if real else 32768
    b = _Builder("gemma3", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_kv, head_dim=head)
    b.key("attention.sliding_window", swa)
    if swa_array:
        b.key("attention.sliding_window_pattern", [il % 4 < 3 for il in range(n_layer)])
    b.key("rope.freq_base", 1000000.0)
    _embed_and_output(b, n_embd, n_vocab, tied=True)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        b.weight(p + "post_attention_norm.weight", n_embd)
        b.weight(p + "attn_k_norm.weight", head)
        b.weight(p + "attn_q_norm.weight", head)
        b.weight(p + "ffn_norm.weight", n_embd)
        _ffn(b, i, n_embd, n_ff)
        b.weight(p + "post_ffw_norm.weight", n_embd)
    return b.spec(f"gemma3{'-swa-array' if swa_array else ''}-{size}", n_vocab, n_ctx)


def gpt_oss(size: str) -> ModelSpec:
    """gpt-oss-20b-like: alternating SWA (128), attention sinks, MXFP4 experts with biases."""
    real = size == "real"
    if real:
        n_embd, n_layer, n_head, n_kv, head, n_expert, n_used, n_ff_exp, n_vocab = 2880, 24, 64, 8, 64, 32, 4, 2880, 201088
    else:
        n_embd, n_layer, n_head, n_kv, head, n_expert, n_used, n_ff_exp, n_vocab = 256, 2, 4, 2, 64, 4, 2, 256, 259
    n_ctx = 131072 if real else 32768
    b = _Builder("gpt-oss", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff_exp, n_head=n_head, n_head_kv=n_kv, head_dim=head)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_used)
    b.key("expert_feed_forward_length", n_ff_exp)
    b.key("attention.sliding_window", 128)
    b.key("rope.freq_base", 150000.0)
    b.weight("token_embd.weight", n_embd, n_vocab, qtype=Q8_0 if real else None)
    b.weight("output_norm.weight", n_embd)
    b.weight("output.weight", n_embd, n_vocab, qtype=Q8_0 if real else None)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        b.weight(p + "post_attention_norm.weight", n_embd)
        for proj, rows in (("q", n_head * head), ("k", n_kv * head), ("v", n_kv * head)):
            b.weight(p + f"attn_{proj}.weight", n_embd, rows, qtype=Q8_0 if real else None)
            b.weight(p + f"attn_{proj}.bias", rows)
        b.weight(p + "attn_output.weight", n_head * head, n_embd, qtype=Q8_0 if real else None)
        b.weight(p + "attn_output.bias", n_embd)
        b.weight(p + "attn_sinks.weight", n_head)
        b.weight(p + "ffn_gate_inp.weight", n_embd, n_expert, qtype=F32)
        b.weight(p + "ffn_gate_inp.bias", n_expert)
        for proj, shape in (("gate", (n_embd, n_ff_exp, n_expert)), ("up", (n_embd, n_ff_exp, n_expert)),
                            ("down", (n_ff_exp, n_embd, n_expert))):
            b.weight(p + f"ffn_{proj}_exps.weight", *shape, qtype=MXFP4)
        b.tensors.append(TensorSpec(p + "ffn_gate_exps.bias", (n_ff_exp, n_expert), F32))
        b.tensors.append(TensorSpec(p + "ffn_up_exps.bias", (n_ff_exp, n_expert), F32))
        b.tensors.append(TensorSpec(p + "ffn_down_exps.bias", (n_embd, n_expert), F32))
    return b.spec(f"gpt-oss-{size}", n_vocab, n_ctx)


def phi3(size: str) -> ModelSpec:
    """Phi-3-mini-4k-like: fused attn_qkv, ffn_up of 2*n_ff, no GQA."""
    real = size == "real"
    n_embd, n_layer, n_ff, n_head, n_vocab = (3072, 32, 8192, 32, 32064) if real else (256, 2, 512, 4, 259)
    n_ctx = 4096
    b = _Builder("phi3", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head)
    b.key("rope.dimension_count", n_embd // n_head)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        b.weight(p + "attn_qkv.weight", n_embd, 3 * n_embd, qtype=Q6_K if real else None)
        b.weight(p + "attn_output.weight", n_embd, n_embd)
        b.weight(p + "ffn_norm.weight", n_embd)
        b.weight(p + "ffn_down.weight", n_ff, n_embd, qtype=b.hi())
        b.weight(p + "ffn_up.weight", n_embd, 2 * n_ff)
    return b.spec(f"phi3-{size}", n_vocab, n_ctx)


def deepseek2(size: str) -> ModelSpec:
    """DeepSeek-V2-Lite-like MLA, written as the current converter does (split k_b/v_b, MLA keys)."""
    real = size == "real"
    if real:
        n_embd, n_layer, n_head, q_lora, kv_lora, rope, nope, v_head = 2048, 27, 16, 0, 512, 64, 128, 128
        n_ff, n_ff_exp, n_expert, n_used, n_shared, n_dense, n_vocab = 10944, 1408, 64, 6, 2, 1, 102400
    else:
        n_embd, n_layer, n_head, q_lora, kv_lora, rope, nope, v_head = 256, 3, 4, 96, 128, 32, 32, 64
        n_ff, n_ff_exp, n_expert, n_used, n_shared, n_dense, n_vocab = 512, 128, 4, 2, 1, 1, 259
    n_ctx = 163840 if real else 32768
    k_mla = nope + rope
    b = _Builder("deepseek2", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=1)
    b.key("attention.key_length", kv_lora + rope)
    b.key("attention.value_length", kv_lora)
    b.key("attention.key_length_mla", k_mla)
    b.key("attention.value_length_mla", v_head)
    if q_lora:
        b.key("attention.q_lora_rank", q_lora)
    b.key("attention.kv_lora_rank", kv_lora)
    b.key("rope.dimension_count", rope)
    b.key("leading_dense_block_count", n_dense)
    b.key("expert_count", n_expert)
    b.key("expert_used_count", n_used)
    b.key("expert_shared_count", n_shared)
    b.key("expert_feed_forward_length", n_ff_exp)
    b.key("expert_weights_scale", 1.0)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        if q_lora:
            b.weight(p + "attn_q_a_norm.weight", q_lora)
            b.weight(p + "attn_q_a.weight", n_embd, q_lora)
            b.weight(p + "attn_q_b.weight", q_lora, n_head * k_mla)
        else:
            b.weight(p + "attn_q.weight", n_embd, n_head * k_mla)
        b.weight(p + "attn_kv_a_norm.weight", kv_lora)
        b.weight(p + "attn_kv_a_mqa.weight", n_embd, kv_lora + rope)
        b.weight(p + "attn_k_b.weight", nope, kv_lora, n_head, qtype=Q8_0 if real else None)
        b.weight(p + "attn_v_b.weight", kv_lora, v_head, n_head, qtype=Q8_0 if real else None)
        b.weight(p + "attn_output.weight", n_head * v_head, n_embd)
        b.weight(p + "ffn_norm.weight", n_embd)
        if i < n_dense:
            _ffn(b, i, n_embd, n_ff)
        else:
            _moe(b, i, n_embd, n_ff_exp, n_expert)
            b.weight(p + "ffn_gate_shexp.weight", n_embd, n_ff_exp * n_shared)
            b.weight(p + "ffn_up_shexp.weight", n_embd, n_ff_exp * n_shared)
            b.weight(p + "ffn_down_shexp.weight", n_ff_exp * n_shared, n_embd, qtype=b.hi())
    return b.spec(f"deepseek2-{size}", n_vocab, n_ctx)


def bert(size: str) -> ModelSpec:
    """A BERT embedding model (mxbai-embed-large-like): mean pooling, non-causal, no KV cache."""
    real = size == "real"
    n_embd, n_layer, n_ff, n_head, n_vocab = (1024, 24, 4096, 16, 30522) if real else (256, 2, 512, 4, 259)
    n_ctx = 512
    b = _Builder("bert", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head, rms=False)
    b.key("attention.causal", False)
    b.key("pooling_type", 1)  # mean
    b.key("tokenizer.ggml.token_type_count", 2)
    b.weight("token_embd.weight", n_embd, n_vocab, qtype=F16)
    b.weight("token_types.weight", n_embd, 2, qtype=F32)
    b.weight("position_embd.weight", n_embd, n_ctx, qtype=F16)
    b.weight("token_embd_norm.weight", n_embd)
    b.weight("token_embd_norm.bias", n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        for proj in "qkv":
            b.weight(p + f"attn_{proj}.weight", n_embd, n_embd, qtype=F16)
            b.weight(p + f"attn_{proj}.bias", n_embd)
        b.weight(p + "attn_output.weight", n_embd, n_embd, qtype=F16)
        b.weight(p + "attn_output.bias", n_embd)
        b.weight(p + "attn_output_norm.weight", n_embd)
        b.weight(p + "attn_output_norm.bias", n_embd)
        b.weight(p + "ffn_up.weight", n_embd, n_ff, qtype=F16)
        b.weight(p + "ffn_up.bias", n_ff)
        b.weight(p + "ffn_down.weight", n_ff, n_embd, qtype=F16)
        b.weight(p + "ffn_down.bias", n_embd)
        b.weight(p + "layer_output_norm.weight", n_embd)
        b.weight(p + "layer_output_norm.bias", n_embd)
    return b.spec(f"bert-{size}", n_vocab, n_ctx, embedding=True)


def nomic_bert(size: str) -> ModelSpec:
    """nomic-embed-text-like embedding model: fused QKV, rotary positions, SwiGLU, 2048 context."""
    real = size == "real"
    n_embd, n_layer, n_ff, n_head, n_vocab = (768, 12, 3072, 12, 30522) if real else (256, 2, 512, 4, 259)
    n_ctx = 2048
    b = _Builder("nomic-bert", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_head, rms=False)
    b.key("attention.causal", False)
    b.key("pooling_type", 1)  # mean
    b.key("rope.freq_base", 1000.0)
    b.key("tokenizer.ggml.token_type_count", 2)
    b.weight("token_embd.weight", n_embd, n_vocab, qtype=F16)
    b.weight("token_types.weight", n_embd, 2, qtype=F32)
    b.weight("token_embd_norm.weight", n_embd)
    b.weight("token_embd_norm.bias", n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_qkv.weight", n_embd, 3 * n_embd, qtype=F16)
        b.weight(p + "attn_output.weight", n_embd, n_embd, qtype=F16)
        b.weight(p + "attn_output_norm.weight", n_embd)
        b.weight(p + "attn_output_norm.bias", n_embd)
        b.weight(p + "ffn_up.weight", n_embd, n_ff, qtype=F16)
        b.weight(p + "ffn_gate.weight", n_embd, n_ff, qtype=F16)
        b.weight(p + "ffn_down.weight", n_ff, n_embd, qtype=F16)
        b.weight(p + "layer_output_norm.weight", n_embd)
        b.weight(p + "layer_output_norm.bias", n_embd)
    return b.spec(f"nomic-bert-{size}", n_vocab, n_ctx, embedding=True)


def lfm2(size: str) -> ModelSpec:
    """LFM2-1.2B-like hybrid: short-convolution (recurrent state) layers plus a few GQA layers."""
    real = size == "real"
    if real:
        n_embd, n_ff, n_head, n_vocab = 2048, 8192, 32, 65536
        kv = [0, 0, 8, 0, 0, 8, 0, 0, 8, 0, 8, 0, 8, 0, 8, 0]
    else:
        n_embd, n_ff, n_head, n_vocab = 256, 512, 4, 259
        kv = [0, 0, 2, 0]
    n_layer = len(kv)
    n_ctx = 128000 if real else 32768
    b = _Builder("lfm2", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=kv)
    b.key("shortconv.l_cache", 3)
    b.key("rope.freq_base", 1000000.0)
    b.weight("token_embd.weight", n_embd, n_vocab, qtype=Q6_K if real else None)
    b.weight("token_embd_norm.weight", n_embd)  # llama.cpp's LLM_TENSOR_OUTPUT_NORM_LFM2 name
    head = n_embd // n_head
    for i, n_kv in enumerate(kv):
        p = f"blk.{i}."
        b.weight(p + "ffn_norm.weight", n_embd)
        _ffn(b, i, n_embd, n_ff)
        b.weight(p + "attn_norm.weight", n_embd)
        if n_kv:
            b.weight(p + "attn_q_norm.weight", head)
            b.weight(p + "attn_k_norm.weight", head)
            _attn_qkvo(b, i, n_embd, n_embd, n_kv * head)
        else:
            b.weight(p + "shortconv.conv.weight", 3, n_embd, qtype=F32)
            b.weight(p + "shortconv.in_proj.weight", n_embd, 3 * n_embd)
            b.weight(p + "shortconv.out_proj.weight", n_embd, n_embd)
    return b.spec(f"lfm2-{size}", n_vocab, n_ctx)


def _mamba2_keys(b: _Builder, d_conv: int, d_inner: int, d_state: int, n_ssm_head: int, n_group: int) -> None:
    b.key("ssm.conv_kernel", d_conv)
    b.key("ssm.inner_size", d_inner)
    b.key("ssm.state_size", d_state)
    b.key("ssm.time_step_rank", n_ssm_head)
    b.key("ssm.group_count", n_group)


def _mamba2_layer(b: _Builder, p: str, n_embd: int, d_conv: int, d_inner: int, d_state: int, n_ssm_head: int,
                  n_group: int) -> None:
    """The tensors of one Mamba2 layer, as llama.cpp's hybrid architectures name them."""
    conv_dim = d_inner + 2 * n_group * d_state
    b.weight(p + "ssm_in.weight", n_embd, 2 * d_inner + 2 * n_group * d_state + n_ssm_head)
    b.weight(p + "ssm_conv1d.weight", d_conv, conv_dim, qtype=F32)
    b.weight(p + "ssm_conv1d.bias", conv_dim)
    b.weight(p + "ssm_dt.bias", n_ssm_head)
    b.weight(p + "ssm_a", 1, n_ssm_head, qtype=F32)  # no ".weight" suffix in llama.cpp
    b.weight(p + "ssm_d", 1, n_ssm_head, qtype=F32)
    b.weight(p + "ssm_norm.weight", d_inner // n_group, n_group, qtype=F32)
    b.weight(p + "ssm_out.weight", d_inner, n_embd)


def granitehybrid(size: str) -> ModelSpec:
    """Granite-4.0-H-Micro-like hybrid: Mamba2 SSM layers (conv + SSM state) and a few GQA layers."""
    real = size == "real"
    if real:
        n_embd, n_ff, n_head, n_vocab, d_state, n_group, n_ssm_head = 2048, 8192, 32, 100352, 128, 1, 64
        kv = [0] * 40
        for i in (9, 19, 29, 39):
            kv[i] = 8
    else:
        n_embd, n_ff, n_head, n_vocab, d_state, n_group, n_ssm_head = 256, 512, 4, 259, 16, 1, 8
        kv = [0, 0, 2, 0]
    d_inner, d_conv = 2 * n_embd, 4  # llama.cpp supports only an expansion factor of 2
    n_layer = len(kv)
    n_ctx = 131072 if real else 32768
    head = n_embd // n_head
    b = _Builder("granitehybrid", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=kv)
    _mamba2_keys(b, d_conv, d_inner, d_state, n_ssm_head, n_group)
    b.key("rope.freq_base", 10000.0)
    _embed_and_output(b, n_embd, n_vocab, tied=True)
    for i, n_kv in enumerate(kv):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        if n_kv:
            _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        else:
            _mamba2_layer(b, p, n_embd, d_conv, d_inner, d_state, n_ssm_head, n_group)
        b.weight(p + "ffn_norm.weight", n_embd)
        _ffn(b, i, n_embd, n_ff)
    return b.spec(f"granitehybrid-{size}", n_vocab, n_ctx)


def qwen35(size: str) -> ModelSpec:
    """Qwen3.5-like hybrid: gated-delta-net linear attention on 3 of 4 layers, gated GQA on the
    rest, plus one MTP (NextN) block that llama.cpp skips unless speculative MTP decoding is asked
    for (Ollama does not). Real-scale shapes are approximate (a ~9B dense variant)."""
    real = size == "real"
    if real:
        n_embd, n_trunk, n_ff, n_head, n_kv, head, n_vocab = 4096, 32, 12288, 16, 4, 256, 248320
        d_state, n_group, dt_rank, d_conv = 128, 16, 32, 4
    else:
        n_embd, n_trunk, n_ff, n_head, n_kv, head, n_vocab = 256, 4, 512, 4, 2, 64, 259
        d_state, n_group, dt_rank, d_conv = 32, 2, 4, 4
    n_nextn = 1
    n_layer = n_trunk + n_nextn
    key_dim, value_dim = d_state * n_group, d_state * dt_rank
    n_ctx = 262144 if real else 32768
    b = _Builder("qwen35", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_kv, head_dim=head)
    b.key("rope.dimension_count", 64)
    b.key("rope.dimension_sections", [11, 11, 10, 0])
    b.key("rope.freq_base", 10000000.0)
    b.key("ssm.conv_kernel", d_conv)
    b.key("ssm.inner_size", value_dim)
    b.key("ssm.state_size", d_state)
    b.key("ssm.time_step_rank", dt_rank)
    b.key("ssm.group_count", n_group)
    b.key("full_attention_interval", 4)
    b.key("nextn_predict_layers", n_nextn)
    _embed_and_output(b, n_embd, n_vocab, tied=False)

    def attention(i: int) -> None:
        p = f"blk.{i}."
        b.weight(p + "attn_q.weight", n_embd, 2 * n_head * head)  # query and its gate
        b.weight(p + "attn_k.weight", n_embd, n_kv * head)
        b.weight(p + "attn_v.weight", n_embd, n_kv * head, qtype=b.hi())
        b.weight(p + "attn_output.weight", n_head * head, n_embd)
        b.weight(p + "attn_q_norm.weight", head)
        b.weight(p + "attn_k_norm.weight", head)

    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        b.weight(p + "post_attention_norm.weight", n_embd)
        if i >= n_trunk:  # the MTP block: a full-attention decoder block plus NextN projections
            attention(i)
            b.weight(p + "nextn.eh_proj.weight", 2 * n_embd, n_embd)
            b.weight(p + "nextn.enorm.weight", n_embd)
            b.weight(p + "nextn.hnorm.weight", n_embd)
            b.weight(p + "nextn.shared_head_norm.weight", n_embd)
        elif (i + 1) % 4 == 0:
            attention(i)
        else:
            b.weight(p + "attn_qkv.weight", n_embd, 2 * key_dim + value_dim)
            b.weight(p + "attn_gate.weight", n_embd, value_dim)
            b.weight(p + "ssm_conv1d.weight", d_conv, 2 * key_dim + value_dim, qtype=F32)
            b.weight(p + "ssm_dt.bias", dt_rank)
            b.weight(p + "ssm_a", dt_rank)
            b.weight(p + "ssm_beta.weight", n_embd, dt_rank, qtype=F32 if not real else None)
            b.weight(p + "ssm_alpha.weight", n_embd, dt_rank, qtype=F32 if not real else None)
            b.weight(p + "ssm_norm.weight", d_state)
            b.weight(p + "ssm_out.weight", value_dim, n_embd)
        _ffn(b, i, n_embd, n_ff)
    return b.spec(f"qwen35-{size}", n_vocab, n_ctx, skipped_prefixes=tuple(f"blk.{i}." for i in range(n_trunk, n_layer)))


def nemotron_h(size: str) -> ModelSpec:
    """Nemotron-H-8B-like hybrid with three layer kinds, told apart by per-layer arrays:
    Mamba2 (head_count_kv 0, feed_forward_length 0), attention (kv > 0, ff 0), MLP (kv 0, ff > 0)."""
    real = size == "real"
    if real:
        n_embd, n_layer, n_ff, n_head, n_kv, n_vocab = 4096, 52, 21504, 32, 8, 131072
        d_inner, d_state, n_group, n_ssm_head = 8192, 128, 8, 128
        kinds = ["A" if i % 13 == 7 else ("F" if i % 2 else "M") for i in range(n_layer)]
    else:
        n_embd, n_layer, n_ff, n_head, n_kv, n_vocab = 256, 5, 512, 4, 2, 259
        d_inner, d_state, n_group, n_ssm_head = 512, 16, 2, 8
        kinds = ["M", "A", "F", "M", "F"]
    d_conv = 4
    n_ctx = 131072 if real else 32768
    head = n_embd // n_head
    kv = [n_kv if k == "A" else 0 for k in kinds]
    ff = [n_ff if k == "F" else 0 for k in kinds]
    b = _Builder("nemotron_h", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=ff, n_head=n_head, n_head_kv=kv, rms=False)
    b.key("attention.layer_norm_rms_epsilon", 1e-5)
    _mamba2_keys(b, d_conv, d_inner, d_state, n_ssm_head, n_group)
    b.key("rope.freq_base", 10000.0)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    for i, kind in enumerate(kinds):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        if kind == "M":
            _mamba2_layer(b, p, n_embd, d_conv, d_inner, d_state, n_ssm_head, n_group)
        elif kind == "A":
            _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        else:
            b.weight(p + "ffn_up.weight", n_embd, n_ff)
            b.weight(p + "ffn_down.weight", n_ff, n_embd, qtype=b.hi())
    return b.spec(f"nemotron_h-{size}", n_vocab, n_ctx)


def maincoder(size: str) -> ModelSpec:
    """An architecture llama.cpp loads but the estimator does not model (qwen3-8B-like shapes).

    maincoder is a plain GQA transformer with q/k norms; it stands for "a new architecture":
    the estimator must say it does not know it and err high.
    """
    real = size == "real"
    n_embd, n_layer, n_ff, n_head, n_kv, head, n_vocab = (
        (4096, 36, 12288, 32, 8, 128, 151936) if real else (256, 2, 512, 4, 2, 64, 259))
    n_ctx = 32768
    b = _Builder("maincoder", sparse=real)
    _common(b, n_ctx=n_ctx, n_embd=n_embd, n_layer=n_layer, n_ff=n_ff, n_head=n_head, n_head_kv=n_kv, head_dim=head)
    _embed_and_output(b, n_embd, n_vocab, tied=False)
    for i in range(n_layer):
        p = f"blk.{i}."
        b.weight(p + "attn_norm.weight", n_embd)
        _attn_qkvo(b, i, n_embd, n_head * head, n_kv * head)
        b.weight(p + "attn_k_norm.weight", head)
        b.weight(p + "attn_q_norm.weight", head)
        b.weight(p + "ffn_norm.weight", n_embd)
        _ffn(b, i, n_embd, n_ff)
    return b.spec(f"maincoder-{size}", n_vocab, n_ctx)


ARCHITECTURES: dict[str, Callable[[str], ModelSpec]] = {
    "llama": llama,
    "llama-tied": lambda size: llama(size, tied=True),
    "qwen2": qwen2,
    "qwen3moe": qwen3moe,
    "mixtral": mixtral,
    "gemma3": gemma3,
    "gemma3-swa-array": lambda size: gemma3(size, swa_array=True),
    "gpt-oss": gpt_oss,
    "phi3": phi3,
    "deepseek2": deepseek2,
    "bert": bert,
    "nomic-bert": nomic_bert,
    "lfm2": lfm2,
    "granitehybrid": granitehybrid,
    "qwen35": qwen35,
    "nemotron_h": nemotron_h,
}
#: Loaded by llama.cpp, not modelled by the estimator: it must flag them and err high.
UNKNOWN_ARCHITECTURES: dict[str, Callable[[str], ModelSpec]] = {"maincoder": maincoder}
SIZES = ("small", "real")


def build(arch: str, size: str) -> tuple[ModelSpec, Path]:
    spec = (ARCHITECTURES.get(arch) or UNKNOWN_ARCHITECTURES[arch])(size)
    return spec, model_path(spec)
