"""The pull gate: the manifest is read from a (fake) registry before anything downloads."""

from __future__ import annotations

import json

import aiohttp
import pytest

from proxy.gate.service import build_admission
from proxy.ollama.model_name import parse_pull_name
from proxy.ollama.registry import Registries, manifest_sizes
from tests.emulator import Emulator, serve
from tests.fake_registry import FakeRegistry, GiB, manifest

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB"}]


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator()
    emu.add_model("llama3:8b", remote=True)
    emu.add_model("llama3:70b", remote=True)
    emu.add_model("local-base")
    return emu


@pytest.fixture
async def registry():
    reg = FakeRegistry()
    reg.manifests["library/llama3:8b"] = manifest(4_920_000_000)
    reg.manifests["library/llama3:70b"] = manifest(42_520_000_000)
    reg.manifests["library/llava:34b"] = manifest(20 * GiB, projector=3 * GiB)  # 23 GiB > 22.5 usable
    running = await serve(reg.app())
    reg.url = running.url
    yield reg
    await running.close()


async def pull(url: str, body: dict) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as s, s.post(url + "/api/pull", json=body) as r:
        return r.status, dict(r.headers), await r.read()


async def test_pull_that_fits_goes_through(start_proxy, emulator, registry):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=registry.url)
    status, headers, body = await pull(url, {"model": "llama3:8b"})
    assert status == 200 and body.strip().endswith(b'{"status":"success"}')
    assert headers["X-Vramgate-Decision"] == "admitted"
    assert registry.requests == [("/v2/library/llama3/manifests/8b", "application/vnd.docker.distribution.manifest.v2+json")]
    assert len(emulator.received("/api/pull")) == 1


@pytest.mark.parametrize("model,weights", [("llama3:70b", "39.6 GiB"), ("llava:34b", "20.0 GiB plus a 3.0 GiB vision projector")])
async def test_pull_that_never_fits_is_507(start_proxy, emulator, registry, model, weights):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=registry.url)
    status, headers, raw = await pull(url, {"model": model, "stream": True})
    assert status == 507 and headers["X-Vramgate-Decision"] == "refused 507 too_big"
    body = json.loads(raw)
    assert body["error"].startswith(f"vramgate refused to pull {model}: its weights are {weights}, more than these GPUs can ever hold")
    assert body["vramgate"]["usable_bytes"] == 24 * GiB - 1 * GiB - 500 * 1024**2
    assert emulator.received("/api/pull") == []  # nothing downloaded


async def test_registry_down_allow_and_refuse(start_proxy, emulator):
    down = "http://127.0.0.1:9"  # discard port: connection refused
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=down)
    status, headers, _ = await pull(url, {"model": "llama3:8b"})
    assert status == 200 and headers["X-Vramgate-Decision"] == "passed unchecked"
    strict = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=down,
                               pull_check_failure="refuse")
    status, headers, raw = await pull(strict, {"model": "llama3:8b"})
    assert status == 503 and headers["Retry-After"] == "60"
    assert json.loads(raw)["error"].startswith("vramgate refused to pull llama3:8b: it could not read the model's manifest")
    assert len(emulator.received("/api/pull")) == 1  # only the allowed one


async def test_private_repository_token_flow(start_proxy, emulator, registry):
    registry.private.add("library/llama3")
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=registry.url)
    status, _, raw = await pull(url, {"model": "llama3:70b"})
    assert status == 507 and b"vramgate refused to pull" in raw
    assert [p for p, _ in registry.requests] == ["/v2/library/llama3/manifests/70b"] * 2  # 401, then with the token


async def test_unknown_model_lets_ollama_answer(start_proxy, emulator, registry):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=registry.url)
    status, _, raw = await pull(url, {"model": "nosuch", "stream": False})
    assert len(emulator.received("/api/pull")) == 1
    assert b"file does not exist" in raw  # Ollama's own answer


async def test_create_from_remote_is_checked_from_local_is_not(start_proxy, emulator, registry):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=registry.url)
    async with aiohttp.ClientSession() as s:
        async with s.post(url + "/api/create", json={"model": "mine", "from": "llama3:70b"}) as r:
            assert r.status == 507
        async with s.post(url + "/api/create", json={"model": "mine2", "from": "local-base"}) as r:
            assert r.status == 200
    assert [r.json["from"] for r in emulator.received("/api/create")] == ["local-base"]
    assert [p for p, _ in registry.requests] == ["/v2/library/llama3/manifests/70b"]


@pytest.mark.parametrize(
    "name,url",
    [
        ("llama3", "https://registry.ollama.ai/v2/library/llama3/manifests/latest"),
        ("llama3.2:3b", "https://registry.ollama.ai/v2/library/llama3.2/manifests/3b"),
        ("jmorgan/mymodel:q4", "https://registry.ollama.ai/v2/jmorgan/mymodel/manifests/q4"),
        ("hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:Q4_K_M",
         "https://hf.co/v2/bartowski/Llama-3.2-3B-Instruct-GGUF/manifests/Q4_K_M"),
        ("registry.ollama.ai/library/qwen3:8b", "https://registry.ollama.ai/v2/library/qwen3/manifests/8b"),
        ("localhost:5000/team/model", "https://localhost:5000/v2/team/model/manifests/latest"),
    ],
)
def test_manifest_urls(name, url):
    parsed = parse_pull_name(name)
    assert parsed is not None
    allowed = Registries("https://registry.ollama.ai", ("registry.ollama.ai", "hf.co", "localhost:5000"))
    assert str(allowed.manifest_url(parsed)) == url


def test_manifest_sizes():
    sizes = manifest_sizes(manifest(4 * GiB, projector=600 * 1024**2))
    assert (sizes.weights_bytes, sizes.projector_bytes) == (4 * GiB, 600 * 1024**2)
    assert manifest_sizes({"layers": [{"mediaType": "application/vnd.ollama.image.tensor", "size": 5}]}) is None
    assert parse_pull_name("bad name") is None


async def test_official_client_surfaces_pull_refusal(start_proxy, emulator, registry):
    import ollama

    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, registry=registry.url)
    client = ollama.AsyncClient(host=url)
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client.pull("llama3:70b", stream=True):
            pass
    assert info.value.status_code == 507
    assert info.value.error.startswith("vramgate refused to pull llama3:70b: its weights are 39.6 GiB")
    progress = [p.status async for p in await client.pull("llama3:8b", stream=True)]
    assert progress[0] == "pulling manifest" and progress[-1] == "success"
