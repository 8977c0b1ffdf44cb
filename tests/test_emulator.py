"""The emulator behaves like Ollama where the proxy and the gate depend on it (ollama.md §1, §2, §9)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import ollama
import pytest

from tests.emulator import Emulator, LoadOptions, LoadResult, make_show, oom_error
from tests.emulator.app import _host_allowed
from tests.emulator.wire import FOREVER, BadKeepAlive, parse_keep_alive


@pytest.mark.parametrize("value,seconds", [
    (0, 0.0), (30, 30.0), (1.5, 1.5), ("5m", 300.0), ("1h30m", 5400.0), ("250ms", 0.25), ("0", 0.0),
    (-1, FOREVER), ("-1m", FOREVER),
])
def test_keep_alive_values(value: Any, seconds: float) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value,message", [("10", "missing unit"), ("5 minutes", "invalid duration"), (True, "bool")])
def test_keep_alive_errors(value: Any, message: str) -> None:
    with pytest.raises(BadKeepAlive, match=message):
        parse_keep_alive(value)


@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1:11434", True), ("localhost:11434", True), ("[::1]:11434", True), ("", True),
    ("10.0.0.5", True), ("box.local", True), ("api.internal:80", True),
    ("evil.example.com", False), ("8.8.8.8:11434", False),
])
def test_host_allow_list(host: str, allowed: bool) -> None:
    assert _host_allowed(host) is allowed


async def post(url: str, path: str, body: Any) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + path, json=body) as resp:
            return resp.status, resp.headers["Content-Type"], await resp.read()


async def test_show_nulls_arrays_unless_verbose(emulator: Emulator, emulator_url: str) -> None:
    show = make_show(extra_model_info={"llama.attention.head_count_kv": [2, 2, 4, 4]})
    show["model_info"]["tokenizer.ggml.tokens"] = ["<unk>", "<s>"]
    emulator.add_model("arrays", show)
    _, content_type, raw = await post(emulator_url, "/api/show", {"model": "arrays"})
    info = json.loads(raw)["model_info"]
    assert content_type == "application/json; charset=utf-8"
    assert info["llama.attention.head_count_kv"] is None and info["tokenizer.ggml.tokens"] is None
    assert info["llama.block_count"] == 4 and json.loads(raw)["tensors"][0]["name"] == "token_embd.weight"
    _, _, raw = await post(emulator_url, "/api/show", {"model": "arrays", "verbose": True})
    assert json.loads(raw)["model_info"]["llama.attention.head_count_kv"] == [2, 2, 4, 4]


async def test_load_only_unload_and_reload_rules(emulator: Emulator, emulator_url: str) -> None:
    client = ollama.AsyncClient(host=emulator_url)
    loaded = await client.generate(model="llama3:8b", options={"num_ctx": 8192})
    assert (loaded.done, loaded.done_reason) == (True, "load")
    assert emulator.runners["llama3:8b"].context_length == 8192
    await client.generate(model="llama3:8b", prompt="x", options={"num_ctx": 8192, "num_gpu": -1})
    assert len(emulator.loads) == 1  # same options, automatic num_gpu: reused
    await client.generate(model="llama3:8b", prompt="x", options={"num_ctx": 4096})
    assert [o.num_ctx for _, o in emulator.loads] == [8192, 4096] and emulator.unloads == ["llama3:8b"]
    await client.generate(model="llama3:8b", prompt="x", options={"num_ctx": 4096, "num_gpu": 33})
    assert len(emulator.loads) == 3  # an explicit num_gpu that differs reloads
    await client.generate(model="llama3:8b", prompt="x", options={"num_ctx": 99999, "num_gpu": 33})
    assert emulator.runners["llama3:8b"].context_length == 8192  # capped to the trained context
    stopped = await client.generate(model="llama3:8b", keep_alive=0)
    assert stopped.done_reason == "unload" and "llama3:8b" not in emulator.runners
    assert (await client.ps()).models == []


async def test_keep_alive_is_kept_when_a_request_has_none(emulator: Emulator, emulator_url: str) -> None:
    client = ollama.AsyncClient(host=emulator_url)
    await client.generate(model="llama3:8b", keep_alive="1h")
    await client.generate(model="llama3:8b", prompt="x")
    assert emulator.runners["llama3:8b"].keep_alive == 3600
    await client.generate(model="llama3:8b", prompt="x", keep_alive=0)  # runs, then unloads
    assert "llama3:8b" not in emulator.runners


async def test_load_hook_decides_sizes_and_failures(emulator: Emulator, emulator_url: str) -> None:
    def on_load(name: str, wanted: LoadOptions) -> LoadResult:
        if wanted.num_gpu > 0:
            raise oom_error("cudaMalloc failed: out of memory")
        return LoadResult(size=10_000, size_vram=6_000)

    emulator.on_load = on_load
    client = ollama.AsyncClient(host=emulator_url)
    await client.chat(model="llama3:8b", messages=[{"role": "user", "content": "x"}])
    (running,) = (await client.ps()).models
    assert (running.size, running.size_vram, running.context_length) == (10_000, 6_000, 4096)
    with pytest.raises(ollama.ResponseError) as raised:
        await client.chat(model="llama3:8b", messages=[{"role": "user", "content": "x"}], options={"num_gpu": 99})
    assert raised.value.status_code == 500
    assert raised.value.error == "llama-server reported out-of-memory during startup: cudaMalloc failed: out of memory"


@pytest.mark.parametrize("body,status,error", [
    ({"model": "llama3:8b", "prompt": "x", "options": {"num_ctx": "8192"}}, 500, 'option "num_ctx" must be of type integer'),
    ({"model": "nope", "prompt": "x"}, 404, "model 'nope' not found"),
    ({"model": "llama3:8b", "keep_alive": "10"}, 400, 'time: missing unit in duration "10"'),
    ({"prompt": "x"}, 400, "model is required"),
])
async def test_errors_have_ollama_status_and_shape(emulator_url: str, body: dict[str, Any], status: int, error: str) -> None:
    got_status, content_type, raw = await post(emulator_url, "/api/generate", body)
    assert (got_status, json.loads(raw)) == (status, {"error": error})
    assert content_type == "application/json; charset=utf-8"


async def test_streams_are_ndjson_ending_with_done(emulator_url: str) -> None:
    status, content_type, raw = await post(emulator_url, "/api/chat", {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]})
    lines = [json.loads(line) for line in raw.splitlines()]
    assert (status, content_type) == (200, "application/x-ndjson")
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["done_reason"] == "stop" and isinstance(lines[-1]["eval_duration"], int)
    assert lines[0]["created_at"].endswith("Z")


async def test_pull_of_an_unknown_model_fails_in_band(emulator_url: str) -> None:
    status, _, raw = await post(emulator_url, "/api/pull", {"model": "ghost"})
    assert status == 200
    assert [json.loads(line) for line in raw.splitlines()] == [
        {"status": "pulling manifest"}, {"error": "pull model manifest: file does not exist"}]
