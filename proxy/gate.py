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
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from proxy import ollama_client
from proxy.admission import AdmissionRequest, Forward, Respond
from proxy.audit import Audit, load_options
from proxy.decision import (
    Admit,
    Inputs,
    LoadRequest,
    ModelFacts,
    Policy,
    Refuse,
    Reservation,
    check_pull,
    decide,
)
from proxy.reservations import ReservationLedger
from proxy.explanation import admit_headers, pull_refusal_body, refusal_body, refusal_headers, refusal_text
from proxy.footprint import ModelDescription, description_from_show
from proxy.gpus import GpuProbe, GpuSnapshot
from proxy.ollama_client import ModelUnknown, OllamaUnavailable
from proxy.ollama_server import ServerSettings, server_settings
from proxy.registry import (
    ManifestNotFound,
    RegistryUnavailable,
    fetch_manifest,
    manifest_sizes,
    manifest_url,
    parse_model_name,
)
from proxy.residency import Residency, Resident, VramgateLoad, model_key
from proxy.settings import Settings
from proxy.sizing import model_facts, sizer_for, speed_for

log = structlog.get_logger("vramgate.gate")

NATIVE_LOAD = {"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"}
OPENAI_LOAD = {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages"}
PULLS = {"/api/pull", "/api/create"}
INT_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "num_thread")
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
        return method == "POST" and (path in NATIVE_LOAD or path in OPENAI_LOAD or path in PULLS)

    async def admit(self, request: AdmissionRequest) -> Forward | Respond:
        try:
            body = json.loads(request.body) if request.body else None
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return Forward(request.body, {"X-Vramgate-Decision": "passed unreadable body"})
        if request.path in PULLS:
            return await self._admit_pull(request, body)
        return await self._admit_load(request, body)

    # --- loads --------------------------------------------------------------------------------
    async def _admit_load(self, request: AdmissionRequest, body: dict[str, Any]) -> Forward | Respond:
        route = "openai" if request.path in OPENAI_LOAD else "native"
        name = body.get("model")
        if not isinstance(name, str) or not name.strip():
            return _untouched(request, "passed no model")
        options = body.get("options", {}) if route == "native" else {}
        if options is None:
            options = {}
        if not isinstance(options, dict) or not _int_options_ok(options):
            return _untouched(request, "passed invalid options")
        options = {k: (int(v) if k in INT_OPTIONS and isinstance(v, float) else v) for k, v in options.items()}
        if route == "native" and _is_unload(request.path, body):
            # never refused; the memory it frees is read afresh on the next decision
            return Forward(request.body, {"X-Vramgate-Decision": "unload"}, lambda status: self.probe.invalidate())

        try:
            described = await self._describe(name)
        except ModelUnknown:
            return _untouched(request, "passed unknown model")  # Ollama answers with its own 404/400
        except OllamaUnavailable as exc:
            return self._cannot_judge(request, name, "its description (/api/show)", exc)
        except ModelNotUnderstood as exc:
            return self._cannot_judge(request, name, "a footprint for it", exc, status=501)
        if described.remote_host:
            return _untouched(request, f"passed remote model ({described.remote_host})")
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
        return self._answer(request, route, name, options, body, decision, token, snap)

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
                body: dict[str, Any], decision: Admit | Refuse, token: int | None,
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
        forwarded_body = request.body
        if not decision.unchanged:
            new = dict(body)
            new["options"] = decision.options
            forwarded_body = json.dumps(new).encode()
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
    async def _admit_pull(self, request: AdmissionRequest, body: dict[str, Any]) -> Forward | Respond:
        if request.path == "/api/create":
            source = body.get("from")
            if not isinstance(source, str) or not source.strip() or await self._is_local(source):
                return _untouched(request, "passed")
            name_text = source
        else:
            name_text = body.get("model") or body.get("name")
            if not isinstance(name_text, str):
                return _untouched(request, "passed")
        name = parse_model_name(name_text)
        if name is None:
            return _untouched(request, "passed")
        url = manifest_url(name, self.settings.registry, insecure=body.get("insecure") is True)
        try:
            manifest = await fetch_manifest(self.session, url)
        except ManifestNotFound:
            return _untouched(request, "passed unknown model")
        except RegistryUnavailable as exc:
            if self.settings.pull_check_failure == "refuse":
                text = (f"vramgate refused to pull {name_text}: it could not read the model's manifest to check that it"
                        f" fits the GPUs ({exc}). Retry later, or set VRAMGATE_PULL_CHECK_FAILURE=allow.")
                self.audit.event("pull.refused", client=request.client, model=name_text, reason="registry_unreachable",
                                 status=503, error=str(exc))
                return Respond(503, json.dumps({"error": text}).encode(),
                               {**JSON_HEADERS, "Retry-After": "60", "X-Vramgate-Decision": "refused 503 registry"})
            self.audit.event("pull.check_failed", client=request.client, model=name_text, error=str(exc))
            return _untouched(request, "passed unchecked")
        sizes = manifest_sizes(manifest)
        if sizes is None:
            return _untouched(request, "passed")
        snap = self.probe.snapshot()
        refused = check_pull(name_text, sizes.weights_bytes, sizes.projector_bytes, snap, self.policy)
        if refused is None:
            self.audit.event("pull.admitted", client=request.client, model=name_text, weights_bytes=sizes.weights_bytes,
                             projector_bytes=sizes.projector_bytes)
            return Forward(request.body, {"X-Vramgate-Decision": "admitted"})
        self.audit.event("pull.refused", client=request.client, model=name_text, reason="too_big", status=507,
                         weights_bytes=refused.weights, projector_bytes=refused.projector, usable_bytes=refused.usable)
        return Respond(507, pull_refusal_body(refused), {**JSON_HEADERS, "X-Vramgate-Decision": "refused 507 too_big"})

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
    return Forward(request.body, {"X-Vramgate-Decision": why})


def _int_options_ok(options: dict[str, Any]) -> bool:
    """Wrong types go to Ollama untouched so its own error comes back."""
    for key in INT_OPTIONS:
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
    return True


def _is_unload(path: str, body: dict[str, Any]) -> bool:
    """Empty prompt/messages with keep_alive 0: Ollama unloads without loading (never refused).

    Embedding routes have no such case: an empty input loads (and is planned like any load).
    """
    if not _zero_keep_alive(body.get("keep_alive")):
        return False
    if path == "/api/generate":
        return not body.get("prompt")
    if path == "/api/chat":
        return not body.get("messages")
    return False


def _zero_keep_alive(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        text = value.strip().lower()
        return text == "0" or (text[:1] == "0" and text.rstrip("nsuµmh").replace(".", "").strip("0") == "")
    return False


def _anthropic_error(openai_body: bytes) -> bytes:
    data = json.loads(openai_body)
    err = data.get("error") or {}
    return json.dumps({"type": "error", "error": {"type": "api_error", "message": err.get("message", "")},
                       "vramgate": data.get("vramgate")}).encode()
