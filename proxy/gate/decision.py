"""The fit decision: admit a load as asked, shrink its context, or refuse it. Pure.

Inputs are plain data (the model, a function giving its footprint at a context, the GPU snapshot,
what Ollama holds, loads admitted but not yet resident, the policy, the request's options) and the
result is an ``Admit`` (options to forward) or a ``Refuse`` (status and the numbers behind it).
Nothing here does I/O, so every rule is tested with tables of cases.

Memory per GPU that a new load may use (its *budget*) is what is free now, plus what this model's
own runner holds (a reload replaces it), plus idle Ollama models (Ollama evicts them; policy
``evict_idle``), minus loads admitted but not yet resident, minus the reserve. The load needs its
llama.cpp buffers plus a CUDA context per GPU it runs on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from proxy.gate.residency import Resident, model_key
from proxy.gpu.snapshot import Gpu, GpuSnapshot
from proxy.ollama.versions import ServerSettings, default_num_batch, parallel_for


class FootprintLike(Protocol):
    """What the decision reads of a footprint (``proxy.footprint.Footprint`` is one)."""

    @property
    def gpu_weights_bytes(self) -> int: ...
    @property
    def projector_bytes(self) -> int: ...
    @property
    def kv_bytes(self) -> int: ...
    @property
    def compute_bytes(self) -> int: ...
    @property
    def output_bytes(self) -> int: ...
    @property
    def gpu_total_bytes(self) -> int: ...
    @property
    def layers(self) -> int: ...
    @property
    def layer_bytes(self) -> Any: ...  # per repeating layer (tuple) or one size for all
    @property
    def output_layer_bytes(self) -> int: ...


# footprint at (num_ctx, parallel, num_batch); the gate binds the model and server settings
Sizer = Callable[[int, int, int], FootprintLike]
# tokens/s at a footprint with n layers on the host: (footprint, gpu bandwidth, host layers)
Speed = Callable[[FootprintLike, float, int], float | None]


@dataclass(frozen=True)
class Policy:
    reserve: int = 1024**3
    cuda_context: int = 500 * 1024**2
    min_num_ctx: int = 2048
    evict_idle: bool = True
    allow_partial_offload: bool = False
    on_no_gpu: Literal["refuse", "allow"] = "refuse"

    @classmethod
    def from_settings(cls, s: Any) -> Policy:
        return cls(s.reserve, s.cuda_context, s.min_num_ctx, s.evict_idle, s.allow_partial_offload, s.on_no_gpu)


@dataclass(frozen=True)
class Reservation:
    """A load admitted but not yet resident: its memory is spoken for."""

    model: str
    per_gpu: tuple[tuple[int, int], ...]  # (gpu index, bytes)
    evicts: frozenset[str] = frozenset()  # residents this load counted on Ollama evicting


@dataclass(frozen=True)
class LoadRequest:
    model: str
    route: Literal["native", "openai"]
    options: Mapping[str, Any] = field(default_factory=dict)  # the client's options, types checked


@dataclass(frozen=True)
class ModelFacts:
    """What the decision needs from the model description."""

    name: str
    layers: int  # block_count + 1
    trained_ctx: int  # 0 = unknown
    is_embedding: bool
    modelfile: Mapping[str, Any] = field(default_factory=dict)  # Modelfile PARAMETERs
    architecture: str = ""


@dataclass(frozen=True)
class Holder:
    """Someone holding GPU memory, for the explanation."""

    kind: Literal["ollama", "process", "pending"]
    name: str
    gpu: int
    bytes: int
    busy: bool = False
    pid: int | None = None
    user: str | None = None


@dataclass(frozen=True)
class GpuBudget:
    index: int
    name: str
    total: int
    free: int  # free now, after what Ollama holds (static GPUs: charged by vramgate)
    reclaimable: int  # this model's runner + idle models Ollama would evict
    pending: int  # admitted loads not yet resident
    budget: int  # free + reclaimable - pending - reserve
    bandwidth: float
    reclaim_from: tuple[tuple[str, int], ...] = ()  # (resident, bytes) in the order Ollama would evict
    others: int = 0  # held by programs other than Ollama (or unaccounted for)


@dataclass(frozen=True)
class Need:
    num_ctx: int
    parallel: int
    num_batch: int
    weights: int
    kv: int
    compute: int
    other: int  # projector, output buffer, learnt correction
    cuda_context: int  # per GPU used
    total: int  # all of the above on one GPU
    predicted_bytes: int  # what Ollama's /api/ps should report (no CUDA context)
    correction: int = 0  # included in ``other``: how much its last real load exceeded the estimate


@dataclass(frozen=True)
class Admit:
    options: dict[str, Any]  # the complete options to forward ({} with ``unchanged``)
    unchanged: bool  # forward the client's body as it is
    reason: str  # admitted | rewritten | sticky | resident | partial_allowed | no_gpu_allowed
    num_ctx: int | None = None
    requested_ctx: int | None = None
    need: Need | None = None
    per_gpu: tuple[tuple[int, int], ...] = ()
    evicts: frozenset[str] = frozenset()
    budgets: tuple[GpuBudget, ...] = ()
    note: str | None = None

    @property
    def rewritten(self) -> bool:
        return self.reason == "rewritten"


@dataclass(frozen=True)
class Refuse:
    status: int  # 503 (wait) or 507 (never on these GPUs)
    retry_after: int | None
    reason: str  # busy | no_room | too_big | no_gpu | gpu_unreadable
    model: str
    route: str
    requested_ctx: int | None = None
    ctx_source: str = ""
    need: Need | None = None
    budgets: tuple[GpuBudget, ...] = ()
    holders: tuple[Holder, ...] = ()
    fits_ctx_now: int | None = None  # largest context that fits now (may be < min_num_ctx)
    fits_ctx_when_free: int | None = None  # ... once other holders let go
    tps_gpu: float | None = None
    tps_spill: float | None = None
    spill_layers: int = 0
    problem: str | None = None  # the GPU reading problem, said plainly
    min_num_ctx: int = 0


Decision = Admit | Refuse


@dataclass(frozen=True)
class Inputs:
    request: LoadRequest
    model: ModelFacts
    sizer: Sizer
    server: ServerSettings
    gpus: GpuSnapshot
    residents: tuple[Resident, ...] = ()
    reservations: tuple[Reservation, ...] = ()
    policy: Policy = Policy()
    correction: int = 0  # bytes a real load of this model exceeded its prediction by
    speed: Speed | None = None


# --- the decision --------------------------------------------------------------------------


def decide(inp: Inputs) -> Decision:
    req, model, policy = inp.request, inp.model, inp.policy
    opts = req.options
    if not inp.gpus.gpus:
        if policy.on_no_gpu == "allow":
            return Admit({}, True, "no_gpu_allowed", note=inp.gpus.problem)
        unreadable = inp.gpus.transient  # a read that failed may work again; a missing GPU will not
        return Refuse(
            status=503 if unreadable else 507,
            retry_after=30 if unreadable else None,
            reason="gpu_unreadable" if unreadable else "no_gpu",
            model=req.model,
            route=req.route,
            problem=inp.gpus.problem,
        )

    client_gpu = opts.get("num_gpu")
    if isinstance(client_gpu, int) and 0 <= client_gpu < model.layers and policy.allow_partial_offload:
        return Admit({}, True, "partial_allowed", note=f"num_gpu {client_gpu} of {model.layers} layers: spilling allowed by policy")

    ctx, source = effective_ctx(inp)
    parallel = parallel_for(model.architecture, model.is_embedding, inp.server.parallel)
    key = model_key(req.model)
    resident = next((r for r in inp.residents if r.name == key), None)

    # Sticky options: a resident model is reused as loaded unless more context is asked for.
    if resident is not None and resident.fully_on_gpu and not _changes_load_options(opts, resident):
        asked = opts.get("num_ctx") if req.route == "native" else None
        if resident.load is not None and req.route == "native":
            if asked is None or asked <= resident.load.num_ctx:
                return Admit(
                    _forward_options(opts, resident.load.num_ctx, resident.load.num_gpu),
                    False,
                    "sticky",
                    num_ctx=resident.load.num_ctx,
                    requested_ctx=asked,
                )
        elif resident.load is None and resident.context_length == ctx and "num_gpu" not in opts:
            if req.route == "openai" or "num_ctx" not in opts:
                return Admit({}, True, "resident", num_ctx=ctx, requested_ctx=ctx)
        elif resident.load is not None and req.route == "openai" and resident.load.num_ctx == ctx:
            return Admit({}, True, "resident", num_ctx=ctx, requested_ctx=ctx)

    def need_at(n_ctx: int) -> Need:
        return need_for(inp, n_ctx, parallel)

    budgets = gpu_budgets(inp, key)
    pinned = opts.get("main_gpu")  # >= 0.30: the model is pinned to that one GPU
    if isinstance(pinned, int) and not isinstance(pinned, bool) and any(b.index == pinned for b in budgets):
        budgets = tuple(b for b in budgets if b.index == pinned)

    def place_at(n_ctx: int, bud: tuple[GpuBudget, ...]) -> tuple[tuple[int, int], ...] | None:
        return place(inp.sizer, need_at(n_ctx), bud, policy, inp.correction)

    placed = place_at(ctx, budgets)
    need = need_at(ctx)
    if placed is not None:
        evicts = evictions(placed, budgets)
        if req.route == "openai":  # nothing can be carried: forward as it is
            return Admit({}, True, "admitted", ctx, ctx, need, placed, evicts, budgets)
        return Admit(_forward_options(opts, ctx, model.layers), False, "admitted", ctx, ctx, need, placed, evicts, budgets)

    floor = min(ctx, policy.min_num_ctx)
    fits_now = largest_ctx(lambda n: place_at(n, budgets) is not None, ctx, 256)
    if req.route == "native" and fits_now is not None and fits_now >= floor:
        need_small = need_at(fits_now)
        placed_small = place_at(fits_now, budgets) or ()
        return Admit(
            _forward_options(opts, fits_now, model.layers), False, "rewritten", fits_now, ctx, need_small,
            placed_small, evictions(placed_small, budgets), budgets,
        )

    # Refuse: would it fit once every other holder lets go (503), or never on these GPUs (507)?
    empty = tuple(e for e in empty_budgets(inp) if e.index in {b.index for b in budgets})
    fits_free = largest_ctx(lambda n: place_at(n, empty) is not None, ctx, 256)
    enough = ctx if req.route == "openai" else floor  # /v1 cannot be given a smaller context
    if fits_free is not None and fits_free >= enough:
        status, retry = 503, _retry_after(inp, key)
        reason = "busy" if retry <= 10 else "no_room"
    else:
        status, retry, reason = 507, None, "too_big"
    best = max(budgets, key=lambda b: b.budget)
    # what Ollama itself would see: free memory and idle models, not vramgate's reservations
    ollama_room = max(0, best.free + best.reclaimable - policy.reserve)
    spill = spill_layers(need, ollama_room, model.layers, inp.sizer, ctx)
    tps_gpu = tps_spill = None
    if inp.speed is not None:
        fp = inp.sizer(ctx, parallel, need.num_batch)
        tps_gpu = inp.speed(fp, best.bandwidth, 0)
        tps_spill = inp.speed(fp, best.bandwidth, spill)
    return Refuse(
        status=status,
        retry_after=retry,
        reason=reason,
        model=req.model,
        route=req.route,
        requested_ctx=ctx,
        ctx_source=source,
        need=need,
        budgets=budgets,
        holders=holders(inp, key),
        fits_ctx_now=fits_now,
        fits_ctx_when_free=fits_free,
        tps_gpu=tps_gpu,
        tps_spill=tps_spill,
        spill_layers=spill,
        problem=inp.gpus.problem,
        min_num_ctx=policy.min_num_ctx,
    )


# --- the parts, each testable alone --------------------------------------------------------


def load_need(inp: Inputs) -> Need:
    """What this load needs on one GPU as asked (before any shrinking): ``vramgate plan`` prints
    exactly this, so plan and serve give one number for one question."""
    ctx, _ = effective_ctx(inp)
    return need_for(inp, ctx, parallel_for(inp.model.architecture, inp.model.is_embedding, inp.server.parallel))


def need_for(inp: Inputs, n_ctx: int, parallel: int) -> Need:
    """The footprint at ``n_ctx`` with the batch Ollama would pick, plus the CUDA context."""
    model, policy = inp.model, inp.policy
    batch_opt = inp.request.options.get("num_batch", model.modelfile.get("num_batch"))
    if isinstance(batch_opt, int) and not isinstance(batch_opt, bool) and batch_opt > 0:
        batch = batch_opt
    else:
        largest = max((g.total for g in inp.gpus.gpus), default=0)
        batch = default_num_batch(inp.server.version, model.is_embedding, n_ctx, inp.server.flash_attention, largest)
    fp = inp.sizer(n_ctx, parallel, batch)
    other = fp.gpu_total_bytes - fp.kv_bytes - fp.compute_bytes - fp.gpu_weights_bytes + inp.correction
    total = fp.gpu_total_bytes + inp.correction + policy.cuda_context
    return Need(n_ctx, parallel, batch, fp.gpu_weights_bytes, fp.kv_bytes, fp.compute_bytes, other,
                policy.cuda_context, total, fp.gpu_total_bytes + inp.correction, inp.correction)


def effective_ctx(inp: Inputs) -> tuple[int, str]:
    """Request num_ctx, else Modelfile num_ctx, else the server default; capped to the trained context."""
    req, model = inp.request, inp.model
    asked = req.options.get("num_ctx") if req.route == "native" else None
    if isinstance(asked, int) and asked > 0:
        ctx, source = asked, "request"
    elif isinstance(model.modelfile.get("num_ctx"), int) and model.modelfile["num_ctx"] > 0:
        ctx, source = int(model.modelfile["num_ctx"]), "Modelfile"
    else:
        ctx = inp.server.default_num_ctx([g.total for g in inp.gpus.gpus])
        source = "OLLAMA_CONTEXT_LENGTH" if inp.server.context_length else "server default"
    ctx = max(ctx, 4)
    if model.trained_ctx and ctx > model.trained_ctx:
        return model.trained_ctx, f"{source}, capped to the trained context"
    return ctx, source


def gpu_budgets(inp: Inputs, key: str) -> tuple[GpuBudget, ...]:
    """Per GPU memory a new load of ``key`` may use now.

    Reclaimable: this model's own runner (a reload replaces it; its loads in flight are not
    counted as pending for the same reason) and, with ``evict_idle``, idle
    residents not already counted on by an admitted load; own runner first, then the ones whose
    keep-alive ends soonest (Ollama's eviction order).
    """
    policy, snap = inp.policy, inp.gpus
    claimed = frozenset().union(*(r.evicts for r in inp.reservations)) if inp.reservations else frozenset()
    order = sorted(inp.residents, key=lambda r: (r.name != key, r.expires_at or ""))
    out = []
    for gpu in snap.gpus:
        held = 0  # what Ollama holds here that the snapshot's free does not already exclude
        reclaim_from = []
        for r in order:
            charge = resident_charge(r, gpu, snap, policy)
            if not snap.includes_ollama:
                held += charge
            if charge and r.name not in claimed and (r.name == key or (policy.evict_idle and not r.busy)):
                reclaim_from.append((r.name, charge))
        reclaim = sum(b for _, b in reclaim_from)
        # loads admitted, not yet resident; not this model's own: Ollama runs one runner per model,
        # so a second load of it shares (same options) or replaces (others) the first
        pending = sum(b for res in inp.reservations if res.model != key for i, b in res.per_gpu if i == gpu.index)
        free = gpu.free - held  # may be negative when static numbers disagree with /api/ps: keep it
        budget = free + reclaim - pending - policy.reserve
        ollama = sum(resident_charge(r, gpu, snap, policy) for r in inp.residents)
        others = gpu.total - gpu.free - (ollama if snap.includes_ollama else 0)
        out.append(GpuBudget(gpu.index, gpu.name, gpu.total, max(0, free), reclaim, pending, budget, gpu.bandwidth,
                             tuple(reclaim_from), max(0, others)))
    return tuple(out)


def evictions(placed: tuple[tuple[int, int], ...], budgets: tuple[GpuBudget, ...]) -> frozenset[str]:
    """The residents a placement needs gone: only as many as cover each GPU's shortfall."""
    by_index = {b.index: b for b in budgets}
    names: set[str] = set()
    for index, need in placed:
        b = by_index[index]
        shortfall = need - (b.budget - b.reclaimable)
        for name, size in b.reclaim_from:
            if shortfall <= 0:
                break
            names.add(name)
            shortfall -= size
    return frozenset(names)


def empty_budgets(inp: Inputs) -> tuple[GpuBudget, ...]:
    """The budgets if nothing else held these GPUs: the test between 503 and 507."""
    p = inp.policy
    return tuple(
        GpuBudget(g.index, g.name, g.total, g.total, 0, 0, g.total - p.reserve, g.bandwidth) for g in inp.gpus.gpus
    )


def resident_charge(r: Resident, gpu: Gpu, snap: GpuSnapshot, policy: Policy) -> int:
    """Bytes a resident model holds on ``gpu`` including its runner's CUDA context.

    Where vramgate placed it is known; otherwise a one-GPU machine holds it all, and on several
    GPUs it is split evenly (Ollama does not say where a runner went).
    """
    if r.load is not None and r.load.per_gpu:
        placed = dict(r.load.per_gpu)
        if gpu.index not in placed:
            return 0
        share = r.size_vram * placed[gpu.index] // max(1, sum(placed.values()))
        return share + policy.cuda_context
    n = len(snap.gpus)
    if n == 1:
        return r.size_vram + (policy.cuda_context if r.size_vram else 0)
    return r.size_vram // n


def place(sizer: Sizer, need: Need, budgets: tuple[GpuBudget, ...], policy: Policy, correction: int = 0) -> tuple[tuple[int, int], ...] | None:
    """Per-GPU bytes if the load fits: one GPU when it can (as Ollama prefers), else layers spread."""
    ordered = sorted(budgets, key=lambda b: b.budget, reverse=True)
    if not ordered:
        return None
    best = ordered[0]
    if need.total <= best.budget:
        return ((best.index, need.total),)
    if len(ordered) < 2:
        return None
    fp = sizer(need.num_ctx, need.parallel, need.num_batch)
    return spread(fp, ordered, policy.cuda_context + correction)


def spread(fp: FootprintLike, ordered: list[GpuBudget], fixed_extra: int) -> tuple[tuple[int, int], ...] | None:
    """Pack repeating layers onto GPUs; every GPU used pays its own compute buffer and CUDA context.

    The largest GPU takes the output layer and the projector; conservative by design.
    """
    remaining = max(0, fp.layers - 1)
    layer = max(1, largest_layer(fp))
    placed: list[tuple[int, int]] = []
    for i, b in enumerate(ordered):
        fixed = fp.compute_bytes + fixed_extra
        if i == 0:
            fixed += fp.output_layer_bytes + fp.output_bytes + fp.projector_bytes
        room = b.budget - fixed
        if room < 0:
            if i == 0:
                return None
            continue
        n = min(remaining, room // layer)
        if n == 0 and i > 0:
            continue
        placed.append((b.index, fixed + n * layer))
        remaining -= n
        if remaining == 0:
            return tuple(placed)
    return None


def largest_ctx(fits: Callable[[int], bool], upper: int, step: int) -> int | None:
    """Largest multiple of ``step`` <= upper (or upper itself) for which ``fits`` holds; None if none.

    Memory grows with context, so a binary search is enough.
    """
    if upper <= 0:
        return None
    if fits(upper):
        return upper
    lo, hi = 1, upper // step  # in steps; hi*step may equal upper (already known not to fit)
    if hi * step >= upper:
        hi -= 1
    if hi < 1 or not fits(step):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def spill_layers(need: Need, budget: int, layers: int, sizer: Sizer, ctx: int) -> int:
    """How many layers would land in system RAM if Ollama were left to spill."""
    over = need.total - budget
    if over <= 0:
        return 0
    fp = sizer(need.num_ctx, need.parallel, need.num_batch)
    return min(layers, math.ceil(over / max(1, largest_layer(fp))))


def holders(inp: Inputs, key: str) -> tuple[Holder, ...]:
    """Who holds the memory: Ollama models by name, pending loads, other processes by user/pid."""
    out: list[Holder] = []
    for gpu in inp.gpus.gpus:
        for r in inp.residents:
            charge = resident_charge(r, gpu, inp.gpus, inp.policy)
            if charge:
                out.append(Holder("ollama", r.name, gpu.index, charge, busy=r.busy))
        for res in inp.reservations:
            for i, b in res.per_gpu:
                if i == gpu.index:
                    out.append(Holder("pending", res.model, gpu.index, b, busy=True))
        for p in gpu.processes:
            if not p.is_ollama:
                out.append(Holder("process", p.command or "?", gpu.index, p.used_bytes or 0, pid=p.pid, user=p.user))
    return tuple(sorted(out, key=lambda h: (h.gpu, -h.bytes)))


def _retry_after(inp: Inputs, key: str) -> int:
    """Short when Ollama's own busy models or in-flight loads are in the way, longer otherwise."""
    others_busy = any(r.busy and r.name != key for r in inp.residents) or bool(inp.reservations)
    return 10 if others_busy else 60


def _changes_load_options(opts: Mapping[str, Any], r: Resident) -> bool:
    """Client options besides num_ctx/num_gpu that make Ollama reload: then the load is planned anew."""
    return any(k in opts for k in ("num_batch", "main_gpu", "use_mmap", "num_thread"))


def _forward_options(opts: Mapping[str, Any], num_ctx: int, num_gpu: int) -> dict[str, Any]:
    out = dict(opts)
    out["num_ctx"] = num_ctx
    out["num_gpu"] = num_gpu
    return out


def largest_layer(fp: FootprintLike) -> int:
    """Layers are packed at the size of the largest one: simple and on the safe side."""
    sizes = fp.layer_bytes
    if isinstance(sizes, (tuple, list)):
        return max(sizes, default=0)
    return int(sizes)


# --- pulls ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullRefuse:
    model: str
    weights: int
    projector: int
    usable: int  # all GPUs together, each less the reserve and a CUDA context
    gpus: tuple[tuple[str, int], ...]  # (name, total)


def check_pull(model: str, weights: int, projector: int, gpus: GpuSnapshot, policy: Policy) -> PullRefuse | None:
    """Refuse a download whose weights and projector alone exceed every GPU together, even empty.

    With no GPU known nothing is refused here: downloading does not load anything.
    """
    if not gpus.gpus:
        return None
    usable = sum(max(0, g.total - policy.reserve - policy.cuda_context) for g in gpus.gpus)
    if weights + projector <= usable:
        return None
    return PullRefuse(model, weights, projector, usable, tuple((g.name, g.total) for g in gpus.gpus))
