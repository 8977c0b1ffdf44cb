"""The fit gate: the ``Admission`` that checks every model load and pull against GPU memory.

This is the imperative shell around ``proxy.decision``: it parses the few routes that can load or
download a model, gathers the inputs (GPU snapshot, ``/api/ps``, the model's ``/api/show``, the
upstream version), asks the pure decision under one lock (so concurrent loads never spend the
same memory twice: admitted loads hold a reservation until Ollama answered), and turns the answer
into a forwarded body or a refusal. After an admitted load it checks ``/api/ps`` (closed loop).

Fail closed: a load vramgate cannot judge (Ollama's /api/show or /api/ps failing or timing out, a
model it cannot size, a body Go would accept but vramgate cannot read) is refused with a clear
error and never reaches Ollama. What Ollama itself refuses before loading anything (a body its
decoder rejects, an unknown model) still goes to Ollama untouched, so its own error comes back.

No I/O under the admission lock: Ollama's state and the GPUs are read before it; the lock covers
only the decision and the reservation (``proxy.reservations`` says why that is safe).

Who asks matters once a policy file exists (``proxy.policy``): each user's rules allow or deny the
model and the store operations, cap ``num_ctx`` and ``keep_alive``, and bound what their models may
hold (``max_vram``, ``proxy.gate.sharing``). A load that would fit once others let go waits in a
queue (``proxy.gate.queue``) instead of being bounced.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from proxy.config.settings import Settings
from proxy.footprint import ModelDescription
from proxy.gate.admission import AdmissionRequest, Forward, Respond
from proxy.gate.answers import anthropic_error, cannot_judge, cannot_read, canonical, untouched
from proxy.gate.audit import Audit, asking, load_options
from proxy.gate.catalog import ModelCatalog, ModelNotUnderstood
from proxy.gate.closed_loop import SpillCheck
from proxy.gate.decision import (
    Admit,
    Inputs,
    LoadRequest,
    Policy,
    Refuse,
    Reservation,
    decide,
)
from proxy.gate.explanation import (
    admit_headers,
    num_ctx_steps,
    refusal_body,
    refusal_headers,
    refusal_text,
    waiting_text,
)
from proxy.gate.observed import LoadConfig, ObservedStore, store_path
from proxy.gate.policy_answers import (
    model_denied_text,
    policy_answer,
    queue_full_text,
    queue_timeout_answer,
    unload_denied_text,
)
from proxy.gate.policy_files import PolicyFiles
from proxy.gate.pulls import PullGate
from proxy.gate.queue import POLL, LoadQueue, Waiter
from proxy.gate.reservations import ReservationLedger
from proxy.gate.residency import Residency, Resident, VramgateLoad, model_key
from proxy.gate.sharing import Evictable, evictable, quota_for
from proxy.gate.sizing import model_facts, rules_for, sizer_for, speed_for
from proxy.gate.store_ops import screen_store_operation
from proxy.gpu.probe import GpuProbe
from proxy.gpu.snapshot import GpuSnapshot
from proxy.identity.identify import Identifier, Identity
from proxy.ollama import client as ollama_client
from proxy.ollama.client import ModelUnknown, OllamaUnavailable
from proxy.ollama.gojson import GoObject, GoRejects, Unreadable, encode
from proxy.ollama.multipart import NotMultipart, UnreadableMultipart, multipart_fields
from proxy.ollama.registry import (
    Registries,
)
from proxy.ollama.requests import (
    InvalidOption,
    Parsed,
    Rejection,
    option_int,
    read_request,
    transcription_model,
)
from proxy.ollama.versions import ServerSettings, server_settings
from proxy.policy.resolve import UserRules, cap_keep_alive, format_go_duration, model_allowed

log = structlog.get_logger("vramgate.gate")

NATIVE_LOAD = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"}
OPENAI_LOAD = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"}
TRANSCRIPTIONS = "/v1/audio/transcriptions"  # multipart; loads a model like /v1/chat/completions
PULLS = {"/api/pull", "/api/create"}
GATED = frozenset(NATIVE_LOAD | OPENAI_LOAD | PULLS | {TRANSCRIPTIONS})
LOAD_INT_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "num_thread")
KEEP_ALIVE_ROUTES = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"}  # the rest carry none


@dataclass(frozen=True)
class _Ask:
    """One load being judged: the request, the model, and who asks under which rules."""

    request: AdmissionRequest
    route: str  # "native" | "openai"
    name: str
    options: dict[str, Any]
    desc: ModelDescription
    who: Identity
    rules: UserRules | None
    digest: str = ""  # the model's manifest digest (/api/tags): observed sizes are kept per digest

    @property
    def priority(self) -> int:
        return self.rules.priority if self.rules is not None else 0


@dataclass(frozen=True)
class _Judged:
    decision: Admit | Refuse
    token: int | None
    snap: GpuSnapshot
    evictable: dict[str, Evictable]


class _HeldBack:
    """It would fit, but loads of the same or higher priority are waiting: it queues behind them."""


HELD_BACK = _HeldBack()


class Gate:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, probe: GpuProbe | None = None,
                 audit: Audit | None = None) -> None:
        self.settings = settings
        self.session = session
        self.upstream = settings.upstream
        self.policy = Policy.from_settings(settings)
        self.registries = Registries.from_settings(settings)
        self.probe = probe or GpuProbe(settings)
        self.audit = audit or Audit(settings.audit_file)
        self.residency = Residency()
        self.observed = ObservedStore(store_path(settings.state_dir))  # opened by start()
        self.ledger = ReservationLedger()
        self._lock = asyncio.Lock()
        self.catalog = ModelCatalog(session, self.upstream, settings.probe_timeout)
        self.pulls = PullGate(session, self.registries, self.catalog, self.probe, self.policy, self.audit,
                              settings.pull_check_failure)
        self.spill_check = SpillCheck(session, self.upstream, settings.probe_timeout, self.residency, self._lock,
                                      self.probe, self.audit, settings.unload_on_spill, self.observed)
        self._version = ""
        self._version_checked = 0.0
        self._tasks: set[asyncio.Task] = set()
        self.queue = LoadQueue()
        self.identifier = Identifier(loopback=settings.identify_loopback)
        self.files = PolicyFiles(settings.policy_file, settings.tokens_file, self.identifier, self.queue.wake_all)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Raises what makes the gate unusable (the audit file, an invalid policy or tokens file);
        vramgate then exits saying why."""
        self.audit.check()
        self.files.load()
        if self.settings.policy_file is not None or self.settings.tokens_file is not None:
            self._spawn(self.files.watch())
        snap = await asyncio.to_thread(self.probe.start)
        await asyncio.to_thread(self.observed.open)  # never raises: a failing file is one warning
        self.residency.learned.update(self.observed.corrections())  # what earlier runs learnt
        await self._refresh_version()
        log.info(
            "gate.started",
            gpu_source=snap.source,
            gpus=len(snap.gpus),
            gpu_problem=snap.problem,
            on_no_gpu=self.settings.on_no_gpu,
            ollama_version=self._version or "unknown",
            policy_file=str(self.settings.policy_file) if self.files.active else None,
        )

    def reload(self) -> None:
        """SIGHUP: reread the policy and tokens files now."""
        self.files.reload("SIGHUP")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.observed.close()

    # --- Admission ----------------------------------------------------------------------------
    def inspects(self, method: str, path: str) -> bool:
        return method == "POST" and path in GATED

    def identify(self, authorization: str | None, peer: tuple[str, int] | None, ours: tuple[str, int] | None,
                 connection: object | None = None) -> Identity:
        return self.identifier.identify(authorization, peer, ours, connection)

    def screen(self, method: str, path: str, who: Identity) -> Respond | None:
        """Before the body is read: a store operation the user's policy does not allow is refused."""
        rules = self.files.rules_for(who)
        if rules is None:
            return None
        refused = screen_store_operation(method, path, who, rules)
        if refused is not None:
            status, text, reason, rule = refused
            self.audit.event("request.refused", user=who.user, identity=who.source, route=path, method=method,
                             status=status, reason=reason, rule=rule, explanation=text)
            return policy_answer(path, status, text, {"reason": reason, "rule": rule, "user": who.user})
        return None

    async def admit(self, request: AdmissionRequest) -> Forward | Respond:
        """Read the body as Ollama's Go decoder will, then judge exactly that."""
        who = request.identity or Identity(request.client, "address", request.client)
        asking.set((who.user, who.source))  # every decision event below carries who asked
        if request.path == TRANSCRIPTIONS:
            return await self._admit_transcription(request)
        if request.path.startswith("/v1/") and request.headers.get("Content-Encoding", "") == "zstd":
            # Ollama decompresses zstd bodies on /v1 (and only there); vramgate does not read them
            return cannot_read(request, "a zstd-compressed body: send it uncompressed")
        parsed = read_request(request.path, request.body)
        if isinstance(parsed, GoRejects):  # Ollama's decoder refuses it too: its own error comes back
            return untouched(request, "passed: Ollama rejects this body")
        if isinstance(parsed, Unreadable):  # Go would accept it, vramgate cannot read it: fail closed
            return cannot_read(request, str(parsed))
        if parsed.rejected is not None:  # Ollama answers it before loading or pulling anything
            return untouched(request, f"passed: Ollama answers {parsed.rejected.status}")
        if request.path in PULLS:
            rules = self.files.rules_for(who)
            # the name pulled or created, and what a create is made from (it may be pulled too)
            names = [parsed.model, str(parsed.bound.values.get("from", "")) if request.path == "/api/create" else ""]
            for name in filter(str.strip, names):
                if rules is not None and not (allowed := model_allowed(rules, name))[0]:
                    return self._denied_model(request, who, name, allowed[1])
            return await self.pulls.admit(request, parsed)
        return await self._admit_load(request, parsed, who)

    # --- loads --------------------------------------------------------------------------------
    async def _admit_load(self, request: AdmissionRequest, parsed: Parsed, who: Identity) -> Forward | Respond:
        route = "openai" if request.path.startswith("/v1/") else "native"
        name = parsed.model
        if not name.strip():
            return canonical(parsed, "passed no model")  # Ollama: 400 model is required
        rules = self.files.rules_for(who)
        if rules is not None and not (allowed := model_allowed(rules, name))[0]:
            return self._denied_model(request, who, name, allowed[1])
        if parsed.unload:
            return self._unload(request, parsed, who, rules)
        options = decision_options(parsed.options)
        try:
            described = await self.catalog.describe(name)
        except ModelUnknown:
            return canonical(parsed, "passed unknown model")  # Ollama answers with its own 404/400
        except OllamaUnavailable as exc:
            return self._cannot_judge(request, name, "its description (/api/show)", exc)
        except ModelNotUnderstood as exc:
            return self._cannot_judge(request, name, "a footprint for it", exc, status=501)
        if described.remote_host:
            return canonical(parsed, f"passed remote model ({described.remote_host})")
        assert described.description is not None
        ask = _Ask(request, route, name, options, described.description, who, rules, described.digest.partition("@")[0])
        judged = await self._judge(ask, None)
        if isinstance(judged, Respond):
            return judged
        if judged is HELD_BACK or (isinstance(judged, _Judged) and isinstance(judged.decision, Refuse)
                                   and judged.decision.retryable and self.settings.queue_timeout > 0):
            judged = await self._wait_in_queue(ask, judged if isinstance(judged, _Judged) else None)
            if isinstance(judged, Respond):
                return judged
        assert isinstance(judged, _Judged)
        if isinstance(judged.decision, Admit) and judged.decision.evicts and self.files.active:
            try:
                await self._evict(ask, judged)
            except asyncio.CancelledError:  # the client left: nothing will be forwarded, release the load
                self.residency.end(ask.name)
                if judged.token is not None:
                    self.ledger.answered(judged.token)
                raise
        return self._answer(ask, parsed, judged)

    async def _judge(self, ask: _Ask, waiter: Waiter | None) -> _Judged | _HeldBack | Respond:
        """Read Ollama's state and the GPUs, then decide (and reserve) under the lock."""
        read_started = time.monotonic()  # Ollama's state and the GPUs, read before the lock
        try:
            ps_models = await ollama_client.ps(self.session, self.upstream, self.settings.probe_timeout)
        except OllamaUnavailable as exc:
            return self._cannot_judge(ask.request, ask.name, "what Ollama holds (/api/ps)", exc)
        snap = await asyncio.to_thread(self.probe.snapshot)
        if not self._version:
            await self._refresh_version()
        server = self._server(snap)
        async with self._lock:  # the decision and the reservation only: no I/O in here
            residents = tuple(self.residency.join(ps_models))
            pending = self.ledger.pending(read_started)
            may_evict = self._evictable(ask, residents, pending)
            inputs = self._inputs(ask, snap, server, residents, pending, may_evict)
            self._report_expired()
            try:
                decision = decide(inputs)
            except Exception as exc:  # a model the estimator cannot size must not take the proxy down
                log.exception("gate.decision_failed", model=ask.name, route=ask.request.path)
                return self._cannot_judge(ask.request, ask.name, "a decision", exc, status=500)
            if isinstance(decision, Admit) and decision.need is not None and self.queue.holds_back(waiter, ask.priority):
                return HELD_BACK
            token = None
            if isinstance(decision, Admit) and decision.need is not None and decision.per_gpu:
                token = self.ledger.hold(Reservation(model_key(ask.name), decision.per_gpu, decision.evicts,
                                                     user=ask.who.user))
            if isinstance(decision, Admit):
                self.residency.begin(ask.name, ask.who.user)
        return _Judged(decision, token, snap, may_evict or {})

    async def _wait_in_queue(self, ask: _Ask, first: _Judged | None) -> _Judged | Respond:
        """Wait for room, first in line by priority then arrival; judged again whenever memory may
        have come free. Every wait, admission after a wait and timeout is a decision event."""
        user, rules = ask.who.user, ask.rules
        limit = rules.max_queued if rules is not None and rules.max_queued is not None else self.settings.max_queued
        if self.queue.count(user) >= limit:
            rule = rules.rule("max_queued") if rules is not None and rules.max_queued is not None else "max_queued"
            text = queue_full_text(user, ask.name, limit, rule)
            self.audit.event("load.refused", model=ask.name, route=ask.request.path, status=429,
                             reason="queue_full", rule=rule, explanation=text)
            return policy_answer(ask.request.path, 429, text, {"reason": "queue_full", "rule": rule}, retry_after=10)
        waiter = self.queue.join(user, ask.name, ask.priority)
        last = first.decision if first is not None and isinstance(first.decision, Refuse) else None
        self.audit.event("load.queued", model=ask.name, route=ask.request.path, priority=ask.priority,
                         position=self.queue.position(waiter), reason=last.reason if last else "others_waiting",
                         explanation=waiting_text(last) if last else "loads of the same or higher priority wait")
        deadline = time.monotonic() + self.settings.queue_timeout
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                await self.queue.wait(waiter, min(remaining, POLL))
                if not self.queue.is_first(waiter):
                    continue
                judged = await self._judge(ask, waiter)
                if isinstance(judged, Respond):
                    return judged
                if isinstance(judged, _HeldBack):
                    continue
                if isinstance(judged.decision, Refuse) and judged.decision.retryable:
                    last = judged.decision
                    continue
                self.audit.event("load.dequeued", model=ask.name, route=ask.request.path,
                                 waited_s=round(self.queue.waited(waiter), 3),
                                 outcome="admitted" if isinstance(judged.decision, Admit) else "refused")
                return judged
            return self._queue_timeout(ask, waiter, last)
        finally:
            self.queue.leave(waiter)

    def _queue_timeout(self, ask: _Ask, waiter: Waiter, last: Refuse | None) -> Respond:
        waited, position = self.queue.waited(waiter), self.queue.position(waiter)
        if last is None:  # it always fitted but others ahead of it never went
            text = (f"vramgate waited {waited:.0f} s in the queue (position {position}) behind loads of the same or"
                    " higher priority, and they did not go in time. Retry in a moment.")
            answer = policy_answer(ask.request.path, 503, text, {"reason": "queue_timeout", "waited_s": round(waited, 1)},
                                   retry_after=10)
        else:
            answer, text = queue_timeout_answer(ask.request.path, last, waited, position)
        self.audit.event("load.queue_timeout", model=ask.name, route=ask.request.path, status=503,
                         reason="queue_timeout", waited_s=round(waited, 1), blocked_by=last.reason if last else None,
                         explanation=text)
        return answer

    async def _evict(self, ask: _Ask, judged: _Judged) -> None:
        """Unload the idle models this load counts on (``keep_alive: 0``), so Ollama does not pick
        others itself. Each is a decision event with its reason."""
        decision = judged.decision
        assert isinstance(decision, Admit)
        for name in sorted(decision.evicts):
            why = judged.evictable.get(name)
            try:
                await ollama_client.unload(self.session, self.upstream, name)
            except OllamaUnavailable as exc:
                log.warning("gate.evict_failed", model=name, error=str(exc))
                continue
            self.audit.event("load.evicted", model=name, owner=why.owner if why else None,
                             reason=why.why if why else "idle", for_user=ask.who.user, for_model=ask.name)
        self.probe.invalidate()

    def _evictable(self, ask: _Ask, residents: tuple[Resident, ...],
                   pending: tuple[Reservation, ...]) -> dict[str, Evictable] | None:
        """Whose idle models this load may push out (None: no policy, Ollama's own eviction applies)."""
        if ask.rules is None:
            return None

        def rules_of(user: str) -> UserRules:
            return self.files.rules_of_user(user) or ask.rules  # type: ignore[return-value]

        return evictable(ask.who.user, ask.rules, residents, pending, rules_of, self.settings.cuda_context)

    def _unload(self, request: AdmissionRequest, parsed: Parsed, who: Identity, rules: UserRules | None) -> Forward | Respond:
        """Never refused by memory; once a policy exists, only its owner, a user of it or an admin may
        unload a model someone else loaded."""
        owner = self.residency.owner(parsed.model)
        users = self.residency.users.get(model_key(parsed.model), set())
        if rules is not None and not rules.is_admin and owner is not None and who.user not in users | {owner}:
            text = unload_denied_text(who.user, parsed.model, owner)
            self.audit.event("load.refused", model=parsed.model, route=request.path, status=403,
                             reason="unload_denied", owner=owner, explanation=text)
            return policy_answer(request.path, 403, text, {"reason": "unload_denied", "owner": owner})

        def unloaded(status: int) -> None:
            self.probe.invalidate()
            self.queue.wake_all()

        return Forward(parsed.body(), {"X-Vramgate-Decision": "unload"}, unloaded)

    def _denied_model(self, request: AdmissionRequest, who: Identity, model: str, rule: str) -> Respond:
        text = model_denied_text(who.user, model, rule)
        self.audit.event("load.refused" if request.path not in PULLS else "pull.refused", model=model,
                         route=request.path, status=403, reason="model_denied", rule=rule, explanation=text)
        return policy_answer(request.path, 403, text, {"reason": "model_denied", "rule": rule, "user": who.user})

    def _cannot_judge(self, request: AdmissionRequest, name: str, what: str, exc: BaseException,
                      status: int = 503) -> Respond:
        """Fail closed: a load vramgate cannot judge never reaches Ollama."""
        answer, text = cannot_judge(request, name, what, str(exc) or type(exc).__name__, status)
        self.audit.event("load.refused", client=request.client, model=name, route=request.path, status=status,
                         reason="cannot_judge", explanation=text)
        return answer

    def _report_expired(self) -> None:
        for res in self.ledger.expired:
            log.warning("gate.reservation_expired", model=res.model)
        self.ledger.expired.clear()

    def _inputs(self, ask: _Ask, snap: GpuSnapshot, server: ServerSettings, residents: tuple[Resident, ...],
                pending: tuple[Reservation, ...], may_evict: dict[str, Evictable] | None) -> Inputs:
        key = model_key(ask.name)
        policy, rules = self.policy, ask.rules
        quota = ctx_cap = None
        if rules is not None:
            if rules.allow_partial_offload is not None:
                policy = replace(policy, allow_partial_offload=rules.allow_partial_offload)
            quota = quota_for(ask.who.user, rules, key, residents, pending, policy.cuda_context)
            if rules.max_num_ctx is not None:
                ctx_cap = (rules.max_num_ctx, rules.rule("max_num_ctx"))
        return Inputs(
            request=LoadRequest(key, ask.route, ask.options),  # type: ignore[arg-type]
            model=model_facts(key, ask.desc),
            sizer=sizer_for(ask.desc, server),
            server=server,
            gpus=snap,
            residents=residents,
            reservations=pending,
            policy=policy,
            correction=self.residency.correction(ask.name, ask.digest),
            speed=speed_for(ask.desc, self.settings.host_bandwidth),
            quota=quota,
            evictable=None if may_evict is None else frozenset(may_evict),
            ctx_cap=ctx_cap,
        )

    def _answer(self, ask: _Ask, parsed: Parsed, judged: _Judged) -> Forward | Respond:
        """The decision as the client gets it, logged with what it was asked and why."""
        request, snap = ask.request, judged.snap
        common = {"client": request.client, "model": ask.name, "route": request.path,
                  "requested": load_options(ask.options), "gpu_source": snap.source}
        if snap.problem:
            common["gpu_problem"] = snap.problem
        if isinstance(judged.decision, Refuse):
            return self._refused(ask, judged.decision, common)
        return self._forwarded(ask, parsed, judged, common)

    def _refused(self, ask: _Ask, decision: Refuse, common: dict[str, Any]) -> Respond:
        fields: dict[str, Any] = {}
        if decision.quota is not None:
            fields.update(rule=decision.quota.rule, quota_bytes=decision.quota.limit, held_bytes=decision.quota.held)
        if decision.ctx_cap is not None:
            fields.update(rule=decision.ctx_cap[1])
        self.audit.event(
            "load.refused", **common, status=decision.status, reason=decision.reason,
            need_bytes=decision.need.total if decision.need else None,
            budget_bytes=[b.budget for b in decision.budgets], num_ctx=decision.requested_ctx,
            retry_after=decision.retry_after, explanation=refusal_text(decision), **fields,
        )
        body_bytes = refusal_body(decision)
        if ask.request.path == "/v1/messages":
            body_bytes = anthropic_error(body_bytes)
        return Respond(decision.status, body_bytes, refusal_headers(decision))

    def _forwarded(self, ask: _Ask, parsed: Parsed, judged: _Judged, common: dict[str, Any]) -> Forward:
        """The body Ollama gets is the one judged, re-encoded: its options and keep_alive as decided."""
        decision = judged.decision
        assert isinstance(decision, Admit)
        values = dict(parsed.bound.values)
        if not decision.unchanged:
            values["options"] = decision.options
        headers = dict(admit_headers(decision))
        fields = dict(common, forwarded=load_options(decision.options), reason=decision.reason)
        keep_alive = self._foreign_keep_alive(ask, parsed) or self._capped_keep_alive(ask, parsed)
        if keep_alive is not None:
            values["keep_alive"] = keep_alive[0]
            headers["X-Vramgate-Keep-Alive"] = keep_alive[1]
            fields.update(keep_alive_from=_shown(parsed.keep_alive), keep_alive_to=keep_alive[0],
                          keep_alive_rule=keep_alive[2])
        forwarded_body = encode(replace(parsed.bound, values=values).rebuild())
        event = {"rewritten": "load.rewritten", "sticky": "load.sticky", "resident": "load.resident"}.get(
            decision.reason, "load.admitted")
        if decision.need is not None:
            fields.update(need_bytes=decision.need.total, per_gpu=[list(p) for p in decision.per_gpu],
                          budget_bytes=[b.budget for b in decision.budgets])
        if decision.ctx_steps:
            fields.update(num_ctx_from=decision.requested_ctx, num_ctx_to=decision.num_ctx,
                          num_ctx_steps=num_ctx_steps(decision))
        if decision.note:
            fields["note"] = decision.note
        self.audit.event(event, **fields)
        on_response, on_done = self._callbacks(ask, decision, judged.token, self._load_config(decision, judged.snap))
        return Forward(forwarded_body, headers, on_response, on_done)

    def _capped_keep_alive(self, ask: _Ask, parsed: Parsed) -> tuple[Any, str, str] | None:
        """``max_keep_alive``: a longer or negative keep_alive goes to Ollama as the cap (Ollama reads
        keep_alive from every request, so this is the only way to stop one user pinning a model)."""
        rules = ask.rules
        if rules is None or rules.max_keep_alive_ns is None or ask.request.path not in KEEP_ALIVE_ROUTES:
            return None
        value, rewritten = cap_keep_alive(parsed.keep_alive, rules.max_keep_alive_ns)
        if not rewritten:
            return None
        rule = rules.rule("max_keep_alive")
        return value, f"{_shown(parsed.keep_alive)} -> {format_go_duration(rules.max_keep_alive_ns)} (policy {rule})", rule

    def _foreign_keep_alive(self, ask: _Ask, parsed: Parsed) -> tuple[Any, str, str] | None:
        """Once a policy exists, a non-admin's keep_alive does not change a model someone else loaded:
        ``keep_alive: 0`` (or ``"1s"``) on a shared model would unload it from under its owner. Sent
        as null, which Ollama reads as absent: the model keeps the duration it has."""
        rules = ask.rules
        if rules is None or rules.is_admin or parsed.keep_alive is None or ask.request.path not in KEEP_ALIVE_ROUTES:
            return None
        owner = self.residency.owner(ask.name)
        if owner is None or owner == ask.who.user:
            return None
        return None, f"{_shown(parsed.keep_alive)} -> kept ({owner}'s model)", f"owner {owner}"

    def _load_config(self, decision: Admit, snap: GpuSnapshot) -> LoadConfig | None:
        """What the observed size of this load depends on, for the observation store."""
        if decision.need is None:
            return None
        server = self._server(snap)
        return LoadConfig(decision.num_ctx or decision.need.num_ctx, decision.need.num_batch, decision.need.parallel,
                          server.kv_cache_type, server.flash_attention, rules_for(server).name)

    def _callbacks(self, ask: _Ask, decision: Admit, token: int | None,
                   config: LoadConfig | None = None) -> tuple[Any, Any]:
        """``on_response``: Ollama answered, so the load is over (mark its reservation answered, record
        who owns it, check it landed on the GPU); ``on_done``: the request is over, the model is idle again."""
        name, user = ask.name, ask.who.user

        def on_done() -> None:
            self.residency.end(name)
            self.queue.wake_all()

        def on_response(status: int) -> None:
            if token is not None:
                self.ledger.answered(token)
            self.probe.invalidate()
            self.queue.wake_all()
            if status == 200 and decision.need is not None:
                self.residency.record_owner(name, user)
            if status == 200 and decision.need is not None and not decision.unchanged:
                load = VramgateLoad(decision.num_ctx or 0, int(decision.options.get("num_gpu", -1)),
                                    decision.per_gpu, decision.need.predicted_bytes)
                self.residency.record_load(name, load)
            if status == 200 and decision.need is not None:
                self._spawn(self.spill_check.run(name, decision, config))

        return on_response, on_done

    # --- pulls --------------------------------------------------------------------------------
    # --- /v1/audio/transcriptions -------------------------------------------------------------
    async def _admit_transcription(self, request: AdmissionRequest) -> Forward | Respond:
        """Multipart: Ollama takes ``FormValue("model")``, the URL query's first value before the
        form's. vramgate judges that model and forwards the request with ``model=<it>`` put first
        in the query, so Ollama reads the model that was judged whatever the multipart says."""
        try:
            fields = multipart_fields(request.headers.get("Content-Type", ""), request.body)
        except NotMultipart:
            return _model_first(untouched(request, "passed: Ollama rejects this body"), "", request.query)
        except UnreadableMultipart as exc:
            return cannot_read(request, f"a multipart body it cannot read ({exc})")
        model = transcription_model(request.query, fields)
        if isinstance(model, Rejection):
            # an empty model first in the query: whatever Go's multipart reader would find, it refuses
            return _model_first(untouched(request, f"passed: Ollama answers {model.status}"), "", request.query)
        parsed = read_request("/v1/chat/completions", encode(GoObject([("model", model)])))
        assert not isinstance(parsed, (GoRejects, Unreadable))
        who = request.identity or Identity(request.client, "address", request.client)
        decision = await self._admit_load(request, parsed, who)
        if isinstance(decision, Respond):
            return decision
        return _model_first(replace(decision, body=request.body), model, request.query)

    async def _refresh_version(self) -> None:
        """Ollama's version picks its sizing rules; asked at start and again while unknown (every 30 s)."""
        if time.monotonic() - self._version_checked < 30 and self._version_checked:
            return
        self._version_checked = time.monotonic()
        try:
            self._version = await ollama_client.version(self.session, self.upstream, self.settings.probe_timeout)
        except OllamaUnavailable as exc:
            log.warning("ollama.version_unavailable", upstream=self.upstream, error=str(exc))

    def _server(self, snap: GpuSnapshot) -> ServerSettings:
        fa_ok = all(g.compute_capability is None or g.compute_capability >= (6, 0) for g in snap.gpus)
        return server_settings(self.settings, self._version, fa_ok)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def build_admission(settings: Settings, session: aiohttp.ClientSession) -> Gate:
    return Gate(settings, session)


# --- parsing helpers ----------------------------------------------------------------------------


def _shown(raw: Any) -> str:
    """A keep_alive value as the client wrote it, for headers and the log."""
    return "absent" if raw is None else str(raw)


def _model_first(forward: Forward, model: str, query: str) -> Forward:
    """Put ``model=<model>`` first in the query: Go's FormValue reads it before anything else."""
    return replace(forward, query="model=" + quote(model, safe="") + ("&" + query if query else ""))


def decision_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The client's options with the load-time ones as Ollama's FromMap reads them (ints, null =
    unset); the rest kept as sent, to be forwarded unchanged."""
    out = dict(options or {})
    for key in LOAD_INT_OPTIONS:
        value = option_int(out, key) if key in out else None
        if value is None or isinstance(value, InvalidOption):  # (invalid ones were answered by Ollama)
            out.pop(key, None)
        else:
            out[key] = value
    return out
