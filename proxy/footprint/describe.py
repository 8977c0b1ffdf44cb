"""Turn GGUF metadata + a tensor table into a ModelDescription, the way llama.cpp reads them.

Shared by both readers, so ``/api/show`` JSON and a GGUF file give the same description. Per-layer
arrays may be missing (``/api/show`` without ``verbose`` turns them into ``null``); then per-layer
values are recovered from the tensor shapes, which ``/api/show`` always returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from proxy.footprint import architectures as archs
from proxy.footprint.model import ModelDescription, Tensor
from proxy.footprint.vision import VisionEncoder, encoder_from_projector, encoder_inline

_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.(.+)$")
_ATTN_MARKERS = ("attn_q.", "attn_k.", "attn_qkv.", "attn_kv_a_mqa.", "attn_q_a.")
_RECURRENT_MARKERS = ("ssm_", "shortconv.", "time_mix_")


def _int(value: Any, default: int = 0) -> int:
    if value is None or isinstance(value, (list, tuple)):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _per_layer(value: Any, n: int) -> tuple[int, ...] | None:
    """A per-layer hyper-parameter stored as a scalar or an array; None when it was null."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return None
        vals = [int(v) for v in value]
        return tuple((vals + [vals[-1]] * n)[:n])
    return (int(value),) * n


@dataclass(frozen=True)
class _Keys:
    """The GGUF metadata keys of one architecture, read as llama.cpp's ``LLM_KV`` names them."""

    metadata: Mapping[str, Any]
    prefix: str

    def __call__(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.prefix}.{suffix}", default)

    def int(self, suffix: str, default: int = 0) -> int:
        return _int(self(suffix), default)

    def has(self, suffix: str) -> bool:
        return f"{self.prefix}.{suffix}" in self.metadata


def describe(
    metadata: Mapping[str, Any],
    tensors: Iterable[Tensor],
    *,
    parameters: Mapping[str, Any] | None = None,
    name: str | None = None,
    projector_bytes: int = 0,
    projector_metadata: Mapping[str, Any] | None = None,
) -> ModelDescription:
    """The model as llama.cpp sizes it: each step below reads one group of hyper-parameters.

    ``projector_metadata``: the key/values of a separate projector GGUF (``/api/show``'s
    ``projector_info``), whose ``clip.vision.*`` keys describe the vision encoder; without it an
    encoder inline in the model (``v.*`` tensors, ``<arch>.vision.*`` keys) is read.
    """
    prefix = str(metadata.get("general.architecture") or "unknown")
    arch = archs.ALIASES.get(prefix, prefix)  # the llama.cpp name the rules are keyed by
    k = _Keys(metadata, prefix)
    tensors = tuple(tensors)
    by_layer = _tensors_by_layer(tensors)
    n_layer = _block_count(k, by_layer)
    n_embd = k.int("embedding_length")
    notes: list[str] = []
    heads, heads_kv, key_length, value_length = _attention_heads(k, by_layer, n_layer, n_embd)
    swa, window = _sliding_window(k, arch, n_layer, notes)
    attention, recurrent = _memory_layers(k, arch, by_layer, n_layer, heads_kv)
    swa, window = _lfm2_window(k, arch, attention, swa, window)
    known = archs.is_known(arch)
    if not known:  # sized on the safe side: full context on every layer
        notes.append(
            f"architecture {arch!r} is not modelled: KV assumes full context on every layer (+10 %) "
            "and compute the no-flash-attention peak (+25 %), so the estimate errs high"
        )
        attention, swa, window = (True,) * n_layer, (False,) * n_layer, 0
    r, s = _recurrent_state(k, n_embd) if any(recurrent) else (0, 0)
    return ModelDescription(
        architecture=prefix,
        block_count=n_layer,
        context_length=k.int("context_length"),
        embedding_length=n_embd,
        vocab_size=_vocab_size(k, tensors),
        head_count=tuple(heads),
        head_count_kv=tuple(heads_kv),
        key_length=key_length,
        value_length=value_length,
        key_length_swa=k.int("attention.key_length_swa"),
        value_length_swa=k.int("attention.value_length_swa"),
        tensors=tensors,
        feed_forward_length=_feed_forward_length(k, by_layer, n_layer),
        sliding_window=window,
        swa_layers=swa,
        attention_layers=attention,
        recurrent_layers=recurrent,
        recurrent_r=r,
        recurrent_s=s,
        expert_count=k.int("expert_count"),
        expert_used_count=k.int("expert_used_count"),
        # MLA: K-only latent cache when the GGUF carries the MLA head sizes (llama_hparams::is_mla)
        mla=bool(k.int("attention.key_length_mla") and k.int("attention.value_length_mla")),
        kv_lora_rank=k.int("attention.kv_lora_rank"),
        key_length_mla=k.int("attention.key_length_mla"),
        value_length_mla=k.int("attention.value_length_mla"),
        ssm_conv_kernel=k.int("ssm.conv_kernel"),
        ssm_inner_size=k.int("ssm.inner_size"),
        ssm_state_size=k.int("ssm.state_size"),
        ssm_group_count=k.int("ssm.group_count"),
        ssm_time_step_rank=k.int("ssm.time_step_rank"),
        nextn_layers=k.int("nextn_predict_layers"),
        is_embedding=_is_embedding(k, arch),
        causal=bool(k("attention.causal", True)),
        known_architecture=known,
        projector_bytes=projector_bytes,
        vision=_vision_encoder(metadata, prefix, tensors, projector_metadata),
        parameters=MappingProxyType(dict(parameters or {})),
        name=name,
        file_type=_file_type(metadata.get("general.file_type")),
        notes=tuple(notes),
    )


# --- the steps of describe, in the order it takes them -------------------------------------------


def _tensors_by_layer(tensors: tuple[Tensor, ...]) -> dict[int, dict[str, Tensor]]:
    """``blk.N.<name>`` tensors grouped by layer: the shapes stand in for null per-layer arrays."""
    by_layer: dict[int, dict[str, Tensor]] = {}
    for t in tensors:
        m = _LAYER_TENSOR.match(t.name)
        if m:
            by_layer.setdefault(int(m.group(1)), {})[m.group(2)] = t
    return by_layer


def _block_count(k: _Keys, by_layer: Mapping[int, Any]) -> int:
    """Repeating layers: the key, else one more than the highest ``blk.N`` tensor."""
    n_layer = k.int("block_count")
    if n_layer == 0 and by_layer:
        return max(by_layer) + 1
    return n_layer


def _vocab_size(k: _Keys, tensors: tuple[Tensor, ...]) -> int:
    """Vocabulary size: the key, else the tokenizer's token list, else the embedding's shape."""
    vocab = k.int("vocab_size")
    if vocab:
        return vocab
    tokens = k.metadata.get("tokenizer.ggml.tokens")
    if isinstance(tokens, (list, tuple, range)) and len(tokens):
        return len(tokens)
    embd = next((t for t in tensors if t.name in ("token_embd.weight", "output.weight")), None)
    return _out_dim(embd)


def _attention_heads(
    k: _Keys, by_layer: Mapping[int, Mapping[str, Tensor]], n_layer: int, n_embd: int
) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """Query and KV heads per layer and the per-head sizes; null arrays recovered from tensor shapes."""
    heads = _per_layer(k("attention.head_count"), n_layer)
    if heads is None:
        q_dim = k.int("attention.key_length")
        heads = tuple(_heads_from_tensors(by_layer.get(il, {}), q_dim) for il in range(n_layer))
        head0 = next((h for h in heads if h), 0)
    else:
        head0 = heads[0] if heads else 0
    fallback = n_embd // head0 if head0 else 0  # llama.cpp: n_embd / n_head without the keys
    key_length = k.int("attention.key_length", fallback)
    value_length = k.int("attention.value_length", fallback)
    heads_kv = _per_layer(k("attention.head_count_kv"), n_layer)
    if heads_kv is None:
        recovered = tuple(_kv_heads_from_tensors(by_layer.get(il, {}), key_length, heads[il]) for il in range(n_layer))
        heads_kv = recovered if any(recovered) else heads
    return heads, heads_kv, key_length, value_length


def _sliding_window(k: _Keys, arch: str, n_layer: int, notes: list[str]) -> tuple[tuple[bool, ...], int]:
    """Which layers attend over a sliding window, and its size (0 when no layer does)."""
    swa, window = _swa_layers(k, arch, n_layer, notes)
    return swa, window if any(swa) else 0


def _swa_layers(k: _Keys, arch: str, n_layer: int, notes: list[str]) -> tuple[tuple[bool, ...], int]:
    """The GGUF's per-layer array if there is one, else the architecture's rule, else its pattern key."""
    window = k.int("attention.sliding_window")
    pattern = k("attention.sliding_window_pattern")
    rule = archs.SWA_RULES.get(arch)
    if isinstance(pattern, (list, tuple)) and pattern:
        return _swa_from_array(pattern, n_layer), window
    if k.has("attention.sliding_window_pattern") and pattern is None:
        # a per-layer array that /api/show without verbose turns into null: which layers slide is
        # unknowable, so every layer is sized with the full context (never below llama.cpp)
        notes.append(
            "sliding_window_pattern is null in this /api/show answer: every layer sized with the "
            "full context; ask /api/show with verbose for the exact sliding-window sizes"
        )
        return (False,) * n_layer, window
    if rule is not None and not (rule.needs_window_key and window <= 0):
        return _swa_from_rule(k, arch, rule, n_layer, window, pattern)
    if _int(pattern) and window > 0 and arch != "phi3":
        notes.append(f"{arch}: sliding-window layers from the GGUF's sliding_window_pattern")
        return archs.swa_layers(arch, n_layer, _int(pattern)), window
    return (False,) * n_layer, window


def _swa_from_array(pattern: list | tuple, n_layer: int) -> tuple[bool, ...]:
    """The GGUF's per-layer flags, cut or padded (no sliding window) to the layer count."""
    swa = tuple(bool(v) for v in pattern)[:n_layer]
    return swa + (False,) * (n_layer - len(swa))


def _swa_from_rule(
    k: _Keys, arch: str, rule: archs.SwaRule, n_layer: int, window: int, pattern: Any
) -> tuple[tuple[bool, ...], int]:
    """The architecture's own layer pattern and default window (llama4: chunked attention)."""
    if arch == "llama4" and k("attention.sliding_window") is not None and window == 0:
        return (False,) * n_layer, window  # llama4 without chunked attention
    swa = archs.swa_layers(arch, n_layer, _int(pattern, rule.pattern), rule.dense_first)
    return swa, 8192 if arch == "llama4" else window or rule.default_window


def _memory_layers(
    k: _Keys, arch: str, by_layer: Mapping[int, Mapping[str, Tensor]], n_layer: int, heads_kv: tuple[int, ...]
) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """Which layers get an attention KV cache and which a recurrent state (MTP/NextN layers neither)."""
    trunk = n_layer - k.int("nextn_predict_layers")
    in_trunk = tuple(il < trunk for il in range(n_layer))
    none = (False,) * n_layer
    if arch in archs.NO_MEMORY:
        return none, none
    if arch in archs.RECURRENT:
        return none, in_trunk
    if arch in archs.HYBRID:
        return _hybrid_layers(arch, by_layer, n_layer, trunk, heads_kv)
    return in_trunk, none


def _lfm2_window(
    k: _Keys, arch: str, attention: tuple[bool, ...], swa: tuple[bool, ...], window: int
) -> tuple[tuple[bool, ...], int]:
    """LFM2 slides on its attention layers, and only when the GGUF has a sliding_window key."""
    if arch not in ("lfm2", "lfm2moe"):
        return swa, window
    if window > 0 and k("attention.sliding_window") is not None:
        return tuple(attention), window
    return (False,) * len(attention), 0


def _recurrent_state(k: _Keys, n_embd: int) -> tuple[int, int]:
    """f32 values per sequence of the conv/token-shift state and of the SSM/wkv state (n_embd_r, n_embd_s)."""
    d_conv, d_inner = k.int("ssm.conv_kernel"), k.int("ssm.inner_size")
    d_state, n_group = k.int("ssm.state_size"), k.int("ssm.group_count")
    wkv, l_cache = k.int("wkv.head_size"), k.int("shortconv.l_cache")
    if wkv:  # RWKV
        return k.int("token_shift_count", 2) * n_embd, n_embd * wkv
    if l_cache:  # LFM2 short convolutions
        return n_embd * (l_cache - 1), d_state * d_inner
    return max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state), d_state * d_inner  # Mamba


def _feed_forward_length(k: _Keys, by_layer: Mapping[int, Mapping[str, Tensor]], n_layer: int) -> int:
    """The widest feed-forward layer: the key (scalar or per layer), else the ffn_up shapes."""
    ff = _per_layer(k("feed_forward_length"), n_layer)
    return max(ff) if ff else _ff_from_tensors(by_layer)


def _vision_encoder(
    metadata: Mapping[str, Any], prefix: str, tensors: tuple[Tensor, ...], projector: Mapping[str, Any] | None
) -> VisionEncoder | None:
    """The vision encoder of a separate projector, else one inline in the model file."""
    if projector:
        return encoder_from_projector(projector)
    if not any(t.name.startswith("v.") for t in tensors):
        return None
    up = next((t for t in tensors if t.name == "v.blk.0.ffn_up.weight"), None)
    return encoder_inline(metadata, prefix, _out_dim(up))


def _is_embedding(k: _Keys, arch: str) -> bool:
    """An embedding/reranker model: no KV cache at all, or a pooling type set."""
    pooling = k("pooling_type")
    return arch in archs.NO_MEMORY or (pooling is not None and _int(pooling) not in (0, -1))


# --- shapes of single tensors --------------------------------------------------------------------


def _out_dim(t: Tensor | None) -> int:
    """A tensor's second dimension (rows: output features), 0 when it has none."""
    return t.shape[1] if t is not None and len(t.shape) > 1 else 0


def _heads_from_tensors(layer: Mapping[str, Tensor], head_dim: int) -> int:
    """Query heads of one layer from its attn_q shape; 0 when unknown."""
    if not head_dim:
        return 0
    q = layer.get("attn_q.weight")
    if q is not None:
        return _out_dim(q) // head_dim
    return 0


def _kv_heads_from_tensors(layer: Mapping[str, Tensor], head_dim: int, n_head: int) -> int:
    """KV heads of one layer from its attn_k (or fused attn_qkv) shape; 0 = no attention."""
    if not head_dim:
        return 0
    k = layer.get("attn_k.weight")
    if k is not None:
        return _out_dim(k) // head_dim
    qkv = layer.get("attn_qkv.weight")
    if qkv is not None:
        return max((_out_dim(qkv) - n_head * head_dim) // (2 * head_dim), 0)
    if "attn_kv_a_mqa.weight" in layer:
        return 1
    return 0


def _ff_from_tensors(by_layer: Mapping[int, Mapping[str, Tensor]]) -> int:
    """The widest ffn_up among the layers (0 when there is none)."""
    best = 0
    for layer in by_layer.values():
        up = layer.get("ffn_up.weight")
        if up is not None:
            best = max(best, _out_dim(up))
    return best


def _hybrid_layers(
    arch: str, by_layer: Mapping[int, Mapping[str, Tensor]], n_layer: int, trunk: int, heads_kv: tuple[int, ...]
) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
    """Attention vs recurrent layers of a hybrid, as llama.cpp's layer filters decide them."""
    attention: list[bool] = []
    recurrent: list[bool] = []
    for il in range(n_layer):
        layer = by_layer.get(il, {})
        names = tuple(layer)
        has_attn = any(n.startswith(_ATTN_MARKERS) for n in names)
        has_recr = any(n.startswith(_RECURRENT_MARKERS) for n in names)
        if arch == "falcon-h1":  # every layer has both
            attention.append(True)
            recurrent.append(True)
            continue
        if not layer:  # no tensors known: fall back on the head counts
            has_attn = heads_kv[il] > 0
            has_recr = not has_attn
        in_trunk = il < trunk
        attention.append(in_trunk and has_attn and not has_recr)
        recurrent.append(in_trunk and has_recr)
    return tuple(attention), tuple(recurrent)


_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}


def _file_type(value: Any) -> str | None:
    if value is None or isinstance(value, (list, tuple)):
        return None
    try:
        return _FILE_TYPES.get(int(value))
    except (TypeError, ValueError):
        return str(value)
