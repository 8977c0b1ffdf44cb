"""The fit decision: admit a load as asked, shrink its context, or refuse it. Pure.

Inputs are plain data (the model, a function giving its footprint at a context, the GPU snapshot,
what Ollama holds, loads admitted but not yet resident, the policy, the request's options) and the
result is an ``Admit`` (options to forward) or a ``Refuse`` (status and the numbers behind it).
Nothing here does I/O, so every rule is tested with tables of cases.

Memory per GPU that a new load may use (its *budget*) is what is free now, plus what this model's
own runner holds (a reload replaces it), plus idle Ollama models (Ollama evicts them; policy
``evict_idle``), minus loads admitted but not yet resident, minus the reserve. The load needs its
llama.cpp buffers plus a CUDA context per GPU it runs on.

A load that does not fit is refused 503 (retry) only if it would fit once the holders that can let
go have: Ollama's models and admitted loads always, other programs only on NVML. On static GPUs
what other programs hold is configured and never changes, so a load they alone keep out is 507.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from proxy.gate.residency import Resident, VramgateLoad, model_key
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
    @property
    def vision_compute_bytes(self) -> int: ...  # the vision encoder's buffer, beside the projector


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
    user: str | None = None  # whose load it is (their quota counts it)


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
    user: str | None = None  # a process's Unix user; for an Ollama model, who loaded it through vramgate
    idle_s: float | None = None  # an idle Ollama model: seconds since its last request through vramgate


@dataclass(frozen=True)
class Quota:
    """A user's ``max_vram``: the most their resident models may hold at once, across GPUs.

    A model several users share counts once, for the user whose request loaded it.
    """

    user: str
    limit: int
    rule: str  # where the limit is set, e.g. "users.alice.max_vram"
    held: int  # what their models hold that stays: busy ones and loads in flight (not the model asked for)
    idle: tuple[tuple[str, int], ...] = ()  # their idle models, least recently used first: vramgate may unload them

    @property
    def room(self) -> int:
        """The most a new load of theirs may take, once their idle models are unloaded."""
        return self.limit - self.held

    def to_unload(self, total: int) -> frozenset[str]:
        """Their idle models that must go for a load of ``total`` bytes to stay within the limit."""
        over = self.held + sum(b for _, b in self.idle) + total - self.limit
        names: set[str] = set()
        for name, size in self.idle:
            if over <= 0:
                break
            names.add(name)
            over -= size
        return frozenset(names)


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
    requested_ctx: int | None = None  # the context asked for, before the trained-context cap
    need: Need | None = None
    per_gpu: tuple[tuple[int, int], ...] = ()
    evicts: frozenset[str] = frozenset()
    budgets: tuple[GpuBudget, ...] = ()
    note: str | None = None
    # each lowering from requested_ctx to num_ctx: (num_ctx, "trained context" | "GPU memory")
    ctx_steps: tuple[tuple[int, str], ...] = ()

    @property
    def rewritten(self) -> bool:
        return self.reason == "rewritten"


@dataclass(frozen=True)
class Refuse:
    status: int  # 503 (wait), 507 (never on these GPUs), 403/429 (the user's policy)
    retry_after: int | None
    reason: str  # busy | no_room | too_big | held_by_others | no_gpu | gpu_unreadable | over_quota | quota_too_small | num_ctx_cap
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
    quota: Quota | None = None  # set on the policy refusals over_quota and quota_too_small
    ctx_cap: tuple[int, str] | None = None  # (max_num_ctx, its rule) on num_ctx_cap

    @property
    def retryable(self) -> bool:
        """Waiting can help: other holders will let go (the queue waits for that)."""
        return self.status == 503 and self.reason in ("busy", "no_room")


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
    quota: Quota | None = None  # the user's max_vram, when their policy sets one
    # idle residents that may be evicted for this load (None: all, as Ollama would; a policy narrows it)
    evictable: frozenset[str] | None = None
    ctx_cap: tuple[int, str] | None = None  # the user's max_num_ctx and where it is set


# --- the decision: the rules, in the order they apply ---------------------------------------


def decide(inp: Inputs) -> Decision:
    """Admit, shrink or refuse one load: the first rule that answers decides."""
    if not inp.gpus.gpus:  # 1. no GPU: the policy decides
        return _no_gpu(inp)
    if (partial := _partial_offload_allowed(inp)) is not None:  # 2. spilling asked and allowed
        return partial
    load = _Load.of(inp)
    if (capped := _over_ctx_cap(load)) is not None:  # 3. /v1 over the user's max_num_ctx: cannot be shrunk
        return capped
    if (reused := _reuse_resident(load)) is not None:  # 4. already loaded: sticky / resident (no new memory)
        return reused
    if (never := _never_within_quota(load)) is not None:  # 5. larger than the user's max_vram even alone
        return never
    budgets = _budgets_for(load)
    if (placed := load.place_at(load.ctx, budgets)) is not None:  # 6. fits as asked
        return _admit_as_asked(load, placed, budgets)
    fits_now = load.largest_fitting(budgets)
    if fits_now is not None and load.may_shrink_to(fits_now):  # 7. fits with a smaller context
        return _admit_smaller(load, fits_now, budgets)
    if inp.quota is not None and isinstance(decide(replace(inp, quota=None)), Admit):  # 8. only the quota stops it
        return _over_quota(load, budgets)
    return _refuse(load, budgets, fits_now)  # 9. refused: 503 if waiting helps, else 507


@dataclass(frozen=True)
class _Load:
    """The load being judged: its inputs and what follows from them before any GPU is looked at."""

    inp: Inputs
    key: str  # the model as Ollama names its runner
    asked: int  # the context asked for, before the trained-context cap (see ``asked_ctx``)
    ctx: int  # the context sized: ``asked`` capped to the trained context
    source: str  # where ``ctx`` came from, for the explanation
    parallel: int

    @classmethod
    def of(cls, inp: Inputs) -> _Load:
        """The context asked and sized, and the slots, as Ollama will work them out."""
        asked, asked_source = asked_ctx(inp)
        ctx, source = effective_ctx(inp)
        if asked_source == "server default":  # Ollama's own pick by GPU size, not an ask: what Ollama
            # loads (capped to the trained context as Ollama caps it), before any policy max_num_ctx,
            # which /v1 cannot carry (``_over_ctx_cap``) and a native load says it rewrote
            trained = inp.model.trained_ctx
            asked = min(asked, trained) if trained else asked
        parallel = parallel_for(inp.model.architecture, inp.model.is_embedding, inp.server.parallel)
        return cls(inp, model_key(inp.request.model), asked, ctx, source, parallel)

    @property
    def native(self) -> bool:
        """Only native requests carry options, so only they can be given a smaller context."""
        return self.inp.request.route == "native"

    @property
    def floor(self) -> int:
        """The smallest context vramgate shrinks to: min_num_ctx, or the context asked if smaller."""
        return min(self.ctx, self.inp.policy.min_num_ctx)

    def need_at(self, n_ctx: int) -> Need:
        """What the load needs on one GPU at ``n_ctx``."""
        return need_for(self.inp, n_ctx, self.parallel)

    def place_at(self, n_ctx: int, budgets: tuple[GpuBudget, ...]) -> tuple[tuple[int, int], ...] | None:
        """Where it would go at ``n_ctx`` (bytes per GPU), or None if it does not fit (GPUs or quota)."""
        placed = place(self.inp.sizer, self.need_at(n_ctx), budgets, self.inp.policy, self.inp.correction)
        quota = self.inp.quota
        if placed is not None and quota is not None and sum(b for _, b in placed) > quota.room:
            return None
        return placed

    def evicts(self, placed: tuple[tuple[int, int], ...], budgets: tuple[GpuBudget, ...]) -> frozenset[str]:
        """Residents to be gone: those the GPUs need, and the user's own idle ones their quota needs."""
        names = evictions(placed, budgets)
        if self.inp.quota is not None:
            names |= self.inp.quota.to_unload(sum(b for _, b in placed))
        return names

    def largest_fitting(self, budgets: tuple[GpuBudget, ...]) -> int | None:
        """The largest context up to ``ctx`` that fits these budgets (None if not even 256 tokens)."""
        return largest_ctx(lambda n: self.place_at(n, budgets) is not None, self.ctx, 256)

    def may_shrink_to(self, fits: int) -> bool:
        """A native load is shrunk to what fits, but never below ``floor``."""
        return self.native and fits >= self.floor

    def steps_to(self, num_ctx: int, lowered_by: str = "GPU memory") -> tuple[tuple[int, str], ...]:
        """Each lowering from the asked context to ``num_ctx`` with its reason (header and log)."""
        steps = []
        if self.asked > self.trained_capped:
            steps.append((self.trained_capped, "trained context"))
        if self.trained_capped > self.ctx:
            steps.append((self.ctx, f"policy {self.inp.ctx_cap[1] if self.inp.ctx_cap else ''}".strip()))
        if num_ctx < self.ctx:
            steps.append((num_ctx, lowered_by))
        return tuple(steps)

    @property
    def trained_capped(self) -> int:
        """The context after the trained-context cap only (before the user's max_num_ctx)."""
        trained = self.inp.model.trained_ctx
        return min(self.asked, trained) if trained else self.asked


def _no_gpu(inp: Inputs) -> Decision:
    """No GPU known: the policy lets loads through unchecked, or they are refused (503 if the read may work again)."""
    if inp.policy.on_no_gpu == "allow":
        return Admit({}, True, "no_gpu_allowed", note=inp.gpus.problem)
    unreadable = inp.gpus.transient  # a read that failed may work again; a missing GPU will not
    return Refuse(
        status=503 if unreadable else 507,
        retry_after=30 if unreadable else None,
        reason="gpu_unreadable" if unreadable else "no_gpu",
        model=inp.request.model,
        route=inp.request.route,
        problem=inp.gpus.problem,
    )


def _partial_offload_allowed(inp: Inputs) -> Admit | None:
    """A client asking for fewer GPU layers passes unchanged where the policy allows spilling."""
    client_gpu = inp.request.options.get("num_gpu")
    layers = inp.model.layers
    if isinstance(client_gpu, int) and 0 <= client_gpu < layers and inp.policy.allow_partial_offload:
        return Admit({}, True, "partial_allowed", note=f"num_gpu {client_gpu} of {layers} layers: spilling allowed by policy")
    return None


def _reuse_resident(load: _Load) -> Admit | None:
    """A model already fully on the GPU is reused as loaded, so mixed clients cause no reload storms."""
    opts = load.inp.request.options
    r = next((r for r in load.inp.residents if r.name == load.key), None)
    if r is None or not r.fully_on_gpu or _changes_load_options(opts):
        return None
    if r.load is None:
        return _loaded_elsewhere(load, r)
    if load.native:
        return _sticky(load, r.load)
    if r.load.num_ctx == load.ctx:  # /v1 at the context vramgate loaded it with
        return Admit({}, True, "resident", num_ctx=load.ctx, requested_ctx=load.ctx)
    return None


def _sticky(load: _Load, loaded: VramgateLoad) -> Admit | None:
    """Native: the options vramgate loaded it with are forwarded again unless more context is asked."""
    asked = load.inp.request.options.get("num_ctx")
    if asked is not None and load.inp.ctx_cap is not None:
        asked = min(asked, load.inp.ctx_cap[0])
    if asked is not None and asked > loaded.num_ctx:
        return None
    options = _forward_options(load.inp.request.options, loaded.num_ctx, loaded.num_gpu)
    return Admit(options, False, "sticky", num_ctx=loaded.num_ctx, requested_ctx=asked)


def _loaded_elsewhere(load: _Load, r: Resident) -> Admit | None:
    """Loaded by another client at this very context: pass unchanged unless load options are asked."""
    opts = load.inp.request.options
    if r.context_length != load.ctx or "num_gpu" in opts or (load.native and "num_ctx" in opts):
        return None
    return Admit({}, True, "resident", num_ctx=load.ctx, requested_ctx=load.ctx)


def _lowered_by(load: _Load, fits: int, budgets: tuple[GpuBudget, ...]) -> str:
    """Why a load got a smaller context: the GPUs, or the user's max_vram (the GPUs had room for more)."""
    quota = load.inp.quota
    if quota is None:
        return "GPU memory"
    free_of_quota = _Load.of(replace(load.inp, quota=None)).largest_fitting(budgets)
    return f"policy {quota.rule}" if free_of_quota is not None and free_of_quota > fits else "GPU memory"


def _over_ctx_cap(load: _Load) -> Refuse | None:
    """/v1 carries no options, so a load whose context is over the user's max_num_ctx cannot be
    shrunk to it: refused (403) unless the model is already resident at a context within the cap."""
    cap = load.inp.ctx_cap
    if cap is None or load.native or load.trained_capped <= cap[0]:
        return None
    r = next((r for r in load.inp.residents if r.name == load.key), None)
    if r is not None and r.fully_on_gpu and r.context_length is not None and r.context_length <= cap[0]:
        return None
    source = load.source.removesuffix(f", capped by policy {cap[1]}")  # where the context Ollama would load comes from
    return Refuse(403, None, "num_ctx_cap", load.key, load.inp.request.route, requested_ctx=load.trained_capped,
                  ctx_source=source, ctx_cap=cap, min_num_ctx=load.inp.policy.min_num_ctx)


def _never_within_quota(load: _Load) -> Refuse | None:
    """Larger than the user's whole max_vram even at the smallest context vramgate would give it (403)."""
    quota = load.inp.quota
    if quota is None:
        return None
    smallest = load.floor if load.native else load.ctx
    need = load.need_at(smallest)
    if need.total <= quota.limit:
        return None
    if place(load.inp.sizer, need, empty_budgets(load.inp), load.inp.policy, load.inp.correction) is None:
        return None  # it never fits these GPUs at all, whoever asks: 507 says that, not the quota
    return Refuse(403, None, "quota_too_small", load.key, load.inp.request.route, requested_ctx=load.ctx,
                  ctx_source=load.source, need=need, quota=quota, min_num_ctx=load.inp.policy.min_num_ctx)


def _over_quota(load: _Load, budgets: tuple[GpuBudget, ...]) -> Refuse:
    """It fits the GPUs but not the user's max_vram next to their busy models (429: wait for them)."""
    quota = load.inp.quota
    return Refuse(429, 10, "over_quota", load.key, load.inp.request.route, requested_ctx=load.asked,
                  ctx_source=load.source, need=load.need_at(load.ctx), budgets=budgets, holders=holders(load.inp),
                  quota=quota, min_num_ctx=load.inp.policy.min_num_ctx)


def _budgets_for(load: _Load) -> tuple[GpuBudget, ...]:
    """Every GPU's budget, or only the GPU ``main_gpu`` pins the model to (Ollama >= 0.30)."""
    budgets = gpu_budgets(load.inp, load.key)
    pinned = load.inp.request.options.get("main_gpu")
    if isinstance(pinned, int) and not isinstance(pinned, bool) and any(b.index == pinned for b in budgets):
        return tuple(b for b in budgets if b.index == pinned)
    return budgets


def _admit_as_asked(load: _Load, placed: tuple[tuple[int, int], ...], budgets: tuple[GpuBudget, ...]) -> Admit:
    """It fits as asked: forward all layers and the context explicitly (/v1: the body as it is)."""
    fields: dict[str, Any] = dict(num_ctx=load.ctx, requested_ctx=load.asked, need=load.need_at(load.ctx),
                                  per_gpu=placed, evicts=load.evicts(placed, budgets), budgets=budgets)
    if not load.native:  # nothing can be carried: forward as it is
        return Admit({}, True, "admitted", **fields)
    options = _forward_options(load.inp.request.options, load.ctx, load.inp.model.layers)
    return Admit(options, False, "admitted", ctx_steps=load.steps_to(load.ctx), **fields)


def _admit_smaller(load: _Load, fits: int, budgets: tuple[GpuBudget, ...]) -> Admit:
    """It fits with a smaller context (not below ``floor``): forward that context instead."""
    placed = load.place_at(fits, budgets) or ()
    return Admit(
        _forward_options(load.inp.request.options, fits, load.inp.model.layers), False, "rewritten",
        num_ctx=fits, requested_ctx=load.asked, need=load.need_at(fits), per_gpu=placed,
        evicts=load.evicts(placed, budgets), budgets=budgets, ctx_steps=load.steps_to(fits, _lowered_by(load, fits, budgets)),
    )


def _refuse(load: _Load, budgets: tuple[GpuBudget, ...], fits_now: int | None) -> Refuse:
    """Nothing fits now: refuse with the numbers, 503 when waiting can help and 507 when it cannot."""
    inp = load.inp
    fits_free = load.largest_fitting(_same_gpus(empty_budgets(inp), budgets))
    status, retry, reason = _refusal_status(load, budgets, fits_free)
    need = load.need_at(load.ctx)
    spill, tps_gpu, tps_spill = _if_spilled(load, need, budgets)
    return Refuse(
        status=status,
        retry_after=retry,
        reason=reason,
        model=inp.request.model,
        route=inp.request.route,
        requested_ctx=load.ctx,
        ctx_source=load.source,
        need=need,
        budgets=budgets,
        holders=holders(inp),
        fits_ctx_now=fits_now,
        fits_ctx_when_free=fits_free,
        tps_gpu=tps_gpu,
        tps_spill=tps_spill,
        spill_layers=spill,
        problem=inp.gpus.problem,
        min_num_ctx=inp.policy.min_num_ctx,
    )


def _refusal_status(load: _Load, budgets: tuple[GpuBudget, ...], fits_free: int | None) -> tuple[int, int | None, str]:
    """(status, Retry-After, reason): 503 only if holders that can let go would leave enough room.

    Enough is the context asked on /v1 (it cannot be given less) and ``floor`` on native routes.
    - it does not fit even on empty GPUs: 507 ``too_big``;
    - static GPUs (VRAMGATE_GPU=static): what programs other than Ollama hold is configured and
      never changes, so only Ollama's models and admitted loads can let go; if it does not fit
      once they all have: 507 ``held_by_others``;
    - otherwise 503: ``busy`` (Retry-After 10) when a busy Ollama model or a load in flight is
      in the way, else ``no_room`` (60: idle models past their keep-alive, other programs on NVML).
    """
    enough = load.floor if load.native else load.ctx
    if fits_free is None or fits_free < enough:
        return 507, None, "too_big"
    if load.inp.gpus.source == "static":
        fits_without_ollama = load.largest_fitting(_same_gpus(static_budgets_without_ollama(load.inp), budgets))
        if fits_without_ollama is None or fits_without_ollama < enough:
            return 507, None, "held_by_others"
    retry = _retry_after(load.inp, load.key)
    return 503, retry, "busy" if retry <= 10 else "no_room"


def _if_spilled(load: _Load, need: Need, budgets: tuple[GpuBudget, ...]) -> tuple[int, float | None, float | None]:
    """What letting Ollama spill would cost: layers in system RAM, tokens/s fully on the GPU and spilled."""
    inp = load.inp
    best = max(budgets, key=lambda b: b.budget)
    # what Ollama itself would see: free memory and idle models, not vramgate's reservations
    ollama_room = max(0, best.free + best.reclaimable - inp.policy.reserve)
    spill = spill_layers(need, ollama_room, inp.model.layers, inp.sizer)
    if inp.speed is None:
        return spill, None, None
    fp = inp.sizer(load.ctx, load.parallel, need.num_batch)
    return spill, inp.speed(fp, best.bandwidth, 0), inp.speed(fp, best.bandwidth, spill)


def _same_gpus(candidates: tuple[GpuBudget, ...], budgets: tuple[GpuBudget, ...]) -> tuple[GpuBudget, ...]:
    """The candidates on the GPUs the load may use (all, or the one main_gpu pins it to)."""
    indices = {b.index for b in budgets}
    return tuple(c for c in candidates if c.index in indices)


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


def asked_ctx(inp: Inputs) -> tuple[int, str]:
    """The context asked for, with its source: request num_ctx, else Modelfile num_ctx, else the server default."""
    req, model = inp.request, inp.model
    asked = req.options.get("num_ctx") if req.route == "native" else None
    if isinstance(asked, int) and asked > 0:
        ctx, source = asked, "request"
    elif isinstance(model.modelfile.get("num_ctx"), int) and model.modelfile["num_ctx"] > 0:
        ctx, source = int(model.modelfile["num_ctx"]), "Modelfile"
    else:
        ctx = inp.server.default_num_ctx([g.total for g in inp.gpus.gpus])
        source = "OLLAMA_CONTEXT_LENGTH" if inp.server.context_length else "server default"
    return max(ctx, 4), source


def effective_ctx(inp: Inputs) -> tuple[int, str]:
    """The context asked for, capped to the trained context (as Ollama caps it) and to the user's
    max_num_ctx (as vramgate rewrites it): the one sized."""
    ctx, source = asked_ctx(inp)
    trained = inp.model.trained_ctx
    if trained and ctx > trained:
        ctx, source = trained, f"{source}, capped to the trained context"
    if inp.ctx_cap is not None and ctx > inp.ctx_cap[0]:
        ctx, source = inp.ctx_cap[0], f"{source}, capped by policy {inp.ctx_cap[1]}"
    return ctx, source


def gpu_budgets(inp: Inputs, key: str) -> tuple[GpuBudget, ...]:
    """Per GPU memory a new load of ``key`` may use now.

    Reclaimable: this model's own runner (a reload replaces it; its loads in flight are not
    counted as pending for the same reason) and, with ``evict_idle``, idle
    residents not already counted on by an admitted load; own runner first, then the ones whose
    keep-alive ends soonest (Ollama's eviction order).
    """
    claimed = frozenset().union(*(r.evicts for r in inp.reservations)) if inp.reservations else frozenset()
    order = tuple(sorted(inp.residents, key=lambda r: (r.name != key, r.expires_at or "")))
    return tuple(_gpu_budget(inp, gpu, key, order, claimed) for gpu in inp.gpus.gpus)


def _gpu_budget(inp: Inputs, gpu: Gpu, key: str, order: tuple[Resident, ...], claimed: frozenset[str]) -> GpuBudget:
    """One GPU: free + reclaimable - pending - reserve, and what programs other than Ollama hold."""
    policy, snap = inp.policy, inp.gpus
    charges = [(r, resident_charge(r, gpu, snap, policy)) for r in order]
    ollama = sum(c for _, c in charges)
    held = 0 if snap.includes_ollama else ollama  # what Ollama holds that free does not already exclude
    reclaim_from = tuple((r.name, c) for r, c in charges if c and _reclaimable(r, key, claimed, policy, inp.evictable))
    reclaim = sum(b for _, b in reclaim_from)
    pending = _pending_on(inp, gpu.index, key)
    free = gpu.free - held  # may be negative when static numbers disagree with /api/ps: keep it
    budget = free + reclaim - pending - policy.reserve
    others = gpu.total - gpu.free - (ollama if snap.includes_ollama else 0)
    return GpuBudget(gpu.index, gpu.name, gpu.total, max(0, free), reclaim, pending, budget, gpu.bandwidth,
                     reclaim_from, max(0, others))


def _reclaimable(r: Resident, key: str, claimed: frozenset[str], policy: Policy,
                 evictable: frozenset[str] | None) -> bool:
    """This model's own runner, or an idle one that may be evicted (by Ollama, or by vramgate where a
    policy says whose), unless an admitted load counts on it. A busy model never is."""
    if r.name in claimed:
        return False
    if r.name == key:
        return True
    return policy.evict_idle and not r.busy and (evictable is None or r.name in evictable)


def _pending_on(inp: Inputs, index: int, key: str) -> int:
    """Loads admitted, not yet resident, on GPU ``index``; not this model's own: Ollama runs one runner
    per model, so a second load of it shares (same options) or replaces (others) the first."""
    return sum(b for res in inp.reservations if res.model != key for i, b in res.per_gpu if i == index)


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
    """The budgets if nothing else held these GPUs: a load that does not fit them is refused 507."""
    p = inp.policy
    return tuple(
        GpuBudget(g.index, g.name, g.total, g.total, 0, 0, g.total - p.reserve, g.bandwidth) for g in inp.gpus.gpus
    )


def static_budgets_without_ollama(inp: Inputs) -> tuple[GpuBudget, ...]:
    """Static GPUs once Ollama's models and admitted loads let go: the configured free, less the reserve.

    What programs other than Ollama hold (total - free in VRAMGATE_STATIC_GPUS) never changes.
    """
    p = inp.policy
    return tuple(
        GpuBudget(g.index, g.name, g.total, g.free, 0, 0, g.free - p.reserve, g.bandwidth, (), g.total - g.free)
        for g in inp.gpus.gpus
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

    The largest GPU takes the output layer and the projector (with its vision encoder's compute
    buffer); conservative by design.
    """
    remaining = max(0, fp.layers - 1)
    layer = max(1, largest_layer(fp))
    placed: list[tuple[int, int]] = []
    for i, b in enumerate(ordered):
        fixed = fp.compute_bytes + fixed_extra
        if i == 0:
            fixed += fp.output_layer_bytes + fp.output_bytes + fp.projector_bytes
            fixed += fp.vision_compute_bytes  # clip's buffer goes with the projector
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


def spill_layers(need: Need, budget: int, layers: int, sizer: Sizer) -> int:
    """How many layers would land in system RAM if Ollama were left to spill."""
    over = need.total - budget
    if over <= 0:
        return 0
    fp = sizer(need.num_ctx, need.parallel, need.num_batch)
    return min(layers, math.ceil(over / max(1, largest_layer(fp))))


def holders(inp: Inputs) -> tuple[Holder, ...]:
    """Who holds the memory: Ollama models by name, pending loads, other processes by user/pid."""
    out: list[Holder] = []
    for gpu in inp.gpus.gpus:
        for r in inp.residents:
            charge = resident_charge(r, gpu, inp.gpus, inp.policy)
            if charge:
                out.append(Holder("ollama", r.name, gpu.index, charge, busy=r.busy, user=r.owner,
                                  idle_s=None if r.busy else r.idle_s))
        for res in inp.reservations:
            for i, b in res.per_gpu:
                if i == gpu.index:
                    out.append(Holder("pending", res.model, gpu.index, b, busy=True, user=res.user))
        for p in gpu.processes:
            if not p.is_ollama:
                out.append(Holder("process", p.command or "?", gpu.index, p.used_bytes or 0, pid=p.pid, user=p.user))
    return tuple(sorted(out, key=lambda h: (h.gpu, -h.bytes)))


def _retry_after(inp: Inputs, key: str) -> int:
    """Short when Ollama's own busy models or in-flight loads are in the way, longer otherwise."""
    others_busy = any(r.busy and r.name != key for r in inp.residents) or bool(inp.reservations)
    return 10 if others_busy else 60


def _changes_load_options(opts: Mapping[str, Any]) -> bool:
    """Client options besides num_ctx/num_gpu that make Ollama reload: then the load is planned anew."""
    return any(k in opts for k in ("num_batch", "main_gpu", "use_mmap", "num_thread"))


def _forward_options(opts: Mapping[str, Any], num_ctx: int, num_gpu: int) -> dict[str, Any]:
    """The client's options with explicit num_ctx and num_gpu, so Ollama cannot pick others."""
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
