"""Reading a model's manifest from its registry before a pull downloads anything.

Only the manifest is fetched (a few hundred bytes): the size of the weights layer and of a vision
projector layer are enough to know a model can never fit the GPUs. Names follow Ollama's rules:
``[host/][namespace/]model[:tag]`` with ``registry.ollama.ai``, ``library`` and ``latest`` as
defaults; ``hf.co/...`` names go to their own host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp

DEFAULT_HOST = "registry.ollama.ai"
MANIFEST_ACCEPT = "application/vnd.docker.distribution.manifest.v2+json"
MODEL_LAYER = "application/vnd.ollama.image.model"
PROJECTOR_LAYER = "application/vnd.ollama.image.projector"


@dataclass(frozen=True)
class ModelName:
    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"


def parse_model_name(name: str) -> ModelName | None:
    """None for names Ollama itself would reject; those go upstream untouched."""
    name = name.strip()
    if not name or " " in name:
        return None
    tag = "latest"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    parts = name.split("/")
    if len(parts) == 1:
        host, namespace, model = DEFAULT_HOST, "library", parts[0]
    elif len(parts) == 2:
        if _is_host(parts[0]):  # e.g. myregistry:5000/model is not a namespace
            host, namespace, model = parts[0], "library", parts[1]
        else:
            host, namespace, model = DEFAULT_HOST, parts[0], parts[1]
    else:
        host, namespace, model = parts[0], "/".join(parts[1:-1]), parts[-1]
    if not all(re.fullmatch(r"[A-Za-z0-9._:-]+", p) for p in (host, model, tag)) or not namespace:
        return None
    return ModelName(host, namespace, model, tag)


def _is_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost"


def manifest_url(name: ModelName, default_registry: str, insecure: bool = False) -> str:
    base = default_registry if name.host == DEFAULT_HOST else f"{'http' if insecure else 'https'}://{name.host}"
    return f"{base}/v2/{name.namespace}/{name.model}/manifests/{name.tag}"


@dataclass(frozen=True)
class ManifestSizes:
    weights_bytes: int  # the GGUF model layer(s)
    projector_bytes: int
    download_bytes: int  # every layer: what the pull would download


def manifest_sizes(manifest: object) -> ManifestSizes | None:
    """None when the manifest has no GGUF model layer (safetensors/MLX models: not judged)."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
        return None
    weights = projector = total = 0
    for layer in manifest["layers"]:
        if not isinstance(layer, dict):
            continue
        size = layer.get("size")
        size = size if isinstance(size, int) else 0
        total += size
        if layer.get("mediaType") == MODEL_LAYER:
            weights += size
        elif layer.get("mediaType") == PROJECTOR_LAYER:
            projector += size
    if weights == 0:
        return None
    return ManifestSizes(weights, projector, total)


class ManifestNotFound(Exception):
    pass


class RegistryUnavailable(Exception):
    pass


async def fetch_manifest(session: aiohttp.ClientSession, url: str, timeout: float = 10.0) -> dict:
    """The manifest JSON; follows the anonymous bearer-token flow on 401.

    Raises ManifestNotFound (404: let Ollama say so) or RegistryUnavailable (anything else).
    """
    headers = {"Accept": MANIFEST_ACCEPT}
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    try:
        for attempt in range(2):
            async with session.get(url, headers=headers, timeout=client_timeout) as resp:
                if resp.status == 200:
                    data = await resp.json(content_type=None)
                    if not isinstance(data, dict):
                        raise RegistryUnavailable(f"{url} returned something that is not a manifest")
                    return data
                if resp.status == 404:
                    raise ManifestNotFound(url)
                if resp.status == 401 and attempt == 0:
                    token = await _anonymous_token(session, url, resp.headers.get("WWW-Authenticate", ""), client_timeout)
                    if token:
                        headers["Authorization"] = f"Bearer {token}"
                        continue
                raise RegistryUnavailable(f"{url} answered HTTP {resp.status}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise RegistryUnavailable(f"{url}: {str(exc) or type(exc).__name__}") from None
    raise RegistryUnavailable(f"{url} refused access")


async def _anonymous_token(session: aiohttp.ClientSession, url: str, challenge: str, timeout: aiohttp.ClientTimeout) -> str | None:
    """Docker-style anonymous token (public repositories); same host as the registry only."""
    if not challenge.lower().startswith("bearer "):
        return None
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.pop("realm", "")
    if not realm or _host(realm) != _host(url):
        return None
    async with session.get(realm, params=params, timeout=timeout) as resp:
        if resp.status != 200:
            return None
        data = await resp.json(content_type=None)
    token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _host(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0].lower()
