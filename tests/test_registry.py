"""Manifest reads cannot be steered by the client: allowed hosts only, no smuggled path, no
cross-host redirects, nothing about the network in what the client is told.

Two fake registries on 127.0.0.1 with different ports stand for "the configured registry" and
"some other host". Every request either receives is recorded, and so is every request the client
session starts (trace), so "nothing fetched" is checked at both ends of real sockets.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from proxy.config.settings import load_settings
from proxy.gate.service import build_admission
from proxy.ollama.model_name import ModelName, parse_pull_name
from proxy.ollama.registry import (
    MANIFEST_ACCEPT,
    UNAVAILABLE_SENTENCE,
    ManifestSizes,
    NoGgufLayer,
    NotAllowed,
    NotFound,
    Registries,
    Unavailable,
    read_manifest,
)
from tests.emulator import Emulator, serve
from tests.fake_registry import FakeRegistry, GiB, manifest

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB"}]
PATH_8B = "/v2/library/llama3/manifests/8b"


async def _registry() -> tuple[FakeRegistry, object]:
    reg = FakeRegistry()
    reg.manifests["library/llama3:8b"] = manifest(4_920_000_000)
    reg.manifests["library/llava:34b"] = manifest(20 * GiB, projector=3 * GiB)
    reg.manifests["x/y:z"] = manifest(1 * GiB)
    running = await serve(reg.app())
    reg.url = running.url
    reg.port = running.port  # type: ignore[attr-defined]
    return reg, running


@pytest.fixture
async def home():
    """The configured registry (VRAMGATE_REGISTRY points at it)."""
    reg, running = await _registry()
    yield reg
    await running.close()


@pytest.fixture
async def other():
    """Another host: serves the same manifests, must never be asked anything."""
    reg, running = await _registry()
    yield reg
    await running.close()


@pytest.fixture
async def traced():
    """A client session that records every request it starts, wherever to."""
    started: list[str] = []

    async def on_start(_session, _ctx, params):
        started.append(str(params.url))

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(on_start)
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        session.started = started  # type: ignore[attr-defined]
        yield session


def _name(text: str) -> ModelName:
    name = parse_pull_name(text)
    assert name is not None, text
    return name


async def test_default_name_reads_the_configured_registry(traced, home, other):
    result = await read_manifest(traced, _name("llama3:8b"), Registries(home.url))
    assert result == ManifestSizes(4_920_000_000, 0)
    assert home.requests == [(PATH_8B, MANIFEST_ACCEPT)]
    assert [(r.method, r.path, r.query) for r in home.received] == [("GET", PATH_8B, "")]
    assert other.received == []


async def test_name_on_the_registry_host_itself_is_allowed(traced, home):
    result = await read_manifest(traced, _name(f"127.0.0.1:{home.port}/x/y:z"), Registries(home.url))
    assert isinstance(result, ManifestSizes) and result.weights_bytes == 1 * GiB
    assert [r.path for r in home.received] == ["/v2/x/y/manifests/z"]


@pytest.mark.parametrize("insecure", [False, True])
@pytest.mark.parametrize("template", ["127.0.0.1:{port}/x/y:z", "localhost:{port}/x/y:z", "evil.example/a/b",
                                      "registry.ollama.ai:443/library/llama3:8b", "hf.co:80/u/r:q",
                                      "127.0.0.1/x/y:z", "http://127.0.0.1:{port}/x/y:z"])
async def test_host_not_allowed_fetches_nothing(traced, home, other, template, insecure):
    name = _name(template.format(port=other.port))
    result = await read_manifest(traced, name, Registries(home.url), insecure=insecure)
    assert isinstance(result, NotAllowed)
    assert result.host == name.host
    text = result.refusal(template)
    assert "registry.ollama.ai, hf.co" in text and "VRAMGATE_REGISTRY_HOSTS" in text
    assert str(home.port) not in text.replace(template, "")  # the configured registry is not named
    assert traced.started == [] and home.received == [] and other.received == []


@pytest.mark.parametrize("template", [
    "127.0.0.1:{port}/../../internal/admin?x", "127.0.0.1:{port}/x/y:z?a=b", "127.0.0.1:{port}/x/y:z#f",
    "127.0.0.1:{port}/x/%2e%2e/y:z", "127.0.0.1:{port}/x/y%2fz:t", "127.0.0.1:{port}/x/../y:z", "x/..:z",
    "library/llama3:8b/../../admin", "127.0.0.1:{port}/a/b/c:d", "127.0.0.1:{port}//x/y:z", "user@127.0.0.1:{port}/x/y:z",
    "127.0.0.1:{port}/x/y:z@sha256:00", "127.0.0.1:{port}/x/y z:t", "127.0.0.1:{port}\\x/y:z", "llama3:8b\x00",
])
async def test_smuggled_path_is_not_a_name(home, other, template):
    for port in (home.port, other.port):
        assert parse_pull_name(template.format(port=port)) is None


def test_manifest_url_is_built_from_the_parts_only():
    regs = Registries("http://127.0.0.1:5000/mirror", ("registry.ollama.ai", "hf.co", "HF.example:8443"))
    assert str(regs.manifest_url(_name("llama3"))) == "http://127.0.0.1:5000/mirror/v2/library/llama3/manifests/latest"
    assert str(regs.manifest_url(_name("REGISTRY.ollama.AI/library/qwen3:8b"), insecure=True)) == (
        "http://127.0.0.1:5000/mirror/v2/library/qwen3/manifests/8b")  # the configured base, as configured
    assert str(regs.manifest_url(_name("hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M"))) == (
        "https://hf.co/v2/bartowski/Llama-3.2-3B-Instruct-GGUF/manifests/Q4_K_M")
    assert str(regs.manifest_url(_name("HF.CO/u/r:q"), insecure=True)) == "http://hf.co/v2/u/r/manifests/q"
    assert str(regs.manifest_url(_name("hf.example:8443/team/m:1.0"))) == "https://hf.example:8443/v2/team/m/manifests/1.0"
    assert regs.manifest_url(_name("hf.example/team/m:1.0")) is None  # the port is part of the host
    assert regs.manifest_url(_name("localhost:5000/team/model")) is None


async def test_manifest_redirect_to_another_host_is_not_followed(traced, home, other):
    home.redirects[PATH_8B] = other.url + PATH_8B
    result = await read_manifest(traced, _name("llama3:8b"), Registries(home.url))
    assert isinstance(result, Unavailable)
    assert f"127.0.0.1:{other.port}" in result.detail  # for the log
    assert other.received == [] and traced.started == [home.url + PATH_8B]
    text = result.refusal("llama3:8b")
    assert str(other.port) not in text and str(home.port) not in text and "307" not in text and "127.0.0.1" not in text


async def test_redirect_to_another_name_for_the_same_port_is_not_followed(traced, home):
    home.redirects[PATH_8B] = f"http://localhost:{home.port}{PATH_8B}"  # same port, other host name
    result = await read_manifest(traced, _name("llama3:8b"), Registries(home.url))
    assert isinstance(result, Unavailable)
    assert [r.path for r in home.received] == [PATH_8B]


async def test_same_host_redirects_are_followed_a_few_times(traced, home):
    home.redirects["/v2/library/old/manifests/8b"] = PATH_8B
    assert isinstance(await read_manifest(traced, _name("old:8b"), Registries(home.url)), ManifestSizes)
    for i in range(5):
        home.redirects[f"/v2/library/loop/manifests/{i}"] = f"/v2/library/loop/manifests/{i + 1}"
    result = await read_manifest(traced, _name("loop:0"), Registries(home.url))
    assert isinstance(result, Unavailable) and "redirects" in result.detail
    assert [r.path for r in home.received][-4:] == [f"/v2/library/loop/manifests/{i}" for i in range(4)]


async def test_token_flow_stays_on_the_registry_host(traced, home, other):
    home.private.add("library/llama3")
    assert isinstance(await read_manifest(traced, _name("llama3:8b"), Registries(home.url)), ManifestSizes)
    token = [r for r in home.received if r.path == "/token"]
    assert len(token) == 1 and "scope=repository" in token[0].query
    assert home.received[-1].authorization == f"Bearer {home.token}"

    home.received.clear()
    home.token_realm = other.url + "/token"  # a realm on another host: no token, no request there
    result = await read_manifest(traced, _name("llama3:8b"), Registries(home.url))
    assert isinstance(result, Unavailable) and "realm" in result.detail
    assert other.received == [] and [r.path for r in home.received] == [PATH_8B]


async def test_not_found_and_not_gguf(traced, home):
    assert isinstance(await read_manifest(traced, _name("nosuch"), Registries(home.url)), NotFound)
    home.manifests["library/mlx:1"] = {"layers": [{"mediaType": "application/vnd.ollama.image.tensor", "size": 5}]}
    assert isinstance(await read_manifest(traced, _name("mlx:1"), Registries(home.url)), NoGgufLayer)


async def test_insecure_switches_an_allowed_host_to_http(traced, home, other):
    regs = Registries(home.url, ("registry.ollama.ai", f"127.0.0.1:{other.port}"))
    name = _name(f"127.0.0.1:{other.port}/x/y:z")
    assert isinstance(await read_manifest(traced, name, regs, insecure=True), ManifestSizes)
    assert [r.path for r in other.received] == ["/v2/x/y/manifests/z"]
    result = await read_manifest(traced, name, regs)  # https to a plain-http server
    assert isinstance(result, Unavailable)
    assert traced.started[-1] == f"https://127.0.0.1:{other.port}/v2/x/y/manifests/z"


async def test_client_sentence_is_the_same_whatever_failed(traced, home, other):
    failures = [await read_manifest(traced, _name("llama3:8b"), Registries("http://127.0.0.1:9"))]  # connect refused
    home.redirects[PATH_8B] = "http://127.0.0.1:9/elsewhere"
    failures.append(await read_manifest(traced, _name("llama3:8b"), Registries(home.url)))  # off-host redirect
    for i in range(5):
        home.redirects[f"/v2/library/loop/manifests/{i}"] = f"/v2/library/loop/manifests/{i + 1}"
    failures.append(await read_manifest(traced, _name("loop:0"), Registries(home.url)))  # redirect loop
    home.private.add("library/llava")
    home.token_realm = other.url + "/token"
    failures.append(await read_manifest(traced, _name("llava:34b"), Registries(home.url)))  # realm elsewhere
    assert all(isinstance(f, Unavailable) for f in failures), failures
    assert len({f.detail for f in failures}) == len(failures) and "127.0.0.1:9" in failures[0].detail
    assert len({f.refusal("llama3:8b") for f in failures}) == 1  # the client cannot tell the cases apart
    text = failures[0].refusal("llama3:8b")
    assert text.startswith("vramgate refused to pull llama3:8b: it could not read the model's manifest")
    for leak in ("127.0.0.1", ":9", str(home.port), str(other.port), "HTTP", "307", "onnect", "redirect", "realm"):
        assert leak not in text
    assert UNAVAILABLE_SENTENCE == "vramgate could not read the model's manifest from its registry"
    assert other.received == []


async def test_http_error_detail_is_for_the_log_only(traced):
    from aiohttp import web

    async def fail(_request):
        return web.Response(status=502, text="upstream internal-admin:8080 down")

    app = web.Application()
    app.router.add_get("/{tail:.*}", fail)
    running = await serve(app)
    try:
        result = await read_manifest(traced, _name("llama3"), Registries(running.url))
    finally:
        await running.close()
    assert isinstance(result, Unavailable) and "HTTP 502" in result.detail
    text = result.refusal("llama3")
    assert "502" not in text and "internal-admin" not in text and str(running.port) not in text


def test_settings_default_and_from_settings(monkeypatch):
    settings = load_settings(None)
    assert settings.registry_hosts == ["registry.ollama.ai", "hf.co"]
    regs = Registries.from_settings(settings)
    assert regs.allowed_hosts == {"registry.ollama.ai", "hf.co"}
    monkeypatch.setenv("VRAMGATE_REGISTRY_HOSTS", '["registry.ollama.ai", "mirror.lan:5000"]')
    monkeypatch.setenv("VRAMGATE_REGISTRY", "http://10.0.0.5:5000")
    regs = Registries.from_settings(load_settings(None))
    assert regs.allowed_hosts == {"registry.ollama.ai", "mirror.lan:5000", "10.0.0.5:5000"}
    assert regs.public_hosts == ("registry.ollama.ai", "mirror.lan:5000")


# --- through the proxy: what gate.py must do once it calls read_manifest -------------------------


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator()
    emu.add_model("llama3:8b", remote=True)
    return emu


async def _pull(url: str, body: dict) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url + "/api/pull", json=body) as r:
        return r.status, await r.read()


async def test_gate_refuses_a_pull_from_a_host_not_allowed(start_proxy, emulator, home, other):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=home.url)
    status, raw = await _pull(url, {"model": f"127.0.0.1:{other.port}/x/y:z", "insecure": True})
    assert status == 403 and "VRAMGATE_REGISTRY_HOSTS" in json.loads(raw)["error"]
    assert other.received == [] and home.received == [] and emulator.received("/api/pull") == []


async def test_gate_hides_why_the_manifest_could_not_be_read(start_proxy, emulator, home, other):
    home.redirects[PATH_8B] = other.url + PATH_8B
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=home.url,
                            pull_check_failure="refuse")
    status, raw = await _pull(url, {"model": "llama3:8b"})
    error = json.loads(raw)["error"]
    assert status == 503 and error.startswith("vramgate refused to pull llama3:8b: it could not read the model's manifest")
    assert str(other.port) not in error and "127.0.0.1" not in error and "307" not in error
    assert other.received == []
