"""A hostile client on a shared box: every way found to make vramgate judge one thing while Ollama
acts on another, as a regression test. The expected readings come from Go's encoding/json and
Ollama's handlers (``tests/test_gojson.py`` has the decoder's own tables): the last matching key
wins, keys match case-insensitively with Unicode simple folding, null is a no-op for a string.

The world: one 24 GiB GPU (22 GiB free); ``llama3:8b`` fits, ``llama3:70b`` never does.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from proxy.gate.service import build_admission
from tests.emulator import Emulator, Fault
from tests.emulator_gate import (
    GiB,
    GpuModel,
    estimated_size,
    small_and_big,
)

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB", "bandwidth": "1008GB/s"}]
SMALL, BIG = "llama3:8b", "llama3:70b"

# every gated route, with the smallest body that loads a model there
ROUTES = {
    "/api/generate": {"prompt": "hi"},
    "/api/chat": {"messages": [{"role": "user", "content": "hi"}]},
    "/api/embed": {"input": "hi"},
    "/api/embeddings": {"prompt": "hi"},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"prompt": "hi"},
    "/v1/embeddings": {"input": "hi"},
    "/v1/responses": {"input": "hi"},
    "/v1/messages": {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture
def emulator() -> Emulator:
    return small_and_big()


@pytest.fixture
async def gate_url(start_proxy, emulator: Emulator) -> str:
    GpuModel(emulator, 22 * GiB, estimated_size(emulator), cuda_context=500 * 1024**2).install()
    return await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, probe_timeout=1.0)


async def post(url: str, path: str, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(url + path, data=raw,
                                                     headers={"Content-Type": "application/json"}) as r:
        return r.status, dict(r.headers), await r.read()


def loads(emulator: Emulator, path: str) -> list:
    return [r for r in emulator.received(path) if r.method == "POST"]


def pairs(*items: tuple[str, object]) -> bytes:
    """A JSON object with exactly these keys in this order, duplicates included."""
    return ("{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in items) + "}").encode()


def rest_of(route: str) -> list[tuple[str, object]]:
    return list(ROUTES[route].items())


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("key", ["Model", "MODEL", "mOdEl"])
async def test_a_case_variant_model_key_is_the_model_judged(gate_url, emulator, route, key):
    raw = pairs(("model", SMALL), *rest_of(route), (key, BIG))  # Go: the last matching key wins -> 70b
    status, headers, body = await post(gate_url, route, raw)
    assert status == 507, body
    assert "llama3:70b" in body.decode()
    assert loads(emulator, route) == []


@pytest.mark.parametrize("route", list(ROUTES))
async def test_null_after_the_model_keeps_the_model(gate_url, emulator, route):
    raw = pairs(("model", BIG), *rest_of(route), ("Model", None))  # null into a Go string: no-op -> 70b
    status, _, body = await post(gate_url, route, raw)
    assert status == 507 and loads(emulator, route) == []


@pytest.mark.parametrize("key", ["Options", "OPTIONS", "option\u017f"])  # U+017F (long s) folds to s
@pytest.mark.parametrize("route", ["/api/generate", "/api/chat", "/api/embed", "/api/embeddings"])
async def test_options_under_a_folded_key_are_judged_and_forwarded_canonically(gate_url, emulator, route, key):
    raw = pairs(("model", SMALL), *rest_of(route), ("options", {"temperature": 0.5}), (key, {"num_ctx": 131072}))
    status, headers, body = await post(gate_url, route, raw)
    assert status == 200, body
    [seen] = loads(emulator, route)
    forwarded = json.loads(seen.body)
    assert key not in forwarded or key == "options"  # one canonical "options" key, nothing else to read
    opts = forwarded["options"]
    # Go merges both objects into one map: temperature from the first, num_ctx from the second
    assert opts["temperature"] == 0.5
    assert 2048 <= opts["num_ctx"] < 131072  # judged: 128k does not fit next to the weights, so shrunk
    assert headers["X-Vramgate-Num-Ctx"].startswith("131072 -> ")
    assert list(forwarded).count("options") == 1 and not any(k != "options" and k.lower() == "options"
                                                              for k in forwarded)


async def test_trailing_bytes_after_the_body_are_not_forwarded(gate_url, emulator):
    raw = pairs(("model", SMALL), ("prompt", "hi"), ("stream", False)) + b' {"model": "llama3:70b"}'
    status, _, _ = await post(gate_url, "/api/generate", raw)
    assert status == 200  # Go's Decoder reads the first value only: the 8b request, which fits
    [seen] = loads(emulator, "/api/generate")
    assert b"70b" not in seen.body


async def test_nesting_go_accepts_but_vramgate_cannot_read_is_refused(gate_url, emulator):
    deep = b'{"model": "llama3:70b", "prompt": "hi", "format": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    status, headers, body = await post(gate_url, "/api/generate", deep)  # Go accepts up to 10000 levels
    assert status == 400 and "cannot judge" in json.loads(body)["error"]
    assert headers["X-Vramgate-Decision"] == "refused 400 unreadable"
    assert loads(emulator, "/api/generate") == []


async def test_nesting_go_rejects_goes_to_ollama_for_its_own_error(gate_url, emulator):
    deeper = b'{"model": "llama3:70b", "prompt": "hi", "format": ' + b"[" * 10001 + b"]" * 10001 + b"}"
    status, headers, _ = await post(gate_url, "/api/generate", deeper)
    assert headers["X-Vramgate-Decision"] == "passed: Ollama rejects this body"
    assert status == 400 and emulator.loads == []  # the emulator (like Ollama) refuses it: nothing loaded


@pytest.mark.parametrize("keep_alive", [0, 0.0, "0", "0s", "0m0s", "-0", "+0s", "0.0h", 1e-10])
async def test_keep_alive_values_go_reads_as_zero_are_unloads(start_proxy, emulator, keep_alive):
    tiny = [{"name": "RTX 4090", "total": "24GiB", "free": "1GiB"}]  # nothing fits: only an unload passes
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=tiny)
    status, headers, _ = await post(url, "/api/generate", pairs(("model", BIG), ("keep_alive", keep_alive)))
    assert headers["X-Vramgate-Decision"] == "unload" and status == 200


@pytest.mark.parametrize("raw", [
    pairs(("model", BIG), ("keep_alive", 0), ("prompt", "hi")),  # a prompt: Ollama loads, then unloads
    pairs(("model", BIG), ("keep_alive", 0), ("Prompt", "hi")),  # ... under a folded key too
    pairs(("model", BIG), ("keep_alive", "1ns")),  # not zero
    pairs(("model", BIG), ("keep_alive", 0), ("KEEP_ALIVE", "5m")),  # the last keep_alive wins
])
async def test_what_only_looks_like_an_unload_is_judged_as_a_load(gate_url, emulator, raw):
    status, headers, _ = await post(gate_url, "/api/generate", raw)
    assert status == 507 and loads(emulator, "/api/generate") == []


async def test_an_invalid_keep_alive_goes_to_ollama_which_refuses_it(gate_url, emulator):
    status, headers, _ = await post(gate_url, "/api/generate", pairs(("model", BIG), ("keep_alive", "300")))
    assert headers["X-Vramgate-Decision"] == "passed: Ollama answers 400"  # "300" has no unit: Go's error


async def test_a_hanging_ps_refuses_its_load_without_holding_up_the_others(gate_url, emulator):
    emulator.inject(Fault("/api/ps", "hang", times=1))
    body = pairs(("model", SMALL), ("prompt", "hi"), ("stream", False))
    finished: list[tuple[float, int, bytes]] = []
    started = time.monotonic()

    async def one() -> None:
        status, _, text = await post(gate_url, "/api/generate", body)
        finished.append((time.monotonic() - started, status, text))

    await asyncio.gather(*(one() for _ in range(4)))
    statuses = sorted(status for _, status, _ in finished)
    assert statuses == [200, 200, 200, 503]
    refused = next(f for f in finished if f[1] == 503)
    assert "/api/ps" in json.loads(refused[2])["error"]  # fail closed, saying why
    assert max(t for t, s, _ in finished if s == 200) < refused[0]  # the others did not wait for it
    assert len(loads(emulator, "/api/generate")) == 3


async def test_show_failing_refuses_the_load(gate_url, emulator):
    emulator.inject(Fault("/api/show", "status", status=500, times=0))
    status, headers, body = await post(gate_url, "/api/generate", pairs(("model", BIG), ("prompt", "hi")))
    assert status == 503 and headers["Retry-After"] == "5"
    assert "/api/show" in json.loads(body)["error"]
    assert loads(emulator, "/api/generate") == []


async def test_an_unknown_model_still_gets_ollamas_404(gate_url, emulator):
    status, headers, _ = await post(gate_url, "/api/generate", pairs(("model", "nope:1b"), ("prompt", "hi")))
    assert status == 404 and headers["X-Vramgate-Decision"] == "passed unknown model"


async def test_a_transcription_is_judged_and_ollama_reads_that_model(gate_url, emulator):
    form = aiohttp.FormData()
    form.add_field("model", SMALL)
    form.add_field("file", b"RIFF....", filename="a.wav", content_type="audio/wav")
    async with aiohttp.ClientSession() as s:
        async with s.post(gate_url + "/v1/audio/transcriptions?model=" + BIG, data=form) as r:
            assert r.status == 507  # Go's FormValue: the query's model first -> 70b
        form2 = aiohttp.FormData()
        form2.add_field("model", SMALL)
        form2.add_field("file", b"RIFF....", filename="a.wav", content_type="audio/wav")
        async with s.post(gate_url + "/v1/audio/transcriptions", data=form2) as r:
            await r.read()
    [seen] = loads(emulator, "/v1/audio/transcriptions")
    assert seen.query.startswith(f"model={SMALL}")  # the judged model comes first in what Ollama reads


async def test_zstd_bodies_on_v1_are_refused(gate_url, emulator):
    async with aiohttp.ClientSession() as s:
        async with s.post(gate_url + "/v1/chat/completions", data=b"(\xb5/\xfd...",
                          headers={"Content-Encoding": "zstd", "Content-Type": "application/json"}) as r:
            assert r.status == 400 and "zstd" in (await r.json())["error"]["message"]
    assert loads(emulator, "/v1/chat/completions") == []


async def test_a_transcription_vramgate_finds_no_model_in_is_forwarded_so_ollama_finds_none_either(gate_url, emulator):
    """Whatever Go's multipart reader would find that vramgate's did not, an empty model= comes first."""
    body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF\r\n--b--\r\n"
    async with aiohttp.ClientSession() as s:
        async with s.post(gate_url + "/v1/audio/transcriptions?x=1", data=body,
                          headers={"Content-Type": "multipart/form-data; boundary=b"}) as r:
            await r.read()
    [seen] = loads(emulator, "/v1/audio/transcriptions")
    assert seen.query.startswith("model=&")  # FormValue("model") is "" for Go: "model is required"
