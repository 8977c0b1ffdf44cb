"""The relay's side of the admission seam: inspected bodies, direct answers, rewritten forwards."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field

import aiohttp
import ollama
import pytest

from proxy.gate.admission import AdmissionRequest, Forward, PassThrough, Respond
from tests.conftest import StartProxy
from tests.emulator import Emulator


@dataclass
class Scripted(PassThrough):
    """An admission that inspects generate and does what the test scripted (clients are addresses)."""

    decide: str = "forward"  # forward | respond | rewrite | crash
    seen: list[AdmissionRequest] = field(default_factory=list)
    responses: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def inspects(self, method: str, path: str) -> bool:
        return method == "POST" and path in ("/api/generate", "/v1/chat/completions")

    async def admit(self, request: AdmissionRequest) -> Forward | Respond:
        self.seen.append(request)
        if self.decide == "crash":
            raise KeyError("num_ctx")
        if self.decide == "respond":
            return Respond(507, b'{"error":"model does not fit in GPU memory"}')
        body = request.body
        if self.decide == "rewrite":
            data = json.loads(body)
            data["options"] = {"num_ctx": 2048, "num_gpu": 99}
            body = json.dumps(data).encode()
        def on_response(status: int) -> None:
            self.responses.append(status)
            self.events.append(f"response {status}")

        return Forward(body, {"X-Vramgate-Decision": "fits"}, on_response, lambda: self.events.append("done"))


async def test_respond_answers_without_reaching_upstream(emulator: Emulator, start_proxy: StartProxy) -> None:
    gate = Scripted(decide="respond")
    url = await start_proxy(admission=gate)
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama.AsyncClient(host=url).generate(model="llama3:8b", prompt="hi")
    assert raised.value.status_code == 507 and raised.value.error == "model does not fit in GPU memory"
    assert emulator.received(path="/api/generate") == []
    assert json.loads(gate.seen[0].body)["prompt"] == "hi" and gate.seen[0].client == "127.0.0.1"


async def test_forward_sends_rewritten_body_and_reports_status_once(emulator: Emulator, start_proxy: StartProxy) -> None:
    gate = Scripted(decide="rewrite")
    url = await start_proxy(admission=gate)
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/api/generate", json={"model": "llama3:8b", "prompt": "hi"}) as resp:
            assert resp.headers["X-Vramgate-Decision"] == "fits"
            lines = (await resp.read()).splitlines()
    assert json.loads(lines[-1])["done"] is True
    seen = emulator.received(path="/api/generate")[0]
    assert seen.json["options"] == {"num_ctx": 2048, "num_gpu": 99}
    assert int(seen.headers["Content-Length"]) == len(seen.body)
    assert emulator.runners["llama3:8b"].context_length == 2048
    assert gate.responses == [200] and gate.events == ["response 200", "done"]
    # untouched routes stream past the gate
    await ollama.AsyncClient(host=url).chat(model="llama3:8b", messages=[{"role": "user", "content": "x"}])
    assert len(gate.seen) == 1


async def test_forward_to_dead_upstream_reports_zero(start_proxy: StartProxy) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gate = Scripted()
    url = await start_proxy(admission=gate, upstream=f"http://127.0.0.1:{port}")
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama.AsyncClient(host=url).generate(model="llama3:8b", prompt="hi")
    assert raised.value.status_code == 502
    assert gate.responses == [0] and gate.events == ["response 0", "done"]


async def test_done_is_reported_once_when_the_client_goes_away(emulator: Emulator, start_proxy: StartProxy) -> None:
    from tests.emulator import Fault

    emulator.inject(Fault("/api/generate", "hang", after=1))
    gate = Scripted()
    url = await start_proxy(admission=gate)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(url + "/api/generate", json={"model": "llama3:8b", "prompt": "hi"})
        await resp.content.readline()
        assert gate.events == ["response 200"]  # still streaming
        resp.close()
    assert await emulator.wait_for(lambda: bool(emulator.disconnects), timeout=1.0)
    assert gate.events == ["response 200", "done"]


async def test_oversized_inspected_body_gets_413(emulator: Emulator, start_proxy: StartProxy) -> None:
    gate = Scripted()
    url = await start_proxy(admission=gate, max_inspected_body=4096)
    big = b'{"model":"llama3:8b","prompt":"' + b"x" * (4096 + 10) + b'"}'
    async with aiohttp.ClientSession() as session:
        async with session.post(url + "/api/generate", data=big) as resp:
            assert resp.status == 413
            assert "too large" in (await resp.json())["error"]
        async with session.post(url + "/v1/chat/completions", data=big) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert gate.seen == [] and emulator.received(path="/api/generate") == []


async def test_a_failing_admission_answers_500_in_ollama_shape(emulator: Emulator, start_proxy: StartProxy) -> None:
    url = await start_proxy(admission=Scripted(decide="crash"))
    with pytest.raises(ollama.ResponseError) as raised:
        await ollama.AsyncClient(host=url).generate(model="llama3:8b", prompt="hi")
    assert raised.value.status_code == 500
    assert raised.value.error.startswith("vramgate could not decide on this request: KeyError")
    assert emulator.received(path="/api/generate") == []


async def test_a_large_forwarded_body_arrives_whole(emulator: Emulator, start_proxy: StartProxy) -> None:
    url = await start_proxy(admission=Scripted(decide="rewrite"))
    prompt = "long prompt " * 50_000  # 600 kB
    result = await ollama.AsyncClient(host=url).generate(model="llama3:8b", prompt=prompt, stream=False)
    assert result.done
    seen = emulator.received(path="/api/generate")[0]
    assert seen.json["prompt"] == prompt and int(seen.headers["Content-Length"]) == len(seen.body)
