"""The pull gate: a model that can never fit these GPUs is refused before it downloads.

``/api/pull`` and ``/api/create`` (from a model that is not on disk yet) read the model's manifest
first: the weights and projector layer sizes are enough to know. Names are parsed with Ollama's
grammar, manifests are read only from the allowed registry hosts (``proxy.ollama.registry``), and
a registry error reaches the client as one generic sentence (the detail goes to the log).
"""

from __future__ import annotations

import asyncio
import json

import aiohttp

from proxy.gate.admission import AdmissionRequest, Forward, Respond
from proxy.gate.answers import JSON_HEADERS, canonical
from proxy.gate.audit import Audit
from proxy.gate.catalog import ModelCatalog
from proxy.gate.decision import Policy, check_pull
from proxy.gate.explanation import pull_refusal_body
from proxy.gpu.probe import GpuProbe
from proxy.ollama.model_name import create_pull_name, parse_pull_name
from proxy.ollama.registry import ManifestSizes, NotAllowed, NotFound, Registries, Unavailable, read_manifest
from proxy.ollama.requests import Parsed


class PullGate:
    def __init__(self, session: aiohttp.ClientSession, registries: Registries, catalog: ModelCatalog,
                 probe: GpuProbe, policy: Policy, audit: Audit, check_failure: str) -> None:
        self._session = session
        self._registries = registries
        self._catalog = catalog
        self._probe = probe
        self._policy = policy
        self._audit = audit
        self._check_failure = check_failure  # "allow" or "refuse" a pull whose manifest cannot be read

    async def admit(self, request: AdmissionRequest, parsed: Parsed) -> Forward | Respond:
        values = parsed.bound.values
        if request.path == "/api/create":
            source = values.get("from", "")
            name = create_pull_name(source, values.get("remote_host", "")) if source.strip() else None
            if name is None or await self._catalog.is_local(source):
                return canonical(parsed, "passed")  # nothing to download (or Ollama refuses the name)
            name_text, insecure = source, False  # create's implicit pull never uses insecure
        else:
            name_text = parsed.model
            name = parse_pull_name(name_text)
            if name is None:
                return canonical(parsed, "passed")  # Ollama answers 400 invalid model name, fetching nothing
            insecure = values.get("insecure") is True
        result = await read_manifest(self._session, name, self._registries, insecure=insecure)
        if isinstance(result, NotAllowed):
            self._audit.event("pull.refused", client=request.client, model=name_text, reason="registry_not_allowed",
                             status=403, host=result.host)
            return Respond(403, json.dumps({"error": result.refusal(name_text)}).encode(),
                           {**JSON_HEADERS, "X-Vramgate-Decision": "refused 403 registry_not_allowed"})
        if isinstance(result, Unavailable):
            if self._check_failure == "refuse":
                self._audit.event("pull.refused", client=request.client, model=name_text, reason="registry_unreachable",
                                 status=503, error=result.detail)  # the detail is for the log, not the client
                return Respond(503, json.dumps({"error": result.refusal(name_text)}).encode(),
                               {**JSON_HEADERS, "Retry-After": "60", "X-Vramgate-Decision": "refused 503 registry"})
            self._audit.event("pull.check_failed", client=request.client, model=name_text, error=result.detail)
            return canonical(parsed, "passed unchecked")
        if isinstance(result, NotFound):
            return canonical(parsed, "passed unknown model")
        if not isinstance(result, ManifestSizes):  # no GGUF layer (safetensors, MLX): not judged
            return canonical(parsed, "passed")
        snap = await asyncio.to_thread(self._probe.snapshot)
        refused = check_pull(name_text, result.weights_bytes, result.projector_bytes, snap, self._policy)
        if refused is None:
            self._audit.event("pull.admitted", client=request.client, model=name_text,
                             weights_bytes=result.weights_bytes, projector_bytes=result.projector_bytes)
            return canonical(parsed, "admitted")
        self._audit.event("pull.refused", client=request.client, model=name_text, reason="too_big", status=507,
                         weights_bytes=refused.weights, projector_bytes=refused.projector, usable_bytes=refused.usable)
        return Respond(507, pull_refusal_body(refused), {**JSON_HEADERS, "X-Vramgate-Decision": "refused 507 too_big"})
