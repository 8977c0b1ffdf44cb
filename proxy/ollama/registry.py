"""Reading a model's manifest from its registry before a pull downloads anything.

Only the manifest is fetched (a few hundred bytes): the size of the weights layer and of a vision
projector layer are enough to know a model can never fit the GPUs. Names are parsed exactly as
Ollama parses them (:mod:`proxy.model_name`).

A client must never make vramgate connect where the client chooses, so:

* Names on Ollama's default host (``registry.ollama.ai``) are read from the configured ``registry``
  base URL. Other names are read only when their host (with its port, if written) is one of
  ``registry_hosts`` or the host of ``registry``; anything else is :class:`NotAllowed` and nothing
  is fetched.
* The URL is built from validated name parts only (the grammar admits no ``/``, ``%``, ``?``, ``#``,
  ``@``, ``..`` or spaces inside a part). It is https, or http when the pull says ``insecure``
  (what Ollama itself then uses, so both read the same registry); that changes the scheme only,
  never the host. Names on the default host always use the configured base URL as it is.
* Redirects are not followed by aiohttp. At most :data:`MAX_REDIRECTS` are followed here, and
  only to the same host and port (or its https upgrade); any other target makes the manifest
  :class:`Unavailable`. The anonymous bearer-token realm must be on the same host too (as Ollama
  requires).
* :class:`Unavailable` carries the reason (connect error, HTTP status…) for vramgate's log only;
  clients get :data:`UNAVAILABLE_SENTENCE`, which says nothing about what the network answered.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from yarl import URL

from proxy.ollama.model_name import DEFAULT_HOST, ModelName

DEFAULT_REGISTRY_HOSTS = (DEFAULT_HOST, "hf.co")
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"
MAX_REDIRECTS = 3
MAX_MANIFEST_BYTES = 8 * 1024**2  # safetensors manifests list one layer per tensor file
UNAVAILABLE_SENTENCE = "vramgate could not read the model's manifest from its registry"
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


# --- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestSizes:
    weights_bytes: int  # the GGUF model layer(s)
    projector_bytes: int


@dataclass(frozen=True)
class NoGgufLayer:
    """The manifest has no GGUF model layer (safetensors/MLX models): not judged, let it through."""

    url: str


@dataclass(frozen=True)
class NotFound:
    """The registry answered 404: let Ollama say "file does not exist"."""

    url: str


@dataclass(frozen=True)
class NotAllowed:
    """The name's host is not an allowed registry; nothing was fetched."""

    host: str
    allowed: tuple[str, ...]  # the default host and registry_hosts (the registry base URL is not named)

    def refusal(self, name_text: str) -> str:
        hosts = ", ".join(self.allowed)
        return (f"vramgate refused to pull {name_text}: it reads model manifests only from {hosts},"
                f" and {self.host} is not one of them. An operator can add it to VRAMGATE_REGISTRY_HOSTS.")


@dataclass(frozen=True)
class Unavailable:
    """The manifest could not be read. ``detail`` is for vramgate's log, never for the client."""

    detail: str

    def refusal(self, name_text: str) -> str:
        return (f"vramgate refused to pull {name_text}: it could not read the model's manifest from its registry"
                " to check that it fits the GPUs. Retry later, or set VRAMGATE_PULL_CHECK_FAILURE=allow.")

    client_sentence = UNAVAILABLE_SENTENCE


ManifestResult = ManifestSizes | NoGgufLayer | NotFound | NotAllowed | Unavailable


# --- where manifests may come from ---------------------------------------------------------------
class _RegistrySettings(Protocol):
    registry: str
    registry_hosts: list[str]


def _normalize_host(entry: str) -> str:
    entry = entry.strip().lower()
    return entry.split("://", 1)[1].rstrip("/") if "://" in entry else entry.rstrip("/")


@dataclass(frozen=True)
class Registries:
    """The allow-list: Ollama's default host goes to ``registry``; other hosts must be listed."""

    registry: str = "https://" + DEFAULT_HOST  # base URL for names on registry.ollama.ai
    hosts: tuple[str, ...] = DEFAULT_REGISTRY_HOSTS

    @classmethod
    def from_settings(cls, settings: _RegistrySettings) -> Registries:
        hosts = getattr(settings, "registry_hosts", DEFAULT_REGISTRY_HOSTS)
        return cls(settings.registry, tuple(hosts))

    @property
    def _base(self) -> URL:
        return URL(self.registry).with_query(None).with_fragment(None)

    @property
    def _base_host(self) -> str:
        """``host[:port]`` of the registry base URL (port left out when it is the scheme's default)."""
        base = self._base
        host = base.host_port_subcomponent
        return host.lower() if host else ""

    @property
    def public_hosts(self) -> tuple[str, ...]:
        """The default host and ``hosts``, normalized, in order: what a refusal names."""
        return tuple(dict.fromkeys([DEFAULT_HOST, *(h for h in map(_normalize_host, self.hosts) if h)]))

    @property
    def allowed_hosts(self) -> frozenset[str]:
        """Lowercase ``host`` or ``host:port`` strings, compared with a name's host part as written."""
        return frozenset({*self.public_hosts, self._base_host} - {""})

    def allows(self, name: ModelName) -> bool:
        return name.host.lower() in self.allowed_hosts

    def manifest_url(self, name: ModelName, *, insecure: bool = False) -> URL | None:
        """The manifest URL, or None when the name's host is not allowed."""
        host = name.host.lower()
        if host not in self.allowed_hosts:
            return None
        if host in (DEFAULT_HOST, self._base_host):
            root = str(self._base).rstrip("/")
        else:
            root = f"{'http' if insecure else 'https'}://{host}"
        # every part matched Ollama's grammar: nothing in them needs (or admits) quoting
        return URL(f"{root}/v2/{name.namespace}/{name.model}/manifests/{name.tag}", encoded=True)


# --- reading -------------------------------------------------------------------------------------
async def read_manifest(session: aiohttp.ClientSession, name: ModelName, registries: Registries, *,
                        insecure: bool = False, timeout: float = 10.0) -> ManifestResult:
    """Read ``name``'s manifest (all network through ``session``) and size its GGUF layers."""
    url = registries.manifest_url(name, insecure=insecure)
    if url is None:
        return NotAllowed(name.host, registries.public_hosts)
    try:
        manifest = await _get_manifest(session, url, timeout)
    except ManifestNotFound:
        return NotFound(str(url))
    except RegistryUnavailable as exc:
        return Unavailable(str(exc))
    sizes = manifest_sizes(manifest)
    return NoGgufLayer(str(url)) if sizes is None else sizes


def manifest_sizes(manifest: object) -> ManifestSizes | None:
    """None when the manifest has no GGUF model layer (safetensors/MLX models: not judged)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        return None
    weights = projector = 0
    for layer in manifest["layers"]:
        if not isinstance(layer, dict):
            continue
        size = layer.get("size")
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 0
        if layer.get("mediaType") == MODEL_LAYER:
            weights += size
        elif layer.get("mediaType") == PROJECTOR_LAYER:
            projector += size
    if weights == 0:
        return None
    return ManifestSizes(weights, projector)


class ManifestNotFound(Exception):
    pass


class RegistryUnavailable(Exception):
    """The message names URLs, statuses and connect errors: for the log only."""


def _same_host(origin: URL, target: URL) -> bool:
    """Same host and port, or the https upgrade of an http origin; no credentials in the URL."""
    if target.scheme not in ("http", "https") or target.user is not None or target.password is not None:
        return False
    if (target.host or "").lower() != (origin.host or "").lower():
        return False
    if target.scheme == origin.scheme:
        return target.port == origin.port
    return origin.scheme == "http" and target.scheme == "https" and (
        target.port == origin.port or (origin.port == 80 and target.port == 443))


async def _get_manifest(session: aiohttp.ClientSession, url: URL, timeout: float) -> dict[str, Any]:
    """The manifest JSON. Raises ManifestNotFound (404) or RegistryUnavailable (anything else)."""
    headers = {"Accept": MANIFEST_ACCEPT, "Accept-Encoding": "identity", "User-Agent": "vramgate"}
    current, redirects, authorized = url, 0, False
    try:
        async with asyncio.timeout(timeout):
            while True:
                async with session.get(current, headers=headers, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    status = resp.status
                    if status == 200:
                        return _manifest_json(current, await _read_capped(resp))
                    if status == 404:
                        raise ManifestNotFound(str(current))
                    if status in _REDIRECTS:
                        location = resp.headers.get("Location", "")
                        target = current.join(URL(location)) if location else None
                        if target is None or not _same_host(current, target):
                            raise RegistryUnavailable(f"{current} redirected to {location!r}, not on the same host: not followed")
                        redirects += 1
                        if redirects > MAX_REDIRECTS:
                            raise RegistryUnavailable(f"{url}: more than {MAX_REDIRECTS} redirects")
                        current = target
                        continue
                    if status == 401 and not authorized:
                        authorized = True
                        challenge = resp.headers.get("WWW-Authenticate", "")
                        headers["Authorization"] = f"Bearer {await _anonymous_token(session, current, challenge, timeout)}"
                        continue
                    raise RegistryUnavailable(f"{current} answered HTTP {status}")
    except (ManifestNotFound, RegistryUnavailable):
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:  # RecursionError: json nesting
        raise RegistryUnavailable(f"{url}: {str(exc) or type(exc).__name__}") from None


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    chunks, size = [], 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_MANIFEST_BYTES:
            raise RegistryUnavailable(f"{resp.url}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _manifest_json(url: URL, body: bytes) -> dict[str, Any]:
    data = json.loads(body)
    if not isinstance(data, dict):
        raise RegistryUnavailable(f"{url} returned something that is not a manifest")
    return data


def _challenge_params(challenge: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="([^"]*)"', challenge[len("bearer "):]))


async def _anonymous_token(session: aiohttp.ClientSession, url: URL, challenge: str, timeout: float) -> str:
    """A Docker-style anonymous token (public repositories) from a realm on the registry's own host."""
    if challenge[:7].lower() != "bearer ":
        raise RegistryUnavailable(f"{url} answered HTTP 401 without a bearer challenge")
    params = _challenge_params(challenge)
    realm = URL(params.get("realm", ""))
    if not realm.is_absolute() or not _same_host(url, realm):
        raise RegistryUnavailable(f"{url} answered HTTP 401 with a token realm {str(realm)!r} not on its host")
    query = [*realm.query.items()]
    if params.get("service"):
        query.append(("service", params["service"]))
    query += [("scope", s) for s in params.get("scope", "").split(" ") if s]
    async with session.get(realm.with_query(query), headers={"Accept-Encoding": "identity", "User-Agent": "vramgate"},
                           allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        if resp.status != 200:
            raise RegistryUnavailable(f"token realm {realm} answered HTTP {resp.status}")
        data = json.loads(await _read_capped(resp))
    token = (data.get("token") or data.get("access_token")) if isinstance(data, dict) else None
    if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
        raise RegistryUnavailable(f"token realm {realm} returned no token")
    return token
