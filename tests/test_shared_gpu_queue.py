"""Sharing one emulated 24 GiB GPU between users, end to end (issue 9): ``max_vram`` across users
(a shared model counts once), the queue (admitted when a holder lets go or an idle model expires,
queue timeouts, ``max_queued``, order by priority) and eviction by priority, never of a generating
model. The emulator's ``GpuModel`` charges every load on the one GPU.

Sizes on this GPU (22 GiB free for Ollama, 21 GiB usable after the reserve), as the gate sizes
them: an 8B at num_ctx 4096 needs 5.0 GiB, at 2048 (the floor it shrinks to) 4.8 GiB, at 98304
17.2 GiB; so next to one 8B at 98304 no other 8B fits, busy or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.emulator import Emulator, Fault
from tests.emulator_gate import GiB
from tests.shared_gpu import CUDA, Held, Starter, chat_body, until, world


@pytest.fixture
def emulator() -> Emulator:
    return world()


@pytest.fixture
async def start(start_proxy, emulator, tmp_path, monkeypatch) -> AsyncIterator[Starter]:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    s = Starter(start_proxy, emulator, tmp_path)
    yield s
    await s.close()


def generate(model: str, num_ctx: int = 4096, **extra) -> dict:
    return {"model": model, "prompt": "hi", "stream": False, "options": {"num_ctx": num_ctx}, **extra}


def big_chat(model: str = "llama3:8b", **extra) -> dict:
    """A streamed chat on an 8B at num_ctx 98304: 17.2 GiB, nothing else of that size fits beside it."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "options": {"num_ctx": 98304}, **extra}


def unloads_sent(emulator: Emulator) -> list[str]:
    """Models vramgate asked Ollama to unload (``keep_alive: 0`` with no prompt)."""
    return [r.json["model"] for r in emulator.received("/api/generate")
            if r.json.get("keep_alive") == 0 and not r.json.get("prompt")]


def charged(emulator: Emulator, model: str) -> int:
    """What the emulated GPU charges a resident model: its size plus its runner's CUDA context."""
    return emulator.runners[model].size_vram + CUDA


# --- max_vram ------------------------------------------------------------------------------------

POLICY_QUOTA = """
[users.bob]
max_vram = "8GiB"

[users.alice]
max_vram = "6GiB"
"""


async def test_over_max_vram_while_busy_is_429_then_his_own_idle_model_is_unloaded(start, emulator) -> None:
    shared = await start(POLICY_QUOTA, queue_timeout=10)
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", chat_body("llama3:8b", stream=True, options={"num_ctx": 4096}),
                      "bob").start()
    assert held.status == 200
    busy = charged(emulator, "llama3:8b")  # ~5 GiB of his 8

    over = await shared.call("/api/generate", generate("qwen3:8b"), user="bob")  # ~5 GiB more: over 8 GiB
    assert over.status == 429
    assert over.headers["X-Vramgate-Decision"] == "refused 429 over_quota" and over.headers["Retry-After"] == "10"
    assert over.body["vramgate"]["quota"] == {"user": "bob", "rule": "users.bob.max_vram", "limit_bytes": 8 * GiB,
                                              "held_bytes": busy}
    text = over.body["error"]
    assert text.startswith("vramgate refused to load qwen3:8b for bob: it needs ")
    assert "of the 8.0 GiB they may hold at once (policy rule users.bob.max_vram): llama3:8b " in text
    assert "(generating)" in text
    assert shared.events("load.queued") == []  # a quota is not waited out in the queue: answered at once
    (refused,) = shared.events("load.refused")
    assert (refused["user"], refused["reason"], refused["rule"], refused["status"]) == (
        "bob", "over_quota", "users.bob.max_vram", 429)

    await held.release()  # his llama3:8b is idle now
    again = await shared.call("/api/generate", generate("qwen3:8b"), user="bob")
    assert again.status == 200 and again.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=33"
    assert unloads_sent(emulator) == ["llama3:8b"]  # vramgate unloaded his own idle model for his quota
    assert set(emulator.runners) == {"qwen3:8b"} and "llama3:8b" in emulator.unloads
    (evicted,) = shared.events("load.evicted")
    assert {k: evicted[k] for k in ("user", "model", "owner", "reason", "for_user", "for_model")} == {
        "user": "bob", "model": "llama3:8b", "owner": "bob", "reason": "idle, bob's own", "for_user": "bob",
        "for_model": "qwen3:8b"}


async def test_another_users_loads_are_not_bounded_by_bobs_quota(start, emulator) -> None:
    shared = await start(POLICY_QUOTA.replace('max_vram = "6GiB"', 'priority = 0'))  # alice: no quota
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", chat_body("llama3:8b", stream=True, options={"num_ctx": 4096}),
                      "bob").start()
    for model in ("qwen3:8b", "gemma3:8b"):  # ~10 GiB for alice, more than bob's whole quota
        reply = await shared.call("/api/generate", generate(model), user="alice")
        assert reply.status == 200 and reply.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=33"
    # and what alice holds is not bob's: his small load fits next to his own busy ~5 GiB
    small = await shared.call("/api/generate", generate("small:1b"), user="bob")
    assert small.status == 200 and small.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=9"
    assert set(emulator.runners) == {"llama3:8b", "qwen3:8b", "gemma3:8b", "small:1b"}
    assert unloads_sent(emulator) == [] and shared.events("load.refused") == []
    assert {m: shared.gate.residency.owner(m) for m in emulator.runners} == {
        "llama3:8b": "bob", "qwen3:8b": "alice", "gemma3:8b": "alice", "small:1b": "bob"}
    await held.release()


async def test_a_model_two_users_share_counts_once_for_the_user_who_loaded_it(start, emulator) -> None:
    shared = await start(POLICY_QUOTA)
    loaded = await shared.call("/api/generate", generate("qwen3:8b"), user="bob")
    assert loaded.status == 200
    emulator.inject(Fault("/api/chat", "hang", after=1))
    alice_on_bobs = await Held(shared, "/api/chat", chat_body("qwen3:8b", stream=True, options={"num_ctx": 4096}),
                               "alice").start()  # alice generates on bob's resident qwen3:8b
    assert alice_on_bobs.headers["X-Vramgate-Decision"] == "sticky num_ctx=4096 num_gpu=33"
    assert len(emulator.loads) == 1  # no second load: shared
    assert shared.gate.residency.owner("qwen3:8b") == "bob"
    assert shared.gate.residency.users["qwen3:8b"] == {"bob", "alice"}

    # were bob's ~5 GiB charged to alice too, her 5 GiB load would be over her 6 GiB
    hers = await shared.call("/api/generate", generate("llama3:8b"), user="alice")
    assert hers.status == 200 and hers.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=33"
    # it stays bob's: busy (alice is generating on it), it holds his quota
    his = await shared.call("/api/generate", generate("gemma3:8b"), user="bob")
    assert his.status == 429
    assert his.body["vramgate"]["quota"] == {"user": "bob", "rule": "users.bob.max_vram", "limit_bytes": 8 * GiB,
                                             "held_bytes": charged(emulator, "qwen3:8b")}
    assert "qwen3:8b" in emulator.runners and unloads_sent(emulator) == []
    await alice_on_bobs.release()


# --- the queue -----------------------------------------------------------------------------------


async def test_a_load_waits_for_another_users_busy_model_and_is_admitted_when_it_ends(start, emulator) -> None:
    shared = await start(None, queue_timeout=10)  # no policy file: Ollama evicts idle models as always
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", big_chat(), "bob").start()
    assert held.status == 200

    alice = shared.client("alice")
    waiting = asyncio.create_task(alice.generate(model="qwen3:8b", prompt="hi", options={"num_ctx": 4096}))
    assert await until(lambda: len(shared.gate.queue) == 1)
    await asyncio.sleep(0.3)  # judged again meanwhile: bob's model is generating, nothing is freed
    assert not waiting.done() and [r.json["model"] for r in emulator.received("/api/generate")] == []

    await held.release()
    reply = await asyncio.wait_for(waiting, 5)
    assert reply.response == "The sky is blue."  # a normal answer, only later
    (sent,) = emulator.received("/api/generate")
    assert sent.json["options"] == {"num_ctx": 4096, "num_gpu": 33}  # as asked: not shrunk to squeeze in
    assert "qwen3:8b" in emulator.runners
    assert unloads_sent(emulator) == [] and shared.events("load.evicted") == []  # no policy: eviction is Ollama's
    (queued,) = shared.events("load.queued")
    (dequeued,) = shared.events("load.dequeued")
    assert (queued["user"], queued["model"], queued["reason"], queued["position"]) == ("alice", "qwen3:8b", "busy", 1)
    assert "bob (llama3:8b, " in queued["explanation"] and "generating" in queued["explanation"]
    assert (dequeued["user"], dequeued["outcome"]) == ("alice", "admitted") and dequeued["waited_s"] >= 0.3
    (admitted,) = [e for e in shared.events("load.admitted") if e["user"] == "alice"]
    assert admitted["model"] == "qwen3:8b"


POLICY_FAIR = """
[default]
models = ["*"]
"""


async def test_a_queued_load_is_admitted_when_an_idle_model_expires(start, emulator) -> None:
    shared = await start(POLICY_FAIR, queue_timeout=10)
    # dave's model is idle, but dave is of the same priority and within quota: not evictable for carol
    loaded = await shared.call("/api/generate", generate("llama3:8b", 98304, keep_alive="1s"), user="dave")
    assert loaded.status == 200

    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await shared.call("/api/generate", generate("qwen3:8b"), user="carol")
    waited = loop.time() - started
    assert reply.status == 200 and reply.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=33"
    assert 0.5 < waited < 4  # until dave's 1 s keep-alive ran out in Ollama (and the next look)
    assert unloads_sent(emulator) == [] and shared.events("load.evicted") == []  # it expired by itself
    assert set(emulator.runners) == {"qwen3:8b"}
    (queued,) = shared.events("load.queued")
    assert (queued["user"], queued["reason"]) == ("carol", "no_room")
    assert "dave (llama3:8b, " in queued["explanation"] and "idle" in queued["explanation"]
    (dequeued,) = shared.events("load.dequeued")
    assert (dequeued["user"], dequeued["outcome"]) == ("carol", "admitted")


async def test_a_queue_timeout_is_503_with_retry_after(start, emulator) -> None:
    shared = await start(POLICY_FAIR, queue_timeout=1)
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", big_chat(), "bob").start()

    reply = await shared.call("/api/generate", generate("qwen3:8b"), user="alice")
    assert reply.status == 503
    assert reply.headers["Retry-After"] == "10"
    assert reply.headers["X-Vramgate-Decision"] == "refused 503 queue_timeout"
    assert reply.body["error"].startswith("vramgate waited 1 s in the queue (position 1) for GPU memory, and none"
                                          " came free in time. vramgate refused to load qwen3:8b: it needs ")
    numbers = reply.body["vramgate"]
    assert (numbers["reason"], numbers["blocked_by"], numbers["queue_position"]) == ("queue_timeout", "busy", 1)
    assert 1 <= numbers["waited_s"] < 2
    assert [r.json["model"] for r in emulator.received("/api/generate")] == []
    assert emulator.disconnects == []  # bob's stream went on all along
    assert [(e["event"], e["user"]) for e in shared.events("load.queued", "load.queue_timeout")] == [
        ("load.queued", "alice"), ("load.queue_timeout", "alice")]
    (timeout,) = shared.events("load.queue_timeout")
    assert (timeout["status"], timeout["reason"], timeout["blocked_by"]) == (503, "queue_timeout", "busy")
    await held.release()


POLICY_QUEUED = """
[users.carol]
max_queued = 1
"""


async def test_max_queued_refuses_a_second_waiting_load_with_429(start, emulator) -> None:
    shared = await start(POLICY_QUEUED, queue_timeout=10)
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", big_chat(keep_alive=0), "dave").start()  # unloaded when done

    first = asyncio.create_task(shared.call("/api/generate", generate("qwen3:8b"), user="carol"))
    assert await until(lambda: shared.gate.queue.count("carol") == 1)
    second = await shared.call("/api/generate", generate("gemma3:8b"), user="carol")
    assert second.status == 429
    assert second.headers["X-Vramgate-Decision"] == "refused 429 queue_full" and second.headers["Retry-After"] == "10"
    assert second.body["error"] == (
        "vramgate refused to queue gemma3:8b for carol: carol already has 1 load(s) waiting for GPU memory, the most"
        " allowed (rule users.carol.max_queued). Wait for those to be admitted, then retry.")
    # another user is not bound by carol's limit: alice queues behind her
    third = asyncio.create_task(shared.call("/api/generate", generate("small:3b"), user="alice"))
    assert await until(lambda: len(shared.gate.queue) == 2)

    await held.release()
    assert (await asyncio.wait_for(first, 5)).status == 200
    assert (await asyncio.wait_for(third, 5)).status == 200
    refused = [e for e in shared.events("load.refused") if e["reason"] == "queue_full"]
    assert [(e["user"], e["model"], e["rule"], e["status"]) for e in refused] == [
        ("carol", "gemma3:8b", "users.carol.max_queued", 429)]
    assert [e["user"] for e in shared.events("load.dequeued")] == ["carol", "alice"]


POLICY_PRIORITY = """
[users.carol]
priority = 10
"""


async def test_the_queue_goes_by_priority_then_arrival(start, emulator) -> None:
    shared = await start(POLICY_PRIORITY, queue_timeout=10)
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", big_chat(keep_alive=0), "bob").start()
    dave = asyncio.create_task(shared.call("/api/generate", generate("qwen3:8b"), user="dave"))
    assert await until(lambda: len(shared.gate.queue) == 1)
    carol = asyncio.create_task(shared.call("/api/generate", generate("gemma3:8b"), user="carol"))
    assert await until(lambda: len(shared.gate.queue) == 2)
    assert [(w["user"], w["position"]) for w in shared.gate.queue.snapshot()] == [("carol", 1), ("dave", 2)]

    await held.release()
    assert (await asyncio.wait_for(carol, 5)).status == 200
    assert (await asyncio.wait_for(dave, 5)).status == 200
    assert [e["user"] for e in shared.events("load.dequeued")] == ["carol", "dave"]
    assert [r.json["model"] for r in emulator.received("/api/generate") if r.json.get("prompt")] == [
        "gemma3:8b", "qwen3:8b"]


# --- eviction by priority ------------------------------------------------------------------------


async def test_a_higher_priority_load_evicts_a_lower_priority_idle_model(start, emulator) -> None:
    shared = await start(POLICY_PRIORITY, queue_timeout=10)
    loaded = await shared.call("/api/generate", generate("llama3:8b", 98304), user="dave")
    assert loaded.status == 200  # idle now, for its 5 min keep-alive

    reply = await shared.call("/api/generate", generate("qwen3:8b"), user="carol")
    assert reply.status == 200 and reply.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=33"
    assert unloads_sent(emulator) == ["llama3:8b"]  # keep_alive 0 to Ollama, before carol's load
    assert set(emulator.runners) == {"qwen3:8b"}
    assert shared.events("load.queued") == []  # no wait: the room was there to be taken
    (evicted,) = shared.events("load.evicted")
    assert {k: evicted[k] for k in ("user", "model", "owner", "reason", "for_user", "for_model")} == {
        "user": "carol", "model": "llama3:8b", "owner": "dave",
        "reason": "idle, dave's priority 0 is below carol's 10", "for_user": "carol", "for_model": "qwen3:8b"}


async def test_a_generating_model_is_never_evicted_the_higher_priority_load_waits(start, emulator) -> None:
    shared = await start(POLICY_PRIORITY, queue_timeout=10)
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", big_chat(), "dave").start()

    carol = asyncio.create_task(shared.call("/api/generate", generate("qwen3:8b"), user="carol"))
    assert await until(lambda: len(shared.gate.queue) == 1)
    shared.gate.queue.wake_all()  # judged again now (as when anything may have freed memory)
    await asyncio.sleep(0.2)  # still generating: still not evicted
    assert not carol.done()
    assert unloads_sent(emulator) == [] and emulator.disconnects == [] and "llama3:8b" in emulator.runners
    assert shared.events("load.evicted") == []

    await held.release()  # idle now: of lower priority than carol's load, so it may go
    reply = await asyncio.wait_for(carol, 5)
    assert reply.status == 200
    assert unloads_sent(emulator) == ["llama3:8b"]
    (evicted,) = shared.events("load.evicted")
    assert (evicted["owner"], evicted["for_user"], evicted["reason"]) == (
        "dave", "carol", "idle, dave's priority 0 is below carol's 10")
    assert [(e["event"], e["user"]) for e in shared.events("load.queued", "load.dequeued")] == [
        ("load.queued", "carol"), ("load.dequeued", "carol")]


async def test_a_generating_model_is_never_evicted_a_queue_timeout_instead(start, emulator) -> None:
    shared = await start(POLICY_PRIORITY, queue_timeout=1)
    emulator.inject(Fault("/api/chat", "hang", after=1))
    held = await Held(shared, "/api/chat", big_chat(), "dave").start()
    reply = await shared.call("/api/generate", generate("qwen3:8b"), user="carol")
    assert reply.status == 503 and reply.body["vramgate"]["blocked_by"] == "busy"
    assert unloads_sent(emulator) == [] and emulator.disconnects == [] and shared.events("load.evicted") == []
    await held.release()


# --- ownership: who may unload a model ------------------------------------------------------------


async def test_only_its_users_or_an_admin_may_unload_a_model(start, emulator) -> None:
    shared = await start('admins = ["carol"]\n')
    assert (await shared.call("/api/generate", generate("small:1b"), user="alice")).status == 200
    unload = {"model": "small:1b", "keep_alive": 0}
    refused = await shared.call("/api/generate", unload, user="bob")
    assert refused.status == 403
    assert refused.body["error"] == (
        "vramgate refused to unload small:1b for bob: alice loaded it and may be using it. It is unloaded when its"
        " keep-alive ends; ask alice or an admin to unload it sooner.")
    assert refused.body["vramgate"]["owner"] == "alice" and "small:1b" in emulator.runners
    (event,) = shared.events("load.refused")
    assert (event["user"], event["reason"], event["owner"]) == ("bob", "unload_denied", "alice")
    unloaded = await shared.call("/api/generate", unload, user="carol")  # an admin may
    assert unloaded.status == 200 and unloaded.headers["X-Vramgate-Decision"] == "unload"
    assert "small:1b" not in emulator.runners
    # the owner may unload her own
    assert (await shared.call("/api/generate", generate("small:1b"), user="alice")).status == 200
    assert (await shared.call("/api/generate", unload, user="alice")).status == 200
    assert "small:1b" not in emulator.runners
