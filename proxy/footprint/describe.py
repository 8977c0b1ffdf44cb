"""Turn GGUF metadata + a tensor table into a ModelDescription, the way llama.cpp reads them.

Shared by both readers, so ``/api/show`` JSON and a GGUF file give the same description. Per-layer
arrays may be missing (``/api/show`` without ``verbose`` turns them into ``null``); then per-layer
values are recovered from the tensor shapes, which ``/api/show`` always returns.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from proxy.footprint import architectures as archs
from proxy.footprint.model import ModelDescription, Tensor

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


def describe(
    metadata: Mapping[str, Any],
    tensors: Iterable[Tensor],
    *,
    parameters: Mapping[str, Any] | None = None,
    name: str | None = None,
    projector_bytes: int = 0,
) -> ModelDescription:
    prefix = str(metadata.get("general.architecture") or "unknown")
    arch = archs.ALIASES.get(prefix, prefix)  # the llama.cpp name the rules are keyed by
    tensors = tuple(tensors)

    def key(suffix: str, default: Any = None) -> Any:
        return metadata.get(f"{prefix}.{suffix}", default)

    n_layer = _int(key("block_count"))
    n_embd = _int(key("embedding_length"))
    by_layer: dict[int, dict[str, Tensor]] = {}
    for t in tensors:
        m = _LAYER_TENSOR.match(t.name)
        if m:
            by_layer.setdefault(int(m.group(1)), {})[m.group(2)] = t
    if n_layer == 0 and by_layer:
        n_layer = max(by_layer) + 1

    vocab = _int(key("vocab_size"))
    if not vocab:
        tokens = metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, (list, tuple, range)):
            vocab = len(tokens)
    if not vocab:
        embd = next((t for t in tensors if t.name in ("token_embd.weight", "output.weight")), None)
        vocab = embd.shape[1] if embd is not None and len(embd.shape) > 1 else 0

    notes: list[str] = []
    heads = _per_layer(key("attention.head_count"), n_layer)
    heads_kv = _per_layer(key("attention.head_count_kv"), n_layer)
    head0 = heads[0] if heads else 0
    key_length = _int(key("attention.key_length"), n_embd // head0 if head0 else 0)
    value_length = _int(key("attention.value_length"), n_embd // head0 if head0 else 0)

    if heads is None:
        heads = tuple(_heads_from_tensors(by_layer.get(il, {}), key_length, "q") for il in range(n_layer))
        if any(heads):
            head0 = next(h for h in heads if h)
            key_length = _int(key("attention.key_length"), n_embd // head0)
            value_length = _int(key("attention.value_length"), n_embd // head0)
    if heads_kv is None:
        recovered = tuple(_kv_heads_from_tensors(by_layer.get(il, {}), key_length, heads[il]) for il in range(n_layer))
        heads_kv = recovered if any(recovered) else heads

    # sliding window
    window = _int(key("attention.sliding_window"))
    swa: tuple[bool, ...] = (False,) * n_layer
    pattern_value = key("attention.sliding_window_pattern")
    rule = archs.SWA_RULES.get(arch)
    pattern_key = f"{prefix}.attention.sliding_window_pattern"
    if isinstance(pattern_value, (list, tuple)) and pattern_value:
        swa = tuple(bool(v) for v in pattern_value)[:n_layer]
        swa = swa + (False,) * (n_layer - len(swa))
    elif pattern_key in metadata and pattern_value is None:
        # a per-layer array that /api/show without verbose turns into null: which layers slide is
        # unknowable, so every layer is sized with the full context (never below llama.cpp)
        notes.append(
            "sliding_window_pattern is null in this /api/show answer: every layer sized with the "
            "full context; ask /api/show with verbose for the exact sliding-window sizes"
        )
    elif rule is not None and not (rule.needs_window_key and window <= 0):
        if arch == "llama4" and key("attention.sliding_window") is not None and window == 0:
            pass  # llama4 without chunked attention
        else:
            pattern = _int(pattern_value, rule.pattern)
            swa = archs.swa_layers(arch, n_layer, pattern, rule.dense_first)
            window = window or rule.default_window
            if arch == "llama4":
                window = 8192
    elif _int(pattern_value) and window > 0 and arch not in ("phi3",):
        swa = archs.swa_layers(arch, n_layer, _int(pattern_value))
        notes.append(f"{arch}: sliding-window layers from the GGUF's sliding_window_pattern")
    if not any(swa):
        window = 0

    # which layers have attention KV and which a recurrent state
    nextn = _int(key("nextn_predict_layers"))
    trunk = n_layer - nextn
    if arch in archs.NO_MEMORY:
        attention = (False,) * n_layer
        recurrent = (False,) * n_layer
    elif arch in archs.RECURRENT:
        attention = (False,) * n_layer
        recurrent = tuple(il < trunk for il in range(n_layer))
    elif arch in archs.HYBRID:
        attention, recurrent = _hybrid_layers(arch, by_layer, n_layer, trunk, heads_kv, key)
    else:
        attention = tuple(il < trunk for il in range(n_layer))
        recurrent = (False,) * n_layer

    if arch == "lfm2" or arch == "lfm2moe":
        if window > 0 and key("attention.sliding_window") is not None:
            swa = tuple(attention)
        else:
            swa = (False,) * n_layer
            window = 0

    # recurrent state widths (llama_hparams::n_embd_r / n_embd_s)
    d_conv = _int(key("ssm.conv_kernel"))
    d_inner = _int(key("ssm.inner_size"))
    d_state = _int(key("ssm.state_size"))
    n_group = _int(key("ssm.group_count"))
    wkv = _int(key("wkv.head_size"))
    l_cache = _int(key("shortconv.l_cache"))
    if wkv:
        r = _int(key("token_shift_count"), 2) * n_embd
        s = n_embd * wkv
    elif l_cache:
        r = n_embd * (l_cache - 1)
        s = d_state * d_inner
    else:
        r = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
        s = d_state * d_inner

    # MLA: K-only latent cache when the GGUF carries the MLA head sizes (llama_hparams::is_mla)
    mla = bool(_int(key("attention.key_length_mla")) and _int(key("attention.value_length_mla")))

    pooling = key("pooling_type")
    causal = bool(key("attention.causal", True))
    is_embedding = arch in archs.NO_MEMORY or (pooling is not None and _int(pooling) not in (0, -1))

    known = archs.is_known(arch)
    if not known:
        notes.append(
            f"architecture {arch!r} is not modelled: KV assumes full context on every layer (+10 %) "
            "and compute the no-flash-attention peak (+25 %), so the estimate errs high"
        )
        attention = (True,) * n_layer
        swa = (False,) * n_layer
        window = 0

    params = MappingProxyType(dict(parameters or {}))
    ff = _per_layer(key("feed_forward_length"), n_layer)
    return ModelDescription(
        architecture=prefix,
        block_count=n_layer,
        context_length=_int(key("context_length")),
        embedding_length=n_embd,
        vocab_size=vocab,
        head_count=tuple(heads),
        head_count_kv=tuple(heads_kv),
        key_length=key_length,
        value_length=value_length,
        key_length_swa=_int(key("attention.key_length_swa")),
        value_length_swa=_int(key("attention.value_length_swa")),
        tensors=tensors,
        feed_forward_length=max(ff) if ff else _ff_from_tensors(by_layer),
        sliding_window=window,
        swa_layers=swa,
        attention_layers=attention,
        recurrent_layers=recurrent,
        recurrent_r=r if any(recurrent) else 0,
        recurrent_s=s if any(recurrent) else 0,
        expert_count=_int(key("expert_count")),
        expert_used_count=_int(key("expert_used_count")),
        mla=mla,
        kv_lora_rank=_int(key("attention.kv_lora_rank")),
        key_length_mla=_int(key("attention.key_length_mla")),
        value_length_mla=_int(key("attention.value_length_mla")),
        ssm_conv_kernel=d_conv,
        ssm_inner_size=d_inner,
        ssm_state_size=d_state,
        ssm_group_count=n_group,
        ssm_time_step_rank=_int(key("ssm.time_step_rank")),
        nextn_layers=nextn,
        is_embedding=is_embedding,
        causal=causal,
        known_architecture=known,
        projector_bytes=projector_bytes,
        parameters=params,
        name=name,
        file_type=_file_type(metadata.get("general.file_type")),
        notes=tuple(notes),
    )


def _per_layer_is_array(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _out_dim(t: Tensor | None) -> int:
    return t.shape[1] if t is not None and len(t.shape) > 1 else 0


def _heads_from_tensors(layer: Mapping[str, Tensor], head_dim: int, which: str) -> int:
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
    best = 0
    for layer in by_layer.values():
        up = layer.get("ffn_up.weight")
        if up is not None:
            best = max(best, _out_dim(up))
    return best


def _hybrid_layers(arch, by_layer, n_layer, trunk, heads_kv, key):
    """Attention vs recurrent layers of a hybrid, as llama.cpp's layer filters decide them."""
    attention = []
    recurrent = []
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
