"""The compute buffer: what llama.cpp's graph reserve needs for the worst-case batch.

llama_context::sched_reserve builds the prompt-processing graph for ``n_tokens = min(n_ctx,
n_ubatch)`` tokens with every KV cell visible, and ggml-alloc packs its intermediate tensors into
one buffer, freeing each tensor after its last use. The buffer is therefore the peak of the live
tensors, which sits in one of three phases of the graph:

* attention of a layer: the KQ mask (an input that lives until the last layer) plus Q/K/V and,
  without flash attention, the ``n_kv x n_tokens x n_head`` f32 score matrix;
* the feed-forward block: the mask plus the ``n_ff``-wide activations (for MoE, per used expert);
* the output: logits ``n_outputs x n_vocab`` f32 (the mask is freed by then).

The per-phase coefficients are calibrated against llama.cpp's CPU backend (the oracle in
tests/oracle). On CUDA the same graph is reserved; differences are noted in the README of the
package (fused kernels, cuBLAS f16 intermediates).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from proxy.footprint.architectures import NO_MEMORY

if TYPE_CHECKING:  # pragma: no cover
    from proxy.footprint.estimate import Cells
    from proxy.footprint.model import ModelDescription, Tensor
    from proxy.footprint.run_config import RunConfig

F32 = 4
F16 = 2
MiB = 1024 * 1024
UNKNOWN_MARGIN = 1.25  # unknown architectures: the no-flash-attention peak plus a quarter


def logits_rows(model: ModelDescription, run: RunConfig, cells: Cells) -> int:
    """Rows of logits in the reserve graph (llama-server's output limits unless overridden).

    Before llama.cpp b9460 (``rules.output_rows == "batch"``) the reserve graph had an output for
    every token of the micro-batch."""
    if run.logits_rows is not None:
        limit = run.logits_rows
    elif model.is_embedding or run.rules.output_rows == "batch":
        limit = cells.n_batch
    else:
        limit = max(1, min(cells.n_batch, run.parallel))
    return max(1, min(cells.n_tokens, limit))


def compute_bytes(model: ModelDescription, run: RunConfig, cells: Cells) -> int:
    t = cells.n_tokens
    n_embd = model.embedding_length
    fa = run.flash_attention and model.known_architecture
    no_cache = model.architecture in NO_MEMORY  # encoders attend within the batch, no KV cache
    has_attention = model.head_count_max > 0 and (any(model.attention_layers) or no_cache)

    # KQ masks: one per cache (full and, for iSWA models, the window cache); n_kv x n_tokens.
    mask_el = F16 if fa else F32
    mask = 0
    if has_attention and not no_cache:
        mask = cells.num_ctx * t * mask_el
        if model.sliding_window > 0 and any(model.swa_layers):
            mask += cells.swa * t * mask_el
    elif has_attention:
        mask = t * t * mask_el  # the batch against itself

    n_head = model.head_count_max
    head_k = max(model.key_length, model.key_length_swa)
    head_v = max(model.value_length, model.value_length_swa)
    n_kv_heads = max(model.head_count_kv, default=0)
    q_dim = n_head * head_k
    kv_dim = n_kv_heads * (head_k + head_v)

    # attention phase (coefficients: bytes per token, fitted on llama/qwen3 shapes)
    scores = 0  # KQ scores without flash attention (soft_max runs in place)
    if fa:
        attn = t * (12 * n_embd + 8 * q_dim + kv_dim // 2)
    elif model.mla:
        # absorbed MLA: Q is n_head x (kv_lora + rope); V is the latent K cache, transposed per stream
        attn = t * 12 * q_dim + cells.streams * cells.num_ctx * model.value_length * F16
        scores = cells.num_ctx * t * n_head * F32
    else:
        attn = t * (4 * n_embd + 16 * q_dim + 4 * kv_dim)
        if _layer_tensor(model, "post_ffw_norm.weight"):  # gemma2/3: the post-attention norm output
            attn += t * F32 * n_embd
        if has_attention:
            scores = (t if no_cache else cells.num_ctx) * t * n_head * F32
    # the per-token attention tensors are freed before the FFN, which reuses their blocks (the big
    # score block goes to the FFN's first outputs)
    attn_live = attn
    attn += scores
    attn += mask

    # feed-forward phase: gate, up, activation and down outputs of the widest layer
    ff = model.feed_forward_length
    kind = _ffn_kind(model)
    if kind == "gated":  # separate gate and up projections
        ffn_dense = t * (12 * ff + 16 * n_embd)
    elif kind == "fused":  # one up projection of 2 x n_ff (phi3)
        ffn_dense = t * (12 * ff + 12 * n_embd)
    else:  # up, activation, down (BERT, GPT-2 style)
        ffn_dense = t * (4 * ff + 12 * n_embd)
    ffn_moe = 0
    if model.expert_count and model.expert_used_count:
        n_ff_exp = _expert_ff(model)
        used = model.expert_used_count
        # mul_mat_id outputs: gate, up and activation [used x n_ff_exp], down and its weighted
        # copy [used x n_embd], router logits and probabilities [n_expert]
        ffn_moe = t * F32 * (2 * used * n_embd + 3 * used * n_ff_exp + 2 * model.expert_count)
        shared = _layer_tensor(model, "ffn_up_shexp.weight")
        if shared is not None and len(shared.shape) > 1:
            ffn_moe += t * F32 * 2 * shared.shape[1]  # shared experts' gate and up outputs
        if attn_live >= t * F32 * used * n_ff_exp:
            ffn_moe -= t * F32 * used * n_ff_exp  # the activation fits into a freed attention block
    ffn = max(ffn_dense, ffn_moe) + mask

    # recurrent (SSM) layers: the per-token state tensors of the scan
    ssm = 0
    if any(model.recurrent_layers):
        d_inner = model.ssm_inner_size
        if d_inner:
            # in_proj output (z, xBC, dt), the convolved xBC, y and the gated output; fitted on
            # Mamba2 shapes (the scan's per-sequence state copy is the next term)
            groups = model.ssm_state_size * max(model.ssm_group_count, 1)
            ssm = t * (26 * d_inner + 12 * groups + 8 * model.ssm_time_step_rank)
        else:  # short convolutions (LFM2) and RWKV time mixing: a few n_embd-wide tensors
            ssm = t * F32 * 6 * n_embd
        copies = 2 if model.ssm_group_count > 1 else 1  # measured: grouped scans hold two copies
        ssm += max(model.recurrent_r + model.recurrent_s, 0) * F32 * run.parallel * copies
        ssm += mask

    # output phase
    rows = logits_rows(model, run, cells)
    vocab = 0 if model.is_embedding else model.vocab_size  # pooled embeddings, no logits
    out = rows * vocab * F32 + min(rows * 2, 2 * t) * n_embd * F32

    peak = int(max(attn, ffn, ssm, out)) + 16 * 1024
    if not model.known_architecture:  # a graph we have not measured: leave room for it
        peak = int(peak * UNKNOWN_MARGIN) + 16 * MiB
    return peak


@lru_cache(maxsize=4096)
def _layer_tensor(model: ModelDescription, suffix: str) -> Tensor | None:
    """The first repeating-layer tensor whose name ends with ``suffix`` (its shape tells widths)."""
    return next((t for t in model.tensors if t.name.startswith("blk.") and t.name.endswith(suffix)), None)


@lru_cache(maxsize=512)
def _ffn_kind(model: ModelDescription) -> str:
    """gated (ffn_gate + ffn_up), fused (ffn_up of width 2 x n_ff) or plain (ffn_up only)."""
    names = {t.name.split(".", 2)[-1]: t for t in model.tensors if t.name.startswith("blk.")}
    if "ffn_gate.weight" in names or "ffn_up.weight" not in names:
        return "gated"
    up = names["ffn_up.weight"]
    if len(up.shape) > 1 and model.feed_forward_length and up.shape[1] == 2 * model.feed_forward_length:
        return "fused"
    return "plain"


@lru_cache(maxsize=512)
def _expert_ff(model: ModelDescription) -> int:
    """Per-expert FFN width from the expert tensors' shapes (ffn_up_exps: [n_embd, n_ff_exp, E])."""
    for t in model.tensors:
        if t.name.endswith("ffn_up_exps.weight") or t.name.endswith("ffn_gate_exps.weight"):
            return t.shape[1] if len(t.shape) > 1 else 0
        if t.name.endswith("ffn_gate_up_exps.weight"):
            return (t.shape[1] // 2) if len(t.shape) > 1 else 0
    return model.feed_forward_length
