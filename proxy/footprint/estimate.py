"""The footprint oracle: bytes llama.cpp allocates for a model at full GPU offload.

Pure functions of (ModelDescription, RunConfig). The rules follow the llama.cpp vendored in
llama-cpp-python 0.3.36 (src/llama-context.cpp, llama-kv-cache*.cpp, llama-memory-recurrent.cpp,
llama-model.cpp placement); the compute buffer is a model of the graph-reserve worst case
(see ``compute.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from proxy.footprint.architectures import MTP_SKIPPED
from proxy.footprint.compute import compute_bytes as _compute_bytes
from proxy.footprint.ggml_types import row_bytes
from proxy.footprint.model import ModelDescription
from proxy.footprint.run_config import RunConfig
from proxy.footprint.vision import VisionCompute, vision_compute

PAD = 256  # llama.cpp pads n_ctx (and each sequence's share) to 256 cells
VISION_MIN_CTX = 2048  # Ollama raises num_ctx of models with a vision projector to this


@dataclass(frozen=True)
class Footprint:
    weights_bytes: int  # every weight of the model file (projector excluded)
    gpu_weights_bytes: int  # on the GPU at full offload: blk.* + output layer (+ tied copy)
    host_weights_bytes: int  # stays in host memory: token_embd and other input-layer tensors
    projector_bytes: int  # vision/audio projector, offloaded at full offload
    kv_bytes: int  # attention KV cache + recurrent state
    compute_bytes: int  # GPU compute buffer (graph reserve worst case)
    output_bytes: int  # logits/embeddings output buffer (host, pinned)
    gpu_total_bytes: int  # gpu weights + projector + kv + compute + vision compute
    layers: int  # block_count + 1, num_gpu for full offload
    num_ctx: int  # per sequence, after capping to the trained context and padding
    cells: int  # KV cells of a full-attention layer, all sequences together
    layer_bytes: tuple[int, ...]  # weights + KV of each repeating layer
    output_layer_bytes: int
    known_architecture: bool
    notes: tuple[str, ...] = ()
    attention_kv_bytes: int = 0
    recurrent_bytes: int = 0
    swa_cells: int = 0  # KV cells of a sliding-window layer (0 when there are none)
    vision_compute_bytes: int = 0  # the vision encoder's compute buffer after the largest image (GPU)
    vision_reserve_bytes: int = 0  # what that buffer is at load (llama-server's warmup image)
    vision_image_size: int = 0  # side in px of the largest image it is sized for


@dataclass(frozen=True)
class _Weights:
    total: int
    host: int
    output_layer: int
    per_layer: tuple[int, ...]
    projector: int
    tied: bool
    expert: int  # routed-expert tensor bytes (all layers)


@lru_cache(maxsize=512)
def _weights(model: ModelDescription) -> _Weights:
    """Per-model weight sums; cached because a model is planned many times at different contexts."""
    per_layer = [0] * model.block_count
    total = host = output = projector = expert = 0
    tied = True
    token_embd = 0
    skipped_from = model.block_count - model.nextn_layers if model.architecture in MTP_SKIPPED else None
    for t in model.tensors:
        size = t.nbytes
        if t.is_projector:
            projector += size
            continue
        if skipped_from is not None and t.block is not None and t.block >= skipped_from:
            continue  # an MTP block llama.cpp does not load
        total += size
        if t.name == "output.weight":
            tied = False
        blk = t.block
        if blk is not None and blk < model.block_count:
            per_layer[blk] += size
            if t.is_expert:
                expert += size
        elif t.is_input:
            host += size
            if t.name == "token_embd.weight":
                token_embd = size
        else:
            output += size
    if tied:
        output += token_embd  # TENSOR_DUPLICATED: a copy of token_embd is the output matrix
    return _Weights(
        total=total,
        host=host,
        output_layer=output,
        per_layer=tuple(per_layer),
        projector=projector + model.projector_bytes,
        tied=tied,
        expert=expert,
    )


def pad(n: int, to: int = PAD) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class Cells:
    num_ctx: int  # per sequence after capping and padding (n_ctx_seq)
    streams: int  # KV streams (= parallel: Ollama's caches are not unified)
    swa: int  # cells per stream of a sliding-window layer
    n_ubatch: int
    n_batch: int
    n_tokens: int  # tokens of the worst-case reserve graph


def cells_for(model: ModelDescription, run: RunConfig) -> Cells:
    """llama_context's n_ctx / n_ctx_seq / n_batch / n_ubatch arithmetic for Ollama's launch."""
    num_ctx = run.num_ctx
    if _weights(model).projector:
        num_ctx = max(num_ctx, VISION_MIN_CTX)  # Ollama gives vision models at least 2048
    if model.context_length > 0:
        num_ctx = min(num_ctx, model.context_length)  # Ollama caps to the trained context
    n_ctx_req = num_ctx * run.parallel
    n_batch = min(n_ctx_req, run.num_batch) if model.causal else run.num_batch
    n_ubatch = min(n_batch, run.num_ubatch)
    rules = run.rules  # what changed between llama.cpp builds (proxy.footprint.rules)
    streams = run.parallel if rules.kv_streams == "per_sequence" else 1
    if rules.cell_padding == "context_and_sequence":
        n_ctx_seq = pad(pad(n_ctx_req) // streams)
    else:  # each stream's share, padded as llama_kv_cache::get_padding did: 256 with FA, 32 without
        n_ctx_seq = pad(-(-n_ctx_req // streams), PAD if run.flash_attention else 32)
    n_ctx = n_ctx_seq * streams
    swa = n_ctx_seq
    if model.sliding_window > 0 and not run.swa_full and rules.swa_cells == "window":
        swa = pad(min(n_ctx_seq, model.sliding_window + n_ubatch))
    return Cells(
        num_ctx=n_ctx_seq,
        streams=streams,
        swa=swa,
        n_ubatch=n_ubatch,
        n_batch=n_batch,
        n_tokens=min(n_ctx, n_ubatch),
    )


def kv_per_layer(model: ModelDescription, run: RunConfig, cells: Cells) -> tuple[tuple[int, int], ...]:
    """(attention KV bytes, recurrent state bytes) of each repeating layer."""
    v_trans = not run.flash_attention
    widths_v = [_head_v(model, il) * model.head_count_kv[il] for il in range(model.block_count)]
    v_max = max(widths_v, default=0)
    rs = (model.recurrent_r + model.recurrent_s) * 4 * max(1, run.parallel)
    out = []
    for il in range(model.block_count):
        kv = 0
        if model.attention_layers and model.attention_layers[il]:
            n_cells = cells.swa if _is_swa(model, il) else cells.num_ctx
            n_cells *= cells.streams
            k_width = _head_k(model, il) * model.head_count_kv[il]
            kv = row_bytes(run.kv_type_k, k_width) * n_cells
            if not model.mla or run.rules.mla_v_cache:  # V-less MLA cache since llama.cpp PR #19067
                v_width = v_max if v_trans else widths_v[il]
                kv += row_bytes(run.kv_type_v, v_width) * n_cells
        r = rs if model.recurrent_layers and model.recurrent_layers[il] else 0
        out.append((kv, r))
    return tuple(out)


def _is_swa(model: ModelDescription, il: int) -> bool:
    return bool(model.swa_layers) and model.swa_layers[il] and model.sliding_window > 0


def _head_k(model: ModelDescription, il: int) -> int:
    if model.key_length_swa and _is_swa(model, il):
        return model.key_length_swa
    return model.key_length


def _head_v(model: ModelDescription, il: int) -> int:
    if model.value_length_swa and _is_swa(model, il):
        return model.value_length_swa
    return model.value_length


def output_buffer_bytes(model: ModelDescription, run: RunConfig) -> int:
    """llama_context::output_reserve(n_seq_max): logits (+ embeddings) rows for every sequence."""
    rows = max(1, run.parallel)
    width = model.vocab_size + (model.embedding_length if model.is_embedding else 0)
    return width * rows * 4


@lru_cache(maxsize=8192)
def estimate(model: ModelDescription, run: RunConfig) -> Footprint:
    """Bytes of every buffer llama.cpp allocates for this model and run at full offload."""
    if run.rules.largest_of:  # an upstream older than any known rule: the largest of them all
        return largest_estimate(model, run)
    w = _weights(model)
    cells = cells_for(model, run)
    kv_layers = kv_per_layer(model, run, cells)
    if not model.known_architecture:  # caches we do not know (indexers, compressed KV): +10 %
        kv_layers = tuple((kv + kv // 10, r + r // 10) for kv, r in kv_layers)
    attention_kv = sum(kv for kv, _ in kv_layers)
    recurrent = sum(r for _, r in kv_layers)
    compute = _compute_bytes(model, run, cells)
    vision = _vision(model, run)
    vision_bytes = vision.peak_bytes if vision else 0
    gpu_weights = sum(w.per_layer) + w.output_layer
    kv_total = attention_kv + recurrent
    notes = list(model.notes)
    if model.context_length and run.num_ctx > model.context_length:
        notes.append(
            f"num_ctx {run.num_ctx} capped to the trained context {model.context_length}"
        )
    if w.projector and run.num_ctx < VISION_MIN_CTX:
        notes.append(f"num_ctx raised to {VISION_MIN_CTX}: Ollama's minimum for vision models")
    elif cells.num_ctx != min(run.num_ctx, model.context_length or run.num_ctx):
        notes.append(f"context padded to {cells.num_ctx} cells per sequence (multiple of {PAD})")
    if model.vision is not None and not model.vision.known:
        notes.append(f"vision projector type {model.vision.projector_type!r} is not modelled: its "
                     "compute buffer is a generic ViT bound plus a quarter, so it errs high")
    return Footprint(
        weights_bytes=w.total,
        gpu_weights_bytes=gpu_weights,
        host_weights_bytes=w.host,
        projector_bytes=w.projector,
        kv_bytes=kv_total,
        compute_bytes=compute,
        output_bytes=output_buffer_bytes(model, run),
        gpu_total_bytes=gpu_weights + w.projector + kv_total + compute + vision_bytes,
        layers=model.layers,
        num_ctx=cells.num_ctx,
        cells=cells.num_ctx * cells.streams,
        layer_bytes=tuple(lw + kv + r for lw, (kv, r) in zip(w.per_layer, kv_layers)),
        output_layer_bytes=w.output_layer,
        known_architecture=model.known_architecture,
        notes=tuple(notes),
        attention_kv_bytes=attention_kv,
        recurrent_bytes=recurrent,
        swa_cells=cells.swa * cells.streams if model.sliding_window > 0 else 0,
        vision_compute_bytes=vision_bytes,
        vision_reserve_bytes=vision.warmup_bytes if vision else 0,
        vision_image_size=vision.largest_image if vision else 0,
    )


def _vision(model: ModelDescription, run: RunConfig) -> VisionCompute | None:
    """The vision encoder's compute buffer (clip, on the GPU with the projector at full offload)."""
    if model.vision is None:
        return None
    return vision_compute(model.vision, run.flash_attention)


def largest_estimate(model: ModelDescription, run: RunConfig) -> Footprint:
    """The footprint under the rule set among ``run.rules.largest_of`` that needs the most GPU memory."""
    from dataclasses import replace

    tried = [(estimate(model, replace(run, rules=r)), r) for r in run.rules.largest_of]
    fp, chosen = max(tried, key=lambda pair: pair[0].gpu_total_bytes)
    note = f"{run.rules.name}: sized with {chosen.name}"
    return replace(fp, notes=(*fp.notes, note))


def min_budget(model: ModelDescription, run: RunConfig) -> int:
    """The smallest GPU budget that holds this model fully at ``run.num_ctx``."""
    return estimate(model, run).gpu_total_bytes


def max_num_ctx(model: ModelDescription, run: RunConfig, budget_bytes: int) -> int | None:
    """Largest num_ctx (multiple of 256, <= run.num_ctx and the trained context) within budget.

    The footprint is monotone in num_ctx, so a binary search over multiples of 256 is exact.
    None when even 256 does not fit.
    """
    hi = run.num_ctx
    if model.context_length > 0:
        hi = min(hi, model.context_length)
    hi //= PAD
    if hi < 1:
        hi = 1

    def fits(k: int) -> bool:
        return _total_at(model, run, k * PAD) <= budget_bytes

    if not fits(1):
        return None
    lo = 1
    if fits(hi):
        return hi * PAD
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo * PAD


def _total_at(model: ModelDescription, run: RunConfig, num_ctx: int) -> int:
    from dataclasses import replace

    return estimate(model, replace(run, num_ctx=num_ctx)).gpu_total_bytes
