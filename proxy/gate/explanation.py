"""Turning a decision into what people and programs read: one paragraph, and the same numbers.

A refused client sees ``{"error": "<paragraph>", "vramgate": {...}}`` (native API; the official
clients show ``error`` first) or the OpenAI error shape on ``/v1``. The paragraph says what the
model needs, what is free, who holds the rest, how slow it would be if allowed to spill, and what
would fit. Pure functions of the decision.
"""

from __future__ import annotations

import json
from typing import Any

from proxy.config.units import format_bandwidth, format_bytes
from proxy.gate.decision import Admit, GpuBudget, Holder, PullRefuse, Refuse


def _gib(n: int) -> str:
    return format_bytes(n)


def refusal_text(r: Refuse) -> str:
    if r.need is None:
        return _no_gpu_text(r)
    need = r.need
    parts = [
        f"vramgate refused to load {r.model}: it needs {_gib(need.total)} of GPU memory at num_ctx {need.num_ctx}"
        f" ({r.ctx_source}; weights {_gib(need.weights)}, KV cache {_gib(need.kv)} for {need.num_ctx} tokens"
        f" x {need.parallel} slot{'s' if need.parallel != 1 else ''}, compute {_gib(need.compute)},"
        f" other {_gib(need.other + need.cuda_context)} incl. the CUDA context"
        + (f" and {_gib(need.correction)} its last load took beyond the estimate" if need.correction else "")
        + ")"
    ]
    parts.append(" but " + "; ".join(_gpu_text(b) for b in r.budgets) + ".")
    held = _holders_text(r.holders)
    listed = {h.gpu for h in r.holders if h.kind == "process"}
    unlisted = [f"{_gib(b.others)} on GPU {b.index}" for b in r.budgets if b.others >= 256 * 1024**2 and b.index not in listed]
    if unlisted:
        held = "; ".join(filter(None, [held, "programs other than Ollama " + ", ".join(unlisted)]))
    if held:
        parts.append(f" Held by: {held}.")
    if r.spill_layers and r.tps_gpu and r.tps_spill:
        parts.append(
            f" Left to Ollama it would spill {r.spill_layers} layer{'s' if r.spill_layers != 1 else ''} to system RAM and run at about"
            f" {r.tps_spill:.1f} tokens/s instead of {r.tps_gpu:.0f} tokens/s fully on the GPU."
        )
    parts.append(" " + _advice(r))
    if r.problem:
        parts.append(f" Note: {r.problem}.")
    return "".join(parts)


def _no_gpu_text(r: Refuse) -> str:
    problem = r.problem or "no GPU is known"
    if r.reason == "gpu_unreadable":
        return (
            f"vramgate refused to load {r.model}: it cannot read GPU memory ({problem}), so it cannot tell whether"
            f" the model would run entirely on the GPU. Retry in {r.retry_after} s, fix NVML access, or set"
            " VRAMGATE_ON_NO_GPU=allow to let loads through unchecked."
        )
    return (
        f"vramgate refused to load {r.model}: there is no usable GPU to load it on ({problem}); nothing can run"
        " from GPU memory. Describe the GPUs with VRAMGATE_GPU=static and VRAMGATE_STATIC_GPUS, or set"
        " VRAMGATE_ON_NO_GPU=allow to let loads through unchecked."
    )


def _gpu_text(b: GpuBudget) -> str:
    extra = ""
    if b.reclaimable:
        extra += f" plus {_gib(b.reclaimable)} from idle models Ollama would unload"
    if b.pending:
        extra += f", minus {_gib(b.pending)} for loads already admitted"
    return (
        f"GPU {b.index} ({b.name}, {_gib(b.total)}) has {_gib(b.free)} free{extra},"
        f" {_gib(max(0, b.budget))} usable after the reserve"
    )


def _holders_text(hs: tuple[Holder, ...]) -> str:
    items = []
    for h in hs[:8]:
        if h.kind == "ollama":
            items.append(f"Ollama model {h.name} {_gib(h.bytes)}{' (busy)' if h.busy else ' (idle)'} on GPU {h.gpu}")
        elif h.kind == "pending":
            items.append(f"{h.name} being loaded {_gib(h.bytes)} on GPU {h.gpu}")
        else:
            who = f"user {h.user}, " if h.user else ""
            size = _gib(h.bytes) if h.bytes else "unknown size"
            items.append(f"process {h.pid} ({who}{h.name}) {size} on GPU {h.gpu}")
    if len(hs) > 8:
        items.append(f"{len(hs) - 8} more")
    return "; ".join(items)


def _advice(r: Refuse) -> str:
    openai = r.route == "openai"
    how = (
        "with PARAMETER num_ctx in the model's Modelfile, OLLAMA_CONTEXT_LENGTH on the server, or options.num_ctx"
        " through /api/chat or /api/generate"
        if openai
        else "with options.num_ctx"
    )
    if r.status == 507:
        if r.fits_ctx_when_free and openai:
            return (
                f"It cannot fit these GPUs at num_ctx {r.requested_ctx} even when they are empty; it would at num_ctx"
                f" {r.fits_ctx_when_free} or less: ask for a smaller context {how}."
            )
        floor = min(r.requested_ctx or r.min_num_ctx, r.min_num_ctx)
        return (
            f"It cannot fit these GPUs even when they are empty, not even at num_ctx {floor}:"
            " use a smaller quantization or a model with fewer parameters, or add GPU memory."
        )
    text = f"It would fit once other holders let go of memory: retry in {r.retry_after} s"
    if r.fits_ctx_now and r.fits_ctx_now >= 256:
        text += f", or ask for num_ctx {r.fits_ctx_now} or less {how}, which fits now"
        if not openai and r.fits_ctx_now < r.min_num_ctx:
            text += f" (below min_num_ctx {r.min_num_ctx}, so vramgate did not shrink it itself)"
    return text + "."


def refusal_numbers(r: Refuse) -> dict[str, Any]:
    out: dict[str, Any] = {
        "decision": "refused",
        "status": r.status,
        "reason": r.reason,
        "model": r.model,
        "retry_after_s": r.retry_after,
        "problem": r.problem,
    }
    if r.need is not None:
        n = r.need
        out.update(
            num_ctx=n.num_ctx,
            ctx_source=r.ctx_source,
            parallel=n.parallel,
            num_batch=n.num_batch,
            need={
                "total_bytes": n.total,
                "weights_bytes": n.weights,
                "kv_bytes": n.kv,
                "compute_bytes": n.compute,
                "other_bytes": n.other,
                "cuda_context_bytes": n.cuda_context,
                "learned_correction_bytes": n.correction,
            },
            gpus=[_budget_json(b) for b in r.budgets],
            holders=[
                {k: v for k, v in {"kind": h.kind, "name": h.name, "gpu": h.gpu, "bytes": h.bytes, "busy": h.busy,
                                   "pid": h.pid, "user": h.user}.items() if v is not None}
                for h in r.holders
            ],
            fits_num_ctx_now=r.fits_ctx_now,
            fits_num_ctx_when_free=r.fits_ctx_when_free,
            min_num_ctx=r.min_num_ctx,
            tokens_per_s_gpu=r.tps_gpu,
            tokens_per_s_spilled=r.tps_spill,
            spilled_layers=r.spill_layers,
        )
    return out


def _budget_json(b: GpuBudget) -> dict[str, Any]:
    return {
        "index": b.index,
        "name": b.name,
        "total_bytes": b.total,
        "free_bytes": b.free,
        "reclaimable_bytes": b.reclaimable,
        "pending_bytes": b.pending,
        "budget_bytes": b.budget,
        "others_bytes": b.others,
        "bandwidth": format_bandwidth(b.bandwidth) if b.bandwidth else None,
    }


def refusal_body(r: Refuse) -> bytes:
    """The body a refused client receives, in the shape its route speaks."""
    text = refusal_text(r)
    numbers = refusal_numbers(r)
    if r.route == "openai":
        code = "model_too_large" if r.status == 507 else "insufficient_gpu_memory"
        body: dict[str, Any] = {
            "error": {"message": text, "type": "api_error", "param": None, "code": code},
            "vramgate": numbers,
        }
    else:
        body = {"error": text, "vramgate": numbers}
    return json.dumps(body).encode()


def refusal_headers(r: Refuse) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "X-Vramgate-Decision": f"refused {r.status} {r.reason}",
    }
    if r.retry_after is not None:
        headers["Retry-After"] = str(r.retry_after)
    return headers


def admit_headers(a: Admit) -> dict[str, str]:
    headers = {"X-Vramgate-Decision": decision_header(a)}
    if a.rewritten:
        headers["X-Vramgate-Num-Ctx"] = f"{a.requested_ctx} -> {a.num_ctx}"
    return headers


def decision_header(a: Admit) -> str:
    if a.unchanged:
        return a.reason
    return f"{a.reason} num_ctx={a.options.get('num_ctx')} num_gpu={a.options.get('num_gpu')}"


def pull_refusal_text(r: PullRefuse) -> str:
    gpus = ", ".join(f"{name} {_gib(total)}" for name, total in r.gpus)
    proj = f" plus a {_gib(r.projector)} vision projector" if r.projector else ""
    return (
        f"vramgate refused to pull {r.model}: its weights are {_gib(r.weights)}{proj}, more than these GPUs can"
        f" ever hold ({gpus}; {_gib(r.usable)} usable after the reserve and CUDA context), so it could only run"
        " partly from system RAM. Pull a smaller quantization or a model with fewer parameters."
    )


def pull_refusal_body(r: PullRefuse) -> bytes:
    numbers = {
        "decision": "refused",
        "status": 507,
        "reason": "too_big",
        "model": r.model,
        "weights_bytes": r.weights,
        "projector_bytes": r.projector,
        "usable_bytes": r.usable,
        "gpus": [{"name": n, "total_bytes": t} for n, t in r.gpus],
    }
    return json.dumps({"error": pull_refusal_text(r), "vramgate": numbers}).encode()
