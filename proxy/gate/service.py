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
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from proxy.config.settings import Settings
from proxy.footprint import ModelDescription
from proxy.gate.admission import AdmissionRequest, Forward, Respond
from proxy.gate.answers import anthropic_error, cannot_judge, cannot_read, canonical, untouched
from proxy.gate.audit import Audit, load_options
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
)
from proxy.gate.pulls import PullGate
from proxy.gate.reservations import ReservationLedger
from proxy.gate.residency import Residency, Resident, VramgateLoad, model_key
from proxy.gate.sizing import model_facts, sizer_for, speed_for
from proxy.gpu.probe import GpuProbe
from proxy.gpu.snapshot import GpuSnapshot
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

log = structlog.get_logger("vramgate.gate")

NATIVE_LOAD = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"}
OPENAI_LOAD = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"}
TRANSCRIPTIONS = "/v1/audio/transcriptions"  # multipart; loads a model like /v1/chat/completions
PULLS = {"/api/pull", "/api/create"}
GATED = frozenset(NATIVE_LOAD | OPENAI_LOAD | PULLS | {TRANSCRIPTIONS})
LOAD_INT_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "num_thread")


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
        self.ledger = ReservationLedger()
        self._lock = asyncio.Lock()
        self.catalog = ModelCatalog(session, self.upstream, settings.probe_timeout)
        self.pulls = PullGate(session, self.registries, self.catalog, self.probe, self.policy, self.audit,
                              settings.pull_check_failure)
        self.spill_check = SpillCheck(session, self.upstream, settings.probe_timeout, self.residency, self._lock,
                                      self.probe, self.audit, settings.unload_on_spill)
        self._version = ""
        self._version_checked = 0.0
        self._tasks: set[asyncio.Task] = set()

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Raises what makes the gate unusable (the audit file); vramgate then exits saying why."""
        self.audit.check()
        snap = await asyncio.to_thread(self.probe.start)
        await self._refresh_version()
        log.info(
            "gate.started",
            gpu_source=snap.source,
            gpus=len(snap.gpus),
            gpu_problem=snap.problem,
            on_no_gpu=self.settings.on_no_gpu,
            ollama_version=self._version or "unknown",
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- Admission ----------------------------------------------------------------------------
    def inspects(self, method: str, path: str) -> bool:
        return method == "POST" and path in GATED

    async def admit(self, request: AdmissionRequest) -> Forward | Respond:
        """Read the body as Ollama's Go decoder will, then judge exactly that."""
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
            return await self.pulls.admit(request, parsed)
        return await self._admit_load(request, parsed)

    # --- loads --------------------------------------------------------------------------------
    async def _admit_load(self, request: AdmissionRequest, parsed: Parsed) -> Forward | Respond:
        route = "openai" if request.path.startswith("/v1/") else "native"
        name = parsed.model
        if not name.strip():
            return canonical(parsed, "passed no model")  # Ollama: 400 model is required
        if parsed.unload:
            # never refused; the memory it frees is read afresh on the next decision
            return Forward(parsed.body(), {"X-Vramgate-Decision": "unload"}, lambda status: self.probe.invalidate())
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
        desc = described.description
        assert desc is not None
        read_started = time.monotonic()  # Ollama's state and the GPUs, read before the lock
        try:
            ps_models = await ollama_client.ps(self.session, self.upstream, self.settings.probe_timeout)
        except OllamaUnavailable as exc:
            return self._cannot_judge(request, name, "what Ollama holds (/api/ps)", exc)
        snap = await asyncio.to_thread(self.probe.snapshot)
        if not self._version:
            await self._refresh_version()
        server = self._server(snap)
        async with self._lock:  # the decision and the reservation only: no I/O in here
            residents = self.residency.join(ps_models)
            inputs = self._inputs(name, route, options, desc, snap, server, residents,
                                  self.ledger.pending(read_started))
            self._report_expired()
            try:
                decision = decide(inputs)
            except Exception as exc:  # a model the estimator cannot size must not take the proxy down
                log.exception("gate.decision_failed", model=name, route=request.path)
                return self._cannot_judge(request, name, "a decision", exc, status=500)
            token = None
            if isinstance(decision, Admit) and decision.need is not None and decision.per_gpu:
                token = self.ledger.hold(Reservation(model_key(name), decision.per_gpu, decision.evicts))
            if isinstance(decision, Admit):
                self.residency.begin(name)
        return self._answer(request, route, name, options, parsed, decision, token, snap)

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

    def _inputs(self, name: str, route: str, options: dict[str, Any], desc: ModelDescription, snap: GpuSnapshot,
                server: ServerSettings, residents: list[Resident], pending: tuple[Reservation, ...]) -> Inputs:
        key = model_key(name)
        return Inputs(
            request=LoadRequest(key, route, options),  # type: ignore[arg-type]
            model=model_facts(key, desc),
            sizer=sizer_for(desc, server),
            server=server,
            gpus=snap,
            residents=tuple(residents),
            reservations=pending,
            policy=self.policy,
            correction=self.residency.correction(name),
            speed=speed_for(desc, self.settings.host_bandwidth),
        )

    def _answer(self, request: AdmissionRequest, route: str, name: str, options: dict[str, Any],
                parsed: Parsed, decision: Admit | Refuse, token: int | None,
                snap: GpuSnapshot) -> Forward | Respond:
        common = {"client": request.client, "model": name, "route": request.path,
                  "requested": load_options(options), "gpu_source": snap.source}
        if snap.problem:
            common["gpu_problem"] = snap.problem
        if isinstance(decision, Refuse):
            self.audit.event(
                "load.refused", **common, status=decision.status, reason=decision.reason,
                need_bytes=decision.need.total if decision.need else None,
                budget_bytes=[b.budget for b in decision.budgets], num_ctx=decision.requested_ctx,
                retry_after=decision.retry_after, explanation=refusal_text(decision),
            )
            body_bytes = refusal_body(decision)
            if request.path == "/v1/messages":
                body_bytes = anthropic_error(body_bytes)
            return Respond(decision.status, body_bytes, refusal_headers(decision))
        bound = parsed.bound
        if not decision.unchanged:
            bound = replace(bound, values={**bound.values, "options": decision.options})
        forwarded_body = encode(bound.rebuild())  # what Ollama reads is what was judged, nothing else
        event = {"rewritten": "load.rewritten", "sticky": "load.sticky", "resident": "load.resident"}.get(
            decision.reason, "load.admitted")
        fields: dict[str, Any] = dict(common, forwarded=load_options(decision.options), reason=decision.reason)
        if decision.need is not None:
            fields.update(need_bytes=decision.need.total, per_gpu=[list(p) for p in decision.per_gpu],
                          budget_bytes=[b.budget for b in decision.budgets])
        if decision.ctx_steps:
            fields.update(num_ctx_from=decision.requested_ctx, num_ctx_to=decision.num_ctx,
                          num_ctx_steps=num_ctx_steps(decision))
        if decision.note:
            fields["note"] = decision.note
        self.audit.event(event, **fields)
        on_response, on_done = self._callbacks(name, decision, token)
        return Forward(forwarded_body, admit_headers(decision), on_response, on_done)

    def _callbacks(self, name: str, decision: Admit, token: int | None) -> tuple[Any, Any]:
        """``on_response``: Ollama answered, so the load is over (mark its reservation answered, check
        it landed on the GPU); ``on_done``: the request is over, the model is idle again."""

        def on_done() -> None:
            self.residency.end(name)

        def on_response(status: int) -> None:
            if token is not None:
                self.ledger.answered(token)
            self.probe.invalidate()
            if status == 200 and decision.need is not None and not decision.unchanged:
                load = VramgateLoad(decision.num_ctx or 0, int(decision.options.get("num_gpu", -1)),
                                    decision.per_gpu, decision.need.predicted_bytes)
                self.residency.record_load(name, load)
            if status == 200 and decision.need is not None:
                self._spawn(self.spill_check.run(name, decision))

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
        decision = await self._admit_load(request, parsed)
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
