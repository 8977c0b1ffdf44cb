"""The fit gate end to end: client -> vramgate (static GPU) -> Ollama emulator with a GPU model."""

from __future__ import annotations

import asyncio
import json
import os
import pwd

import aiohttp
import ollama
import pytest

from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import (
    GiB,
    GpuModel,
    estimated_size,
    show_llama3_8b,
    show_llama3_70b,
    show_mid,
)

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB", "bandwidth": "1008GB/s"}]
FREE = 22 * GiB
RESERVE = 1 * GiB
CUDA = 500 * 1024**2


def footprint_size(emu: Emulator):
    """What a load really takes in this emulated world: llama.cpp's buffers at batch 512."""
    return estimated_size(emu)


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator(default_num_ctx=32768)  # what Ollama 0.33 picks on a 24 GiB GPU
    emu.add_model("llama3:8b", show_llama3_8b())
    emu.add_model("llama3:70b", show_llama3_70b())
    emu.add_model("embed", show_mid(12, extra_model_info={"llama.pooling_type": 1}))
    return emu


@pytest.fixture
def gpu(emulator: Emulator) -> GpuModel:
    return GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA).install()


@pytest.fixture
async def gate_url(start_proxy, gpu):
    return await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC)


async def post(url: str, path: str, body: dict | bytes) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as s, s.post(url + path, data=data) as r:
        text = await r.read()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"_lines": text.decode()}
        return r.status, dict(r.headers), parsed


def forwarded(emu: Emulator, path: str = "/api/generate") -> list[dict]:
    return [r.json for r in emu.received(path)]


async def test_fits_forwards_all_layers_and_context(gate_url, emulator, gpu):
    status, headers, _ = await post(gate_url, "/api/generate",
                                    {"model": "llama3:8b", "prompt": "hi", "stream": False, "options": {"num_ctx": 8192, "temperature": 0.1}})
    assert status == 200
    (sent,) = forwarded(emulator)
    assert sent["options"] == {"num_ctx": 8192, "num_gpu": 33, "temperature": 0.1}
    assert headers["X-Vramgate-Decision"] == "admitted num_ctx=8192 num_gpu=33"
    assert emulator.runners["llama3:8b"].size_vram == emulator.runners["llama3:8b"].size
    assert gpu.ooms == []


async def test_long_context_is_shrunk_to_fit(gate_url, emulator, gpu):
    status, headers, _ = await post(gate_url, "/api/chat", {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}],
                                                           "stream": False, "options": {"num_ctx": 131072}})
    assert status == 200
    (sent,) = forwarded(emulator, "/api/chat")
    to = sent["options"]["num_ctx"]
    assert 2048 <= to < 131072 and to % 256 == 0
    assert headers["X-Vramgate-Num-Ctx"] == f"131072 -> {to} (GPU memory)"
    assert headers["X-Vramgate-Decision"].startswith(f"rewritten num_ctx={to}")
    # the GPU model (sizes at batch 512) holds it; the gate assumed Ollama's larger batch, so it is safe
    runner = emulator.runners["llama3:8b"]
    assert runner.size_vram == runner.size and gpu.ooms == []
    assert gpu.held() <= FREE - RESERVE


async def test_never_fits_is_507_with_explanation(gate_url, emulator):
    status, headers, body = await post(gate_url, "/api/generate", {"model": "llama3:70b", "prompt": "hi"})
    assert status == 507
    assert "Retry-After" not in headers
    assert headers["X-Vramgate-Decision"] == "refused 507 too_big"
    text = body["error"]
    assert text.startswith("vramgate refused to load llama3:70b: it needs ")
    assert "GPU 0 (RTX 4090, 24.0 GiB) has 22.0 GiB free" in text
    assert "even when they are empty" in text
    assert "tokens/s" in text
    numbers = body["vramgate"]
    assert numbers["status"] == 507 and numbers["need"]["weights_bytes"] > 30 * GiB
    assert numbers["need"]["total_bytes"] > numbers["gpus"][0]["budget_bytes"]
    assert numbers["gpus"][0]["budget_bytes"] == FREE - RESERVE
    assert emulator.received("/api/generate") == []  # Ollama never contacted


async def test_static_gpu_held_by_others_is_507_without_retry_after(start_proxy, emulator, gpu):
    # other processes hold 19 of 24 GiB: 5 GiB free, 4 GiB usable; the 8B needs 4.8 GiB even at 2048,
    # and on a static GPU what they hold never changes: waiting cannot help
    crowded = [{"name": "RTX 4090", "total": "24GiB", "free": "5GiB"}]
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=crowded)
    status, headers, body = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi"})
    assert status == 507
    assert "Retry-After" not in headers
    assert "Held by: programs other than Ollama 19.0 GiB on GPU 0." in body["error"]
    assert "so waiting will not help" in body["error"]
    assert body["vramgate"]["gpus"][0]["others_bytes"] == 19 * GiB
    assert body["vramgate"]["fits_num_ctx_when_free"] == 32768
    assert emulator.received("/api/generate") == []


async def test_evict_idle_off_gives_503_naming_the_holder(start_proxy, emulator, gpu):
    emulator.preload("llama3:8b", 17 * GiB, num_ctx=8192)  # loaded by someone else, idle
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, evict_idle=False)
    emulator.add_model("other", show_llama3_8b())
    status, _, body = await post(url, "/api/generate", {"model": "other", "prompt": "hi", "options": {"num_ctx": 8192}})
    assert status == 503
    assert "Held by: Ollama model llama3:8b 17.5 GiB (idle) on GPU 0; programs other than Ollama 2.0 GiB on GPU 0." in body["error"]
    assert body["vramgate"]["holders"] == [{"kind": "ollama", "name": "llama3:8b", "gpu": 0, "bytes": 17 * GiB + CUDA, "busy": False}]


async def test_idle_model_counts_as_free(gate_url, emulator, gpu):
    emulator.preload("llama3:70b", 17 * GiB, num_ctx=2048)  # idle: Ollama would evict it
    status, headers, _ = await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "options": {"num_ctx": 8192}})
    assert status == 200, headers
    assert "llama3:70b" in gpu.evictions and gpu.ooms == []


async def test_sticky_options(gate_url, emulator):
    first = {"model": "llama3:8b", "prompt": "hi", "stream": False, "options": {"num_ctx": 8192}}
    assert (await post(gate_url, "/api/generate", first))[0] == 200
    for options in ({}, {"num_ctx": 8192}, {"num_ctx": 4096}):
        status, headers, _ = await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "again", "stream": False, "options": options})
        assert status == 200
        assert headers["X-Vramgate-Decision"] == "sticky num_ctx=8192 num_gpu=33"
    assert [o.num_ctx for _, o in emulator.loads] == [8192]  # no reload storm
    status, headers, _ = await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "more", "stream": False, "options": {"num_ctx": 16384}})
    assert status == 200 and headers["X-Vramgate-Decision"] == "admitted num_ctx=16384 num_gpu=33"
    assert [o.num_ctx for _, o in emulator.loads] == [8192, 16384]


async def test_preload_is_planned_and_unload_passes(start_proxy, emulator, gpu):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC)
    status, headers, body = await post(url, "/api/generate", {"model": "llama3:8b"})
    assert status == 200 and body["done_reason"] == "load"
    assert forwarded(emulator)[0]["options"]["num_gpu"] == 33
    assert headers["X-Vramgate-Decision"].startswith("admitted")
    # a GPU with almost nothing free: a preload is refused, an unload is never refused and passes
    # (as vramgate read it: the canonical body, so Ollama reads the same unload)
    tiny = [{"name": "RTX 4090", "total": "24GiB", "free": "1GiB"}]
    url2 = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=tiny)
    assert (await post(url2, "/api/generate", {"model": "llama3:70b"}))[0] == 507
    raw = b'{"model": "llama3:8b", "keep_alive": 0}'
    status, headers, body = await post(url2, "/api/generate", raw)
    assert status == 200 and body["done_reason"] == "unload"
    assert emulator.received("/api/generate")[-1].body == b'{"model":"llama3:8b","keep_alive":0}'
    assert headers["X-Vramgate-Decision"] == "unload"
    assert "llama3:8b" not in emulator.runners


async def test_openai_admit_and_refuse_shapes(gate_url, emulator):
    raw = json.dumps({"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}).encode()
    status, headers, body = await post(gate_url, "/v1/chat/completions", raw)
    assert status == 200 and body["object"] == "chat.completion"
    # forwarded unchanged in content, canonically serialised (what Ollama reads is what was judged)
    assert emulator.received("/v1/chat/completions")[0].body == json.dumps(json.loads(raw), separators=(",", ":")).encode()
    assert headers["X-Vramgate-Decision"] == "admitted"
    status, _, body = await post(gate_url, "/v1/chat/completions", {"model": "llama3:70b", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 507
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "api_error" and err["code"] == "model_too_large"
    assert "PARAMETER num_ctx" not in err["message"] or "Modelfile" in err["message"]


async def test_openai_too_long_default_context_says_how_to_shrink(start_proxy, emulator, gpu):
    emulator.add_model("longctx", show_llama3_8b(parameters={"num_ctx": 131072}))
    small = [{"name": "RTX 4080", "total": "16GiB"}]  # 21.4 GiB at 131072 never fits, ~2/3 of it would
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=small)
    status, _, body = await post(url, "/v1/chat/completions", {"model": "longctx", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 507
    msg = body["error"]["message"]
    assert "PARAMETER num_ctx" in msg and "OLLAMA_CONTEXT_LENGTH" in msg and "options.num_ctx" in msg
    assert f"it would at num_ctx {body['vramgate']['fits_num_ctx_when_free']} or less" in msg
    assert 32768 < body["vramgate"]["fits_num_ctx_when_free"] < 131072
    assert emulator.received("/v1/chat/completions") == []


async def test_unknown_model_and_bad_options_reach_ollama(gate_url, emulator):
    status, headers, body = await post(gate_url, "/api/generate", {"model": "nope", "prompt": "hi"})
    assert (status, body) == (404, {"error": "model 'nope' not found"})
    status, _, body = await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "options": {"num_ctx": "8192"}})
    assert (status, body) == (500, {"error": 'option "num_ctx" must be of type integer'})
    status, _, body = await post(gate_url, "/api/generate", b"{not json")
    assert status == 400


async def test_client_spill_request_overridden(gate_url, emulator):
    status, _, _ = await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False, "options": {"num_gpu": 0, "num_ctx": 4096}})
    assert status == 200
    assert forwarded(emulator)[0]["options"]["num_gpu"] == 33


async def test_embedding_route_is_gated(gate_url, emulator):
    status, headers, _ = await post(gate_url, "/api/embed", {"model": "embed", "input": "hello"})
    assert status == 200 and headers["X-Vramgate-Decision"].startswith("admitted")
    assert forwarded(emulator, "/api/embed")[0]["options"]["num_gpu"] == 13


async def test_official_client_surfaces_the_refusal(gate_url):
    client = ollama.AsyncClient(host=gate_url)
    with pytest.raises(ollama.ResponseError) as info:
        await client.generate(model="llama3:70b", prompt="hi")
    assert info.value.status_code == 507
    assert str(info.value.error).startswith("vramgate refused to load llama3:70b: it needs ")
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client.chat(model="llama3:70b", messages=[{"role": "user", "content": "hi"}], stream=True):
            pass
    assert "cannot fit these GPUs" in info.value.error


async def test_two_gpus_spread_a_model_neither_holds_alone(start_proxy, emulator):
    two = [{"name": "RTX 4090", "total": "24GiB"}, {"name": "RTX 4090", "total": "24GiB"}]
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=two)
    status, headers, _ = await post(url, "/api/generate", {"model": "llama3:70b", "prompt": "hi", "stream": False,
                                                           "options": {"num_ctx": 8192}})
    assert status == 200 and headers["X-Vramgate-Decision"] == "admitted num_ctx=8192 num_gpu=81"
    # the default on 48 GiB is 262144, capped to the trained 131072: 77 GiB, so it is shrunk
    emulator.runners.clear()
    status, headers, _ = await post(url, "/api/generate", {"model": "llama3:70b", "prompt": "hi", "stream": False})
    assert status == 200
    frm, to = headers["X-Vramgate-Num-Ctx"].removesuffix(" (GPU memory)").split(" -> ")
    assert frm == "131072" and 8192 <= int(to) < 65536


async def test_model_reloaded_elsewhere_is_not_sticky(gate_url, emulator):
    assert (await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False,
                                                   "options": {"num_ctx": 8192}}))[0] == 200
    emulator.runners["llama3:8b"].context_length = 4096  # another client reloaded it behind vramgate's back
    status, headers, _ = await post(gate_url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False})
    assert status == 200 and headers["X-Vramgate-Decision"] == "admitted num_ctx=32768 num_gpu=33"


async def test_anthropic_messages_refusal_shape(gate_url, emulator):
    status, _, body = await post(gate_url, "/v1/messages", {"model": "llama3:70b", "max_tokens": 10,
                                                           "messages": [{"role": "user", "content": "hi"}]})
    assert status == 507
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["message"].startswith("vramgate refused to load llama3:70b")
    assert emulator.received("/v1/messages") == []


async def test_server_kv_cache_type_changes_what_fits(start_proxy, emulator, gpu):
    # OLLAMA_KV_CACHE_TYPE=q8_0 halves the KV cache: 131072 tokens of the 8B now fit without a rewrite
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, kv_cache_type="q8_0")
    status, headers, _ = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False,
                                                           "options": {"num_ctx": 131072}})
    assert status == 200 and headers["X-Vramgate-Decision"] == "admitted num_ctx=131072 num_gpu=33"


async def test_busy_model_is_not_evicted_until_its_stream_ends(gate_url, emulator, gpu):
    from tests.emulator import Fault

    emulator.add_model("other", show_llama3_8b())
    emulator.inject(Fault("/api/chat", "slow", delay=0.06))
    long = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 131072}}

    async def stream() -> int:
        async with aiohttp.ClientSession() as s, s.post(gate_url + "/api/chat", json=long) as r:
            await r.read()
            return r.status

    task = asyncio.create_task(stream())
    assert await emulator.wait_for(lambda: "llama3:8b" in emulator.runners and emulator.runners["llama3:8b"].busy)
    second = {"model": "other", "prompt": "hi", "stream": False, "options": {"num_ctx": 8192}}
    status, headers, body = await post(gate_url, "/api/generate", second)
    assert status == 503 and headers["Retry-After"] == "10"
    me = pwd.getpwuid(os.getuid()).pw_name  # the loopback client is this process's user: it loaded the model
    assert f"Held by: {me} (llama3:8b, " in body["error"] and "generating, GPU 0)" in body["error"]
    assert await task == 200
    status, _, _ = await post(gate_url, "/api/generate", second)  # idle now: Ollama evicts it
    assert status == 200 and "llama3:8b" in gpu.evictions and gpu.ooms == []


async def test_ollama_run_flow_loads_once(gate_url, emulator):
    """What `ollama run` does: show, preload (empty prompt), then chat without options."""
    client = ollama.AsyncClient(host=gate_url)
    await client.show("llama3:8b")
    pre = await client.generate(model="llama3:8b", prompt="")
    assert pre.done_reason == "load"
    reply = await client.chat(model="llama3:8b", messages=[{"role": "user", "content": "hi"}])
    assert reply.message.content == "The sky is blue."
    await client.generate(model="llama3:8b", prompt="", keep_alive=0)  # `ollama stop`
    assert [o.num_ctx for _, o in emulator.loads] == [32768]
    assert [r.json.get("options", {}).get("num_ctx") for r in emulator.received("/api/chat")] == [32768]
    assert "llama3:8b" not in emulator.runners
