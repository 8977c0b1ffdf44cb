"""A registry that serves Ollama-style manifests (only what the pull gate reads), on 127.0.0.1.

Manifests follow ``ollama.md`` §5: docker v2 manifests whose layers carry Ollama media types. A
repository can be marked private to exercise the anonymous bearer-token flow.

Every request that reaches it is recorded in ``received`` (method, Host header, raw path, raw
query), unknown paths included, so a test can assert that nothing at all was asked of it.
``requests`` keeps only the manifest requests as ``(path, Accept)``. ``redirects`` maps a request
path to a ``Location`` (absolute, e.g. another FakeRegistry's URL, or relative), answered with
``redirect_status``; ``token_realm`` replaces the realm a private repository's 401 names.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

MiB = 1024**2
GiB = 1024**3


def manifest(weights: int, projector: int = 0, params: dict[str, Any] | None = None) -> dict[str, Any]:
    def digest(tag: str) -> str:
        return "sha256:" + hashlib.sha256(f"{tag}{weights}{projector}".encode()).hexdigest()

    layers = [{"mediaType": "application/vnd.ollama.image.model", "digest": digest("model"), "size": weights}]
    if projector:
        layers.append({"mediaType": "application/vnd.ollama.image.projector", "digest": digest("proj"), "size": projector})
    layers += [
        {"mediaType": "application/vnd.ollama.image.template", "digest": digest("tmpl"), "size": 1432},
        {"mediaType": "application/vnd.ollama.image.license", "digest": digest("lic"), "size": 12321},
        {"mediaType": "application/vnd.ollama.image.params", "digest": digest("params"), "size": 96},
    ]
    return {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": digest("cfg"), "size": 561},
        "layers": layers,
    }


@dataclass(frozen=True)
class Received:
    method: str
    host: str  # the Host header as sent
    path: str  # raw (still percent-encoded) path
    query: str  # raw query string, "" when none
    authorization: str = ""


@dataclass
class FakeRegistry:
    manifests: dict[str, dict[str, Any]] = field(default_factory=dict)  # "library/llama3:8b" -> manifest
    private: set[str] = field(default_factory=set)  # repositories that need a bearer token
    requests: list[tuple[str, str]] = field(default_factory=list)  # manifest requests: (path, Accept)
    received: list[Received] = field(default_factory=list)  # every request, whatever its path
    redirects: dict[str, str] = field(default_factory=dict)  # request path -> Location
    redirect_status: int = 307
    token_realm: str | None = None  # None: http://<Host>/token
    token: str = "anon-token-123"
    url: str = ""  # set by whoever serves app()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/v2/{namespace}/{model}/manifests/{tag}", self._manifest)
        app.router.add_get("/token", self._token)
        app.router.add_route("*", "/{tail:.*}", self._unknown)
        return app

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw_path, _, query = request.raw_path.partition("?")
        self.received.append(Received(request.method, request.headers.get("Host", ""), raw_path, query,
                                      request.headers.get("Authorization", "")))
        location = self.redirects.get(request.path)
        if location is not None:
            return web.Response(status=self.redirect_status, headers={"Location": location})
        return await handler(request)

    async def _manifest(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, request.headers.get("Accept", "")))
        repo = f"{request.match_info['namespace']}/{request.match_info['model']}"
        key = f"{repo}:{request.match_info['tag']}"
        if repo in self.private and request.headers.get("Authorization") != f"Bearer {self.token}":
            realm = self.token_realm or f"http://{request.host}/token"
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}, status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="registry",scope="repository:{repo}:pull"'},
            )
        if key not in self.manifests:
            return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}, status=404)
        return web.json_response(self.manifests[key], content_type="application/vnd.docker.distribution.manifest.v2+json")

    async def _token(self, request: web.Request) -> web.Response:
        return web.json_response({"token": self.token})

    async def _unknown(self, request: web.Request) -> web.Response:
        return web.json_response({"errors": [{"code": "NOT_FOUND", "message": "no such endpoint"}]}, status=404)
