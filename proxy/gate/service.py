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
import json
import time
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog

from proxy.config.settings import Settings
from proxy.footprint import ModelDescription, description_from_show
from proxy.gate.admission import AdmissionRequest, Forward, Respond
from proxy.gate.audit import Audit, load_options
from proxy.gate.decision import (
    Admit,
    Inputs,
    LoadRequest,
    Policy,
    Refuse,
    Reservation,
    check_pull,
    decide,
)
from proxy.gate.explanation import (
    admit_headers,
    pull_refusal_body,
    refusal_body,
    refusal_headers,
    refusal_text,
)
from proxy.gate.reservations import ReservationLedger
from proxy.gate.residency import Residency, Resident, VramgateLoad, model_key
from proxy.gate.sizing import model_facts, sizer_for, speed_for
from proxy.gpu.probe import GpuProbe
from proxy.gpu.snapshot import GpuSnapshot
from proxy.ollama import client as ollama_client
from proxy.ollama.client import ModelUnknown, OllamaUnavailable
from proxy.ollama.errors import error_body
from proxy.ollama.gojson import GoObject, GoRejects, Unreadable, encode
from proxy.ollama.model_name import create_pull_name, parse_pull_name
from proxy.ollama.multipart import NotMultipart, UnreadableMultipart, multipart_fields
from proxy.ollama.registry import (
    ManifestSizes,
    NotAllowed,
    NotFound,
    Registries,
    Unavailable,
    read_manifest,
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
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


@dataclass
class _Described:
    digest: str
    description: ModelDescription | None  # None for a remote model
    remote_host: str = ""  # a model Ollama runs elsewhere (a cloud model): no local memory


class ModelNotUnderstood(Exception):
    """/api/show describes a model vramgate cannot size."""


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
        self._described: dict[str, _Described] = {}
        self._tags: tuple[float, dict[str, str]] = (0.0, {})
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
            return _cannot_read(request, "a zstd-compressed body: send it uncompressed")
        parsed = read_request(request.path, request.body)
        if isinstance(parsed, GoRejects):  # Ollama's decoder refuses it too: its own error comes back
            return _untouched(request, "passed: Ollama rejects this body")
        if isinstance(parsed, Unreadable):  # Go would accept it, vramgate cannot read it: fail closed
            return _cannot_read(request, str(parsed))
        if parsed.rejected is not None:  # Ollama answers it before loading or pulling anything
            return _untouched(request, f"passed: Ollama answers {parsed.rejected.status}")
        if request.path in PULLS:
            return await self._admit_pull(request, parsed)
        return await self._admit_load(request, parsed)

    # --- loads --------------------------------------------------------------------------------
    async def _admit_load(self, request: AdmissionRequest, parsed: Parsed) -> Forward | Respond:
        route = "openai" if request.path.startswith("/v1/") else "native"
        name = parsed.model
        if not name.strip():
            return _forward(parsed, "passed no model")  # Ollama: 400 model is required
        if parsed.unload:
            # never refused; the memory it frees is read afresh on the next decision
            return Forward(parsed.body(), {"X-Vramgate-Decision": "unload"}, lambda status: self.probe.invalidate())
        options = decision_options(parsed.options)
        try:
            described = await self._describe(name)
        except ModelUnknown:
            return _forward(parsed, "passed unknown model")  # Ollama answers with its own 404/400
        except OllamaUnavailable as exc:
            return self._cannot_judge(request, name, "its description (/api/show)", exc)
        except ModelNotUnderstood as exc:
            return self._cannot_judge(request, name, "a footprint for it", exc, status=501)
        if described.remote_host:
            return _forward(parsed, f"passed remote model ({described.remote_host})")
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
        detail = str(exc) or type(exc).__name__
        text = (f"vramgate refused to load {name}: it could not get {what} to check that the model fits the GPU"
                f" ({detail}). Nothing was loaded.")
        text += " Retry in a moment." if status == 503 else " Ask the admin to report it with vramgate's log."
        self.audit.event("load.refused", client=request.client, model=name, route=request.path, status=status,
                         reason="cannot_judge", explanation=text)
        headers = {**JSON_HEADERS, "X-Vramgate-Decision": f"refused {status} cannot_judge"}
        if status == 503:
            headers["Retry-After"] = "5"
        body = json.dumps({"error": text}).encode()
        if request.path.startswith("/v1/"):
            body = json.dumps({"error": {"message": text, "type": "api_error", "param": None, "code": None}}).encode()
        return Respond(status, body, headers)

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
                body_bytes = _anthropic_error(body_bytes)
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
        if decision.rewritten:
            fields.update(num_ctx_from=decision.requested_ctx, num_ctx_to=decision.num_ctx)
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
                self._spawn(self._check_spill(name, decision))

        return on_response, on_done

    async def _check_spill(self, name: str, decision: Admit) -> None:
        """Closed loop: did the admitted load really land entirely on the GPU?"""
        assert decision.need is not None
        await asyncio.sleep(0.05)
        try:
            ps_models = await ollama_client.ps(self.session, self.upstream, self.settings.probe_timeout)
        except OllamaUnavailable as exc:
            log.warning("gate.closed_loop_failed", model=name, error=str(exc))
            return
        async with self._lock:
            residents = self.residency.join(ps_models)
        r = next((r for r in residents if r.name == model_key(name)), None)
        if r is None:
            return
        predicted = decision.need.predicted_bytes
        self.residency.observe(name, r.size, predicted)
        if r.size_vram >= r.size:
            return
        self.audit.event(
            "load.spilled", model=name, predicted_bytes=predicted, observed_size=r.size,
            observed_size_vram=r.size_vram, num_ctx=decision.num_ctx, unloading=self.settings.unload_on_spill,
        )
        if self.settings.unload_on_spill:
            try:
                await ollama_client.unload(self.session, self.upstream, name)
            except OllamaUnavailable as exc:
                log.warning("gate.unload_failed", model=name, error=str(exc))
            await asyncio.sleep(0.5)  # drivers report freed memory with a lag
            self.probe.invalidate()

    # --- pulls --------------------------------------------------------------------------------
    async def _admit_pull(self, request: AdmissionRequest, parsed: Parsed) -> Forward | Respond:
        values = parsed.bound.values
        if request.path == "/api/create":
            source = values.get("from", "")
            name = create_pull_name(source, values.get("remote_host", "")) if source.strip() else None
            if name is None or await self._is_local(source):
                return _forward(parsed, "passed")  # nothing to download (or Ollama refuses the name)
            name_text, insecure = source, False  # create's implicit pull never uses insecure
        else:
            name_text = parsed.model
            name = parse_pull_name(name_text)
            if name is None:
                return _forward(parsed, "passed")  # Ollama answers 400 invalid model name, fetching nothing
            insecure = values.get("insecure") is True
        result = await read_manifest(self.session, name, self.registries, insecure=insecure)
        if isinstance(result, NotAllowed):
            self.audit.event("pull.refused", client=request.client, model=name_text, reason="registry_not_allowed",
                             status=403, host=result.host)
            return Respond(403, json.dumps({"error": result.refusal(name_text)}).encode(),
                           {**JSON_HEADERS, "X-Vramgate-Decision": "refused 403 registry_not_allowed"})
        if isinstance(result, Unavailable):
            if self.settings.pull_check_failure == "refuse":
                self.audit.event("pull.refused", client=request.client, model=name_text, reason="registry_unreachable",
                                 status=503, error=result.detail)  # the detail is for the log, not the client
                return Respond(503, json.dumps({"error": result.refusal(name_text)}).encode(),
                               {**JSON_HEADERS, "Retry-After": "60", "X-Vramgate-Decision": "refused 503 registry"})
            self.audit.event("pull.check_failed", client=request.client, model=name_text, error=result.detail)
            return _forward(parsed, "passed unchecked")
        if isinstance(result, NotFound):
            return _forward(parsed, "passed unknown model")
        if not isinstance(result, ManifestSizes):  # no GGUF layer (safetensors, MLX): not judged
            return _forward(parsed, "passed")
        snap = await asyncio.to_thread(self.probe.snapshot)
        refused = check_pull(name_text, result.weights_bytes, result.projector_bytes, snap, self.policy)
        if refused is None:
            self.audit.event("pull.admitted", client=request.client, model=name_text,
                             weights_bytes=result.weights_bytes, projector_bytes=result.projector_bytes)
            return _forward(parsed, "admitted")
        self.audit.event("pull.refused", client=request.client, model=name_text, reason="too_big", status=507,
                         weights_bytes=refused.weights, projector_bytes=refused.projector, usable_bytes=refused.usable)
        return Respond(507, pull_refusal_body(refused), {**JSON_HEADERS, "X-Vramgate-Decision": "refused 507 too_big"})

    # --- /v1/audio/transcriptions -------------------------------------------------------------
    async def _admit_transcription(self, request: AdmissionRequest) -> Forward | Respond:
        """Multipart: Ollama takes ``FormValue("model")``, the URL query's first value before the
        form's. vramgate judges that model and forwards the request with ``model=<it>`` put first
        in the query, so Ollama reads the model that was judged whatever the multipart says."""
        try:
            fields = multipart_fields(request.headers.get("Content-Type", ""), request.body)
        except NotMultipart:
            return _untouched(request, "passed: Ollama rejects this body")  # Go answers 400 too
        except UnreadableMultipart as exc:
            return _cannot_read(request, f"a multipart body it cannot read ({exc})")
        model = transcription_model(request.query, fields)
        if isinstance(model, Rejection):
            return _untouched(request, f"passed: Ollama answers {model.status}")
        parsed = read_request("/v1/chat/completions", encode(GoObject([("model", model)])))
        assert not isinstance(parsed, (GoRejects, Unreadable))
        decision = await self._admit_load(request, parsed)
        if isinstance(decision, Respond):
            return decision
        query = "model=" + quote(model, safe="") + ("&" + request.query if request.query else "")
        return replace(decision, body=request.body, query=query)

    async def _is_local(self, name: str) -> bool:
        tags = await self._tag_digests()
        return model_key(name) in tags

    # --- upstream facts (cached) --------------------------------------------------------------
    async def _tag_digests(self) -> dict[str, str]:
        """model -> digest@modified, cached 2 s: tells when a cached description is stale. {} when
        Ollama cannot be asked (then nothing is taken from the cache)."""
        stamp, tags = self._tags
        if time.monotonic() - stamp < 2.0:
            return tags
        try:
            models = await ollama_client.tags(self.session, self.upstream, self.settings.probe_timeout)
        except OllamaUnavailable:
            return {}
        tags = {model_key(str(m.get("model") or m.get("name"))): f"{m.get('digest')}@{m.get('modified_at')}"
                for m in models}
        self._tags = (time.monotonic(), tags)
        return tags

    async def _describe(self, name: str) -> _Described:
        """The model's description, fetched with /api/show once per digest.

        Raises ModelUnknown (Ollama answers the load itself), OllamaUnavailable, ModelNotUnderstood."""
        key = model_key(name)
        digest = (await self._tag_digests()).get(key, "")
        cached = self._described.get(key)
        if cached is not None and cached.digest == digest and digest:
            return cached
        show = await ollama_client.show(self.session, self.upstream, name, self.settings.probe_timeout)
        remote = show.get("remote_host")
        if isinstance(remote, str) and remote:
            return _Described(digest, None, remote)
        try:
            desc = description_from_show(show, name=key)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("gate.model_not_understood", model=name, error=str(exc))
            raise ModelNotUnderstood(str(exc)) from None
        described = _Described(digest, desc)
        self._described[key] = described
        return described

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


def _untouched(request: AdmissionRequest, why: str) -> Forward:
    """The client's own bytes: only for what Ollama refuses before loading anything."""
    return Forward(request.body, {"X-Vramgate-Decision": why})


def _forward(parsed: Parsed, why: str) -> Forward:
    """The canonical body: Ollama reads exactly what vramgate read."""
    return Forward(parsed.body(), {"X-Vramgate-Decision": why})


def _cannot_read(request: AdmissionRequest, why: str) -> Respond:
    """Fail closed on a body Ollama would act on but vramgate cannot read."""
    text = f"vramgate cannot judge this request, so it did not forward it: {why}."
    return Respond(400, error_body(request.path, text, 400),
                   {**JSON_HEADERS, "X-Vramgate-Decision": "refused 400 unreadable"})


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


def _anthropic_error(openai_body: bytes) -> bytes:
    data = json.loads(openai_body)
    err = data.get("error") or {}
    return json.dumps({"type": "error", "error": {"type": "api_error", "message": err.get("message", "")},
                       "vramgate": data.get("vramgate")}).encode()
