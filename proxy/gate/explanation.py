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
from proxy.gate.decision import Admit, GpuBudget, Holder, Need, PullRefuse, Refuse


def _gib(n: int) -> str:
    return format_bytes(n)


def refusal_text(r: Refuse) -> str:
    """One paragraph: what the model needs, what is free, who holds the rest, the cost of spilling, what to do."""
    if r.reason in _POLICY_TEXTS:
        return _POLICY_TEXTS[r.reason](r)
    if r.need is None:
        return _no_gpu_text(r)
    return "".join([
        _needs_text(r, r.need),
        " but " + "; ".join(_gpu_text(b) for b in r.budgets) + ".",
        _held_text(r),
        _spill_text(r),
        " " + _advice(r),
        f" Note: {r.problem}." if r.problem else "",
    ])


def waiting_text(r: Refuse) -> str:
    """Why a queued load waits: what it needs, what is free, who holds the rest (no advice: it waits)."""
    if r.need is None:
        return refusal_text(r)
    return "".join([_needs_text(r, r.need).replace("vramgate refused to load", "waiting for room to load", 1),
                    " but " + "; ".join(_gpu_text(b) for b in r.budgets) + ".", _held_text(r)])


def _needs_text(r: Refuse, need: Need) -> str:
    """What the load needs at its context, part by part, so the numbers can be checked."""
    slots = f"{need.parallel} slot{'s' if need.parallel != 1 else ''}"
    correction = f" and {_gib(need.correction)} its last load took beyond the estimate" if need.correction else ""
    return (
        f"vramgate refused to load {r.model}: it needs {_gib(need.total)} of GPU memory at num_ctx {need.num_ctx}"
        f" ({r.ctx_source}; weights {_gib(need.weights)}, KV cache {_gib(need.kv)} for {need.num_ctx} tokens"
        f" x {slots}, compute {_gib(need.compute)}, other {_gib(need.other + need.cuda_context)} incl. the CUDA"
        f" context{correction})"
    )


def _held_text(r: Refuse) -> str:
    """Who holds the memory, including what programs other than Ollama hold without being listed."""
    held = _holders_text(r.holders)
    listed = {h.gpu for h in r.holders if h.kind == "process"}
    unlisted = [f"{_gib(b.others)} on GPU {b.index}" for b in r.budgets if b.others >= 256 * 1024**2 and b.index not in listed]
    if unlisted:
        held = "; ".join(filter(None, [held, "programs other than Ollama " + ", ".join(unlisted)]))
    return f" Held by: {held}." if held else ""


def _spill_text(r: Refuse) -> str:
    """Why not let Ollama spill: how many layers would go to system RAM and how slow that would be."""
    if not (r.spill_layers and r.tps_gpu and r.tps_spill):
        return ""
    return (
        f" Left to Ollama it would spill {r.spill_layers} layer{'s' if r.spill_layers != 1 else ''} to system RAM and"
        f" run at about {r.tps_spill:.1f} tokens/s instead of {r.tps_gpu:.0f} tokens/s fully on the GPU."
    )


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
        if h.kind == "ollama" and h.user:
            items.append(f"{h.user} ({h.name}, {_gib(h.bytes)}, {_state(h)}, GPU {h.gpu})")
        elif h.kind == "ollama":
            items.append(f"Ollama model {h.name} {_gib(h.bytes)}{' (busy)' if h.busy else ' (idle)'} on GPU {h.gpu}")
        elif h.kind == "pending":
            whose = f"{h.user}'s " if h.user else ""
            items.append(f"{whose}{h.name} being loaded {_gib(h.bytes)} on GPU {h.gpu}")
        else:
            who = f"user {h.user}, " if h.user else ""
            size = _gib(h.bytes) if h.bytes else "unknown size"
            items.append(f"process {h.pid} ({who}{h.name}) {size} on GPU {h.gpu}")
    if len(hs) > 8:
        items.append(f"{len(hs) - 8} more")
    return "; ".join(items)


def _state(h: Holder) -> str:
    """``generating`` or ``idle 3 min``: whether waiting for it can help, and how soon."""
    if h.busy:
        return "generating"
    if h.idle_s is None:
        return "idle"
    if h.idle_s < 90:
        return f"idle {int(h.idle_s)} s"
    return f"idle {int(h.idle_s // 60)} min"


def _quota_too_small_text(r: Refuse) -> str:
    """403: even alone, at the smallest context vramgate gives, the model exceeds the user's max_vram."""
    q, need = r.quota, r.need
    assert q is not None and need is not None
    return (f"vramgate refused to load {r.model} for {q.user}: it needs {_gib(need.total)} of GPU memory even at"
            f" num_ctx {need.num_ctx}, more than {q.user} may hold at once ({_gib(q.limit)}, policy rule {q.rule})."
            " Use a smaller model or quantization, or ask the admin to raise it.")


def _over_quota_text(r: Refuse) -> str:
    """429: it fits the GPUs, but not next to the user's own busy models within their max_vram."""
    q, need = r.quota, r.need
    assert q is not None and need is not None
    own = [h for h in r.holders if h.kind in ("ollama", "pending") and h.user == q.user]
    held = "; ".join(f"{h.name} {_gib(h.bytes)} ({_state(h) if h.kind == 'ollama' else 'loading'})" for h in own)
    return (f"vramgate refused to load {r.model} for {q.user}: it needs {_gib(need.total)} at num_ctx {need.num_ctx},"
            f" and {q.user}'s models already hold {_gib(q.held)} of the {_gib(q.limit)} they may hold at once"
            f" (policy rule {q.rule}){': ' + held if held else ''}. Retry when those requests are done"
            f" (in {r.retry_after} s), unload one with keep_alive 0, or ask for a smaller num_ctx.")


def _ctx_cap_text(r: Refuse) -> str:
    """403: a /v1 load over the user's max_num_ctx, which /v1 cannot carry a smaller context for."""
    assert r.ctx_cap is not None
    cap, rule = r.ctx_cap
    return (f"vramgate refused to load {r.model}: it would load at num_ctx {r.requested_ctx} ({r.ctx_source}) but"
            f" you may use at most {cap} (policy rule {rule}), and the OpenAI API carries no options to ask for less."
            f" Use /api/chat or /api/generate (vramgate lowers num_ctx there), or a model whose Modelfile sets"
            f" PARAMETER num_ctx {cap} or less.")


_POLICY_TEXTS = {"quota_too_small": _quota_too_small_text, "over_quota": _over_quota_text,
                 "num_ctx_cap": _ctx_cap_text}


def _advice(r: Refuse) -> str:
    """What the client can do, by why it was refused."""
    if r.reason == "held_by_others":
        return _advice_held_by_others(r)
    if r.status == 507:
        return _advice_too_big(r)
    return _advice_wait(r)


def _advice_too_big(r: Refuse) -> str:
    """507 too_big: even empty GPUs are too small; on /v1 a smaller context may still fit."""
    if r.fits_ctx_when_free and r.route == "openai":
        return (
            f"It cannot fit these GPUs at num_ctx {r.requested_ctx} even when they are empty; it would at num_ctx"
            f" {r.fits_ctx_when_free} or less: ask for a smaller context {_how_to_ask(r)}."
        )
    floor = min(r.requested_ctx or r.min_num_ctx, r.min_num_ctx)
    return (
        f"It cannot fit these GPUs even when they are empty, not even at num_ctx {floor}:"
        " use a smaller quantization or a model with fewer parameters, or add GPU memory."
    )


def _advice_held_by_others(r: Refuse) -> str:
    """507 held_by_others: static GPUs whose other programs never let go, so waiting cannot help."""
    others = ", ".join(f"{_gib(b.others)} on GPU {b.index}" for b in r.budgets if b.others)
    options = []
    if _fits_now(r):
        options.append(f"ask for num_ctx {r.fits_ctx_now} or less {_how_to_ask(r)}, which fits now{_below_min(r)}")
    options.append("use a smaller quantization or a model with fewer parameters")
    options.append("free their memory and raise free in VRAMGATE_STATIC_GPUS to match")
    return (
        f"It does not fit next to what programs other than Ollama hold ({others}), and with VRAMGATE_GPU=static"
        f" that memory is taken for good, so waiting will not help: {'; or '.join(options)}."
    )


def _advice_wait(r: Refuse) -> str:
    """503: it fits once holders that can let go have; a smaller context may fit now."""
    text = f"It would fit once other holders let go of memory: retry in {r.retry_after} s"
    if _fits_now(r):
        text += f", or ask for num_ctx {r.fits_ctx_now} or less {_how_to_ask(r)}, which fits now{_below_min(r)}"
    return text + "."


def _fits_now(r: Refuse) -> bool:
    """A smaller context that fits now is worth suggesting (below 256 tokens it is not)."""
    return bool(r.fits_ctx_now and r.fits_ctx_now >= 256)


def _below_min(r: Refuse) -> str:
    """Why vramgate did not shrink a native load to that context itself."""
    if r.route != "openai" and r.fits_ctx_now is not None and r.fits_ctx_now < r.min_num_ctx:
        return f" (below min_num_ctx {r.min_num_ctx}, so vramgate did not shrink it itself)"
    return ""


def _how_to_ask(r: Refuse) -> str:
    """Where a context is set: /v1 carries no options, so the Modelfile, the server or the native API."""
    if r.route == "openai":
        return (
            "with PARAMETER num_ctx in the model's Modelfile, OLLAMA_CONTEXT_LENGTH on the server, or options.num_ctx"
            " through /api/chat or /api/generate"
        )
    return "with options.num_ctx"


def refusal_numbers(r: Refuse) -> dict[str, Any]:
    out: dict[str, Any] = {
        "decision": "refused",
        "status": r.status,
        "reason": r.reason,
        "model": r.model,
        "retry_after_s": r.retry_after,
        "problem": r.problem,
    }
    if r.quota is not None:
        out["quota"] = {"user": r.quota.user, "rule": r.quota.rule, "limit_bytes": r.quota.limit,
                        "held_bytes": r.quota.held}
    if r.ctx_cap is not None:
        out.update(max_num_ctx=r.ctx_cap[0], rule=r.ctx_cap[1], num_ctx=r.requested_ctx)
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
                                   "pid": h.pid, "user": h.user, "idle_s": h.idle_s}.items() if v is not None}
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
        code = {403: "policy_refused", 429: "over_quota"}.get(r.status) or (
            "model_too_large" if r.status == 507 and r.reason != "held_by_others" else "insufficient_gpu_memory")
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
    if a.ctx_steps:
        headers["X-Vramgate-Num-Ctx"] = num_ctx_path(a)
    return headers


def num_ctx_path(a: Admit) -> str:
    """``1000000 -> 131072 (trained context) -> 128000 (GPU memory)``: the ask, then each lowering and why."""
    return " -> ".join([str(a.requested_ctx)] + [f"{n} ({why})" for n, why in a.ctx_steps])


def num_ctx_steps(a: Admit) -> list[dict[str, Any]]:
    """The same lowerings for the log: ``[{"num_ctx": 131072, "reason": "trained context"}, ...]``."""
    return [{"num_ctx": n, "reason": why} for n, why in a.ctx_steps]


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
