"""The official ``ollama`` client gets the same answers through vramgate as from Ollama directly.

Two identical emulators: one is asked directly, the other through the proxy, with the same calls in
the same order; the answers must match once per-call values (timestamps, durations) are removed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import ollama
import pytest

from tests.conftest import StartProxy
from tests.emulator import Emulator, Running, serve

VOLATILE = {"created_at", "total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
            "expires_at", "modified_at", "created"}


def twin_emulator() -> Emulator:
    emu = Emulator()
    emu.add_model("llama3:8b")
    emu.add_model("nomic-embed-text")
    emu.add_model("qwen3:4b", remote=True)
    return emu


@pytest.fixture
async def twins(start_proxy: StartProxy) -> AsyncIterator[tuple[str, str, Emulator, Emulator]]:
    """(direct URL, proxied URL, direct emulator, proxied emulator)."""
    direct_emu, proxied_emu = twin_emulator(), twin_emulator()
    direct: Running = await serve(direct_emu.app())
    behind: Running = await serve(proxied_emu.app())
    proxy = await start_proxy(upstream=behind.url)
    yield direct.url, proxy, direct_emu, proxied_emu
    await direct.close()
    await behind.close()


def plain(value: Any) -> Any:
    """Client result -> plain data without values that differ from call to call."""
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


async def native_session_async(host: str, blob: Path) -> list[Any]:
    client = ollama.AsyncClient(host=host)
    out: list[Any] = []
    out.append(await client.generate(model="llama3:8b", prompt="Why is the sky blue?", stream=False))
    out.append([part async for part in await client.generate(model="llama3:8b", prompt="Why?", stream=True)])
    messages = [{"role": "user", "content": "hello"}]
    out.append(await client.chat(model="llama3:8b", messages=messages, stream=False))
    out.append([part async for part in await client.chat(model="llama3:8b", messages=messages, stream=True)])
    out.append(await client.embed(model="nomic-embed-text", input=["a", "b"]))
    out.append(await client.show("llama3:8b"))
    out.append(await client.list())
    out.append(await client.ps())
    out.append([part async for part in await client.pull("qwen3:4b", stream=True)])
    out.append(await client.pull("qwen3:4b", stream=False))
    digest = await client.create_blob(blob)
    out.append(digest)
    out.append([part async for part in await client.create(
        model="mine", from_="llama3:8b", files={"extra.gguf": digest}, stream=True)])
    out.append(await client.copy("mine", "mine-copy"))
    out.append(await client.delete("mine-copy"))
    out.append([part async for part in await client.push("mine", stream=True)])
    out.append(await client.list())
    out.append(await client.generate(model="llama3:8b", keep_alive=0))  # unload
    out.append(await client.ps())
    with pytest.raises(ollama.ResponseError) as missing:
        await client.show("no-such-model")
    out.append((missing.value.status_code, missing.value.error))
    return out


def native_session_sync(host: str, blob: Path) -> list[Any]:
    client = ollama.Client(host=host)
    out: list[Any] = []
    out.append(client.generate(model="llama3:8b", prompt="Why is the sky blue?", stream=False))
    out.append(list(client.generate(model="llama3:8b", prompt="Why?", stream=True)))
    messages = [{"role": "user", "content": "hello"}]
    out.append(client.chat(model="llama3:8b", messages=messages, stream=False))
    out.append(list(client.chat(model="llama3:8b", messages=messages, stream=True)))
    out.append(client.embed(model="nomic-embed-text", input="one text"))
    out.append(client.show("llama3:8b"))
    out.append(client.list())
    out.append(client.ps())
    out.append(list(client.pull("qwen3:4b", stream=True)))
    digest = client.create_blob(blob)
    out.append(digest)
    out.append(client.create(model="mine", from_="llama3:8b", files={"extra.gguf": digest}, stream=False))
    out.append(client.copy("mine", "mine-copy"))
    out.append(client.delete("mine-copy"))
    out.append(list(client.push("mine", stream=True)))
    out.append(client.list())
    out.append(client.chat(model="llama3:8b", messages=[], keep_alive=0))  # unload
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="no-such-model", messages=messages)
    out.append((missing.value.status_code, missing.value.error))
    return out


def _blob(tmp_path: Path) -> Path:
    path = tmp_path / "extra.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 300)
    return path


def _check_session(direct: list[Any], proxied: list[Any], direct_emu: Emulator, proxied_emu: Emulator) -> None:
    assert plain(proxied) == plain(direct)
    # the calls really happened, with the effects Ollama has
    assert "qwen3:4b" in proxied_emu.models and "mine:latest" in proxied_emu.models
    assert [r.path for r in proxied_emu.requests] == [r.path for r in direct_emu.requests]
    assert [r.json for r in proxied_emu.requests] == [r.json for r in direct_emu.requests]
    assert proxied_emu.blobs == direct_emu.blobs and len(proxied_emu.blobs) == 1


async def test_async_client_native_api_matches_direct(twins: tuple[str, str, Emulator, Emulator], tmp_path: Path) -> None:
    direct_url, proxy_url, direct_emu, proxied_emu = twins
    blob = _blob(tmp_path)
    direct = await native_session_async(direct_url, blob)
    proxied = await native_session_async(proxy_url, blob)
    _check_session(direct, proxied, direct_emu, proxied_emu)
    # spot checks that the comparison compares something real
    streamed = plain(proxied[1])
    assert "".join(p["response"] for p in streamed) == "The sky is blue."
    assert streamed[-1]["done"] is True and streamed[-1]["done_reason"] == "stop"
    pull_states = [p["status"] for p in plain(proxied[8])]
    assert pull_states[0] == "pulling manifest" and pull_states[-1] == "success"
    assert any(p.get("completed") for p in plain(proxied[8]))
    assert plain(proxied[16])["done_reason"] == "unload"
    assert [m["name"] for m in plain(proxied[17])["models"]] == ["nomic-embed-text:latest"]
    assert proxied[-1] == (404, "model 'no-such-model' not found")


async def test_sync_client_native_api_matches_direct(twins: tuple[str, str, Emulator, Emulator], tmp_path: Path) -> None:
    direct_url, proxy_url, direct_emu, proxied_emu = twins
    blob = _blob(tmp_path)
    # the sync client blocks: run it in a thread so the servers on this loop keep serving
    direct = await asyncio.to_thread(native_session_sync, direct_url, blob)
    proxied = await asyncio.to_thread(native_session_sync, proxy_url, blob)
    _check_session(direct, proxied, direct_emu, proxied_emu)
    assert plain(proxied[2])["message"]["content"] == "The sky is blue."
    assert len(plain(proxied[4])["embeddings"]) == 1


async def _sse_events(url: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/v1/chat/completions", json=body) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def test_openai_chat_completions_sse_matches_direct(twins: tuple[str, str, Emulator, Emulator]) -> None:
    direct_url, proxy_url, direct_emu, proxied_emu = twins
    direct_emu.frozen_time = proxied_emu.frozen_time = 1_790_000_000.0
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    direct = await _sse_events(direct_url, body)
    proxied = await _sse_events(proxy_url, body)
    assert proxied == direct
    status, content_type, raw = proxied
    assert status == 200 and content_type.startswith("text/event-stream")
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    deltas = [json.loads(e[len(b"data: "):])["choices"][0]["delta"]["content"] for e in events[:-2]]
    assert "".join(deltas) == "The sky is blue."


async def test_openai_errors_keep_openai_shape(twins: tuple[str, str, Emulator, Emulator]) -> None:
    _, proxy_url, _, _ = twins
    status, _, raw = await _sse_events(proxy_url, {"model": "missing", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404
    assert json.loads(raw) == {"error": {"message": "model 'missing' not found", "type": "not_found_error",
                                         "param": None, "code": None}}


async def test_create_blob_body_arrives_intact(twins: tuple[str, str, Emulator, Emulator], tmp_path: Path) -> None:
    _, proxy_url, _, proxied_emu = twins
    blob = _blob(tmp_path)
    digest = await ollama.AsyncClient(host=proxy_url).create_blob(blob)
    assert digest == "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest()
    assert proxied_emu.blobs == {digest: blob.stat().st_size}  # the emulator verified the hash
    upload = proxied_emu.received(path=f"/api/blobs/{digest}", method="POST")[0]
    assert upload.body_size == blob.stat().st_size


Check = Callable[[Any], None]


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/completions", {"model": "llama3:8b", "prompt": "hi", "stream": True}),
    ("POST", "/v1/completions", {"model": "llama3:8b", "prompt": "hi"}),
    ("POST", "/v1/embeddings", {"model": "nomic-embed-text", "input": ["a", "b"]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/llama3:8b", None),
    ("GET", "/v1/models/missing", None),
])
async def test_other_openai_routes_match_direct(twins: tuple[str, str, Emulator, Emulator], method: str, path: str,
                                                body: Any) -> None:
    direct_url, proxy_url, direct_emu, proxied_emu = twins
    direct_emu.frozen_time = proxied_emu.frozen_time = 1_790_000_000.0
    results = []
    async with aiohttp.ClientSession() as session:
        for url in (direct_url, proxy_url):
            async with session.request(method, url + path, json=body) as resp:
                results.append((resp.status, resp.headers["Content-Type"], await resp.read()))
    assert results[1] == results[0]
    status, content_type, raw = results[1]
    if content_type.startswith("text/event-stream"):
        assert raw.endswith(b"data: [DONE]\n\n")
    elif status == 200:
        assert json.loads(raw)
    else:
        assert json.loads(raw)["error"]["type"] == "not_found_error"
