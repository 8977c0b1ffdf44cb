"""Issue 9 done: two people share one emulated 24 GiB GPU under a policy file, one known by a
token and one by the Unix user owning its loopback socket; and the audit file that records it.

``test_two_users_share_one_gpu`` also writes what each client saw and the decision log lines to
``artifacts/shared-gpu-demo.txt``. The other shared-GPU tests: ``test_shared_gpu_identity.py``,
``test_shared_gpu_policy.py``, ``test_shared_gpu_queue.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from proxy.config.log_setup import configure_logging
from proxy.identity.tokens import hash_token
from tests.emulator import Emulator, Fault
from tests.shared_gpu import ME, STATIC, TOKENS, Held, Starter, chat_body, until, world

ARTIFACT = Path(__file__).resolve().parents[1] / "artifacts" / "shared-gpu-demo.txt"


@pytest.fixture
def emulator() -> Emulator:
    return world()


@pytest.fixture
async def start(start_proxy, emulator, tmp_path, monkeypatch) -> AsyncIterator[Starter]:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)
    s = Starter(start_proxy, emulator, tmp_path)
    yield s
    await s.close()


# --- the audit file ------------------------------------------------------------------------------

PROMPT = "zebra-quokka-7731 please summarise my secret diary"
POLICY_AUDIT = """
admins = ["alice"]

[default]
deny_models = ["gemma3:*"]
max_keep_alive = "30m"

[users.bob]
max_vram = "4GiB"
max_num_ctx = 8192
"""


async def test_the_audit_file_has_the_user_on_every_decision_and_never_a_token_or_prompt(start, emulator) -> None:
    log_lines = io.StringIO()
    configure_logging("json", "info", stream=log_lines)  # the access log too (written where structlog writes)
    try:
        shared = await start(POLICY_AUDIT, queue_timeout=1, registry="http://127.0.0.1:9")
        messages = [{"role": "system", "content": PROMPT}, {"role": "user", "content": PROMPT}]
        alice, bob, me = shared.client("alice"), shared.client("bob"), shared.client()
        # a queue wait and its timeout, behind alice's busy model
        emulator.inject(Fault("/api/chat", "hang", after=1))
        held = await Held(shared, "/api/chat", chat_body("llama3:8b", PROMPT, stream=True,
                                                         options={"num_ctx": 98304}), "alice").start()
        with pytest.raises(ollama.ResponseError) as timed_out:
            await me.generate(model="qwen3:8b", prompt=PROMPT, options={"num_ctx": 4096})
        assert timed_out.value.status_code == 503
        await held.release()
        await alice.chat(model="llama3:8b", messages=messages, options={"num_ctx": 4096}, keep_alive=-1)  # admitted
        await bob.generate(model="small:1b", prompt=PROMPT, options={"num_ctx": 65536})  # capped
        await me.embed(model="small:3b", input=[PROMPT, PROMPT])
        for call in (bob.chat(model="gemma3:8b", messages=messages),  # model denied
                     bob.delete("small:1b"),  # store operation denied
                     bob.generate(model="qwen3:8b", prompt=PROMPT, options={"num_ctx": 32768}),  # quota: too small
                     alice.generate(model="llama3:70b", prompt=PROMPT)):  # 507: never fits
            with pytest.raises(ollama.ResponseError):
                await call
        await alice.pull("small:1b")  # an admin's pull: the (absent) registry is asked first
        await shared.call("/v1/chat/completions", {"model": "small:1b", "messages": messages}, user="alice")
        await asyncio.sleep(0.15)  # the access log is flushed within 0.1 s
    finally:
        configure_logging("json", "warning")

    events = shared.events()
    names = {e["event"] for e in events}
    assert {"load.admitted", "load.refused", "request.refused", "pull.check_failed", "load.queued",
            "load.queue_timeout"} <= names, names
    for e in events:
        assert e.get("user") in ("alice", "bob", ME), e
        assert e["identity"] == ("loopback" if e["user"] == ME else "token"), e
    assert {e["user"] for e in events} == {"alice", "bob", ME}
    assert {(e["user"], e.get("reason")) for e in events if e["event"] == "load.refused"} == {
        ("bob", "model_denied"), ("bob", "quota_too_small"), ("alice", "too_big")}
    assert [e["model"] for e in events if e["event"] == "load.admitted" and e.get("num_ctx_to") == 8192] == [
        "small:1b"]

    written = shared.audit_path.read_bytes() + log_lines.getvalue().encode()
    access = [json.loads(line) for line in log_lines.getvalue().splitlines() if '"event": "access"' in line]
    assert len(access) >= 10 and all(a["user"] in ("alice", "bob", ME) for a in access)
    for secret in (*TOKENS.values(), *(hash_token(t) for t in TOKENS.values()), "zebra-quokka", "secret diary"):
        assert secret.encode() not in written, secret


# --- done when: two users, one GPU ----------------------------------------------------------------

POLICY_DEMO = """\
# Two people share one 24 GiB GPU. alice (by token) may use at most 8192 tokens of context
# and goes before others in the queue; everyone else (here: this machine's own Unix user,
# known by its loopback socket) gets the built-in rules.
[users.alice]
max_num_ctx = 8192
priority = 5
"""


class Transcript:
    """What each client sent and saw, from httpx's own hooks in the official ollama client."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.responses: list[tuple[str, str, int, dict[str, str]]] = []  # (who, path, status, headers)
        self._started: dict[int, float] = {}

    def hooks(self, who: str) -> dict[str, list[Any]]:
        async def request(r: httpx.Request) -> None:
            self._started[id(r)] = time.monotonic()
            self.sent(who, r.method, r.url.path, r.headers.get("authorization"), json.loads(r.content or b"{}"))

        async def response(r: httpx.Response) -> None:
            took = time.monotonic() - self._started.pop(id(r.request), time.monotonic())
            self.saw(who, r.request.url.path, r.status_code, dict(r.headers), took)

        return {"request": [request], "response": [response]}

    def sent(self, who: str, method: str, path: str, authorization: str | None, body: Any) -> None:
        auth = f"Authorization: Bearer {authorization.split()[1][:9]}..." if authorization else "no Authorization"
        self.lines.append(f"{who} > {method} {path}  [{auth}]  {json.dumps(body)}")

    def saw(self, who: str, path: str, status: int, headers: dict[str, str], took: float | None = None) -> None:
        lower = {k.lower(): v for k, v in headers.items()}
        headers = {h: lower[h.lower()] for h in ("X-Vramgate-Decision", "X-Vramgate-Num-Ctx", "X-Vramgate-Keep-Alive",
                                                 "Retry-After") if h.lower() in lower}
        self.responses.append((who, path, status, headers))
        shown = "  ".join(f"{h}: {v}" for h, v in headers.items())
        after = f" after {took:.1f} s" if took is not None else ""
        self.lines.append(f"{who} < {status}{after}  {shown}")

    def note(self, who: str, text: str) -> None:
        self.lines.append(f"{who} : {text}")


async def test_two_users_share_one_gpu(start, emulator) -> None:
    """alice (token) is capped to 8192 tokens and queued behind the local user's busy model; the
    local user (loopback UID) is admitted as asked. When the local user's answer is done, vramgate
    unloads that idle model (alice's priority is higher) and alice is admitted at her cap."""
    shared = await start(POLICY_DEMO, queue_timeout=10)
    emulator.inject(Fault("/api/chat", "slow", delay=0.25))  # the first chat streams slowly: ~1.5 s
    transcript = Transcript()
    me = ollama.AsyncClient(host=shared.url, event_hooks=transcript.hooks(ME))
    alice = ollama.AsyncClient(host=shared.url, headers={"Authorization": f"Bearer {TOKENS['alice']}"},
                               event_hooks=transcript.hooks("alice"))
    shared.clients += [me, alice]
    first_token = asyncio.Event()

    async def mine() -> str:
        parts = []
        stream = await me.chat(model="llama3:8b", messages=[{"role": "user", "content": "Why is the sky blue?"}],
                               options={"num_ctx": 98304}, stream=True)
        async for part in stream:
            parts.append(part.message.content)
            first_token.set()
        return "".join(parts)

    my_chat = asyncio.create_task(mine())
    await asyncio.wait_for(first_token.wait(), 5)  # loaded (17.2 GiB of the 21 usable) and generating
    alices_chat = asyncio.create_task(alice.chat(model="qwen3:8b", options={"num_ctx": 65536},
                                                 messages=[{"role": "user", "content": "Name a blue bird."}]))
    assert await until(lambda: len(shared.gate.queue) == 1)  # capped to 8192, and still does not fit: queued
    assert not my_chat.done()

    my_answer = await asyncio.wait_for(my_chat, 5)
    transcript.note(ME, f"streamed answer: {my_answer!r}")
    alices = await asyncio.wait_for(alices_chat, 5)
    transcript.note("alice", f"answer: {alices.message.content!r}")
    assert my_answer == alices.message.content == "The sky is blue."  # both normal answers

    # an exchange alice cannot have: the OpenAI API carries no options, so her cap cannot be applied
    body = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    transcript.sent("alice", "POST", "/v1/chat/completions", f"Bearer {TOKENS['alice']}", body)
    v1 = await shared.call("/v1/chat/completions", body, user="alice")
    transcript.saw("alice", "/v1/chat/completions", v1.status, v1.headers)
    transcript.note("alice", f"error: {v1.error}")

    # each client saw exactly this
    seen = [(who, path, status, headers.get("X-Vramgate-Decision"), headers.get("X-Vramgate-Num-Ctx"))
            for who, path, status, headers in transcript.responses]
    assert seen == [
        (ME, "/api/chat", 200, "admitted num_ctx=98304 num_gpu=33", None),
        ("alice", "/api/chat", 200, "admitted num_ctx=8192 num_gpu=33",
         "65536 -> 8192 (policy users.alice.max_num_ctx)"),
        ("alice", "/v1/chat/completions", 403, "refused 403 num_ctx_cap", None),
    ]
    assert v1.error.startswith("vramgate refused to load llama3:8b: it would load at num_ctx 32768 (server default)"
                               " but you may use at most 8192 (policy rule users.alice.max_num_ctx)")
    # what Ollama received: the local user's context as asked, alice's capped; the idle model unloaded for her
    chats = emulator.received("/api/chat")
    assert [(c.json["model"], c.json["options"]["num_ctx"]) for c in chats] == [("llama3:8b", 98304),
                                                                                ("qwen3:8b", 8192)]
    assert [r.json for r in emulator.received("/api/generate")] == [{"model": "llama3:8b", "keep_alive": 0}]
    assert set(emulator.runners) == {"qwen3:8b"} and emulator.runners["qwen3:8b"].context_length == 8192
    assert shared.gpu is not None and shared.gpu.ooms == [] and shared.gpu.peak <= 22 * 1024**3
    # and the decision log says who, what and why
    events = shared.events()
    assert [(e["event"], e["user"], e["identity"], e["model"]) for e in events] == [
        ("load.admitted", ME, "loopback", "llama3:8b"),
        ("load.queued", "alice", "token", "qwen3:8b"),
        ("load.dequeued", "alice", "token", "qwen3:8b"),
        ("load.evicted", "alice", "token", "llama3:8b"),
        ("load.admitted", "alice", "token", "qwen3:8b"),
        ("load.refused", "alice", "token", "llama3:8b"),
    ]
    admitted_me, queued, dequeued, evicted, admitted_alice, refused = events
    assert admitted_me["forwarded"] == {"num_ctx": 98304, "num_gpu": 33}
    assert queued["reason"] == "busy" and f"{ME} (llama3:8b, " in queued["explanation"]
    assert dequeued["outcome"] == "admitted" and dequeued["waited_s"] > 0.5
    assert (evicted["owner"], evicted["reason"]) == (ME, f"idle, {ME}'s priority 0 is below alice's 5")
    assert (admitted_alice["num_ctx_from"], admitted_alice["num_ctx_to"]) == (65536, 8192)
    assert (refused["status"], refused["reason"], refused["rule"]) == (403, "num_ctx_cap", "users.alice.max_num_ctx")

    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text("\n".join([
        "vramgate: two users share one emulated 24 GiB GPU (tests/test_shared_gpu.py::test_two_users_share_one_gpu)",
        "",
        f"GPU: {json.dumps(STATIC)} (static; the Ollama emulator charges every load on it)",
        f"Users: alice by token (Authorization: Bearer, from OLLAMA_API_KEY); {ME!r} by the loopback socket's"
        " Unix user (no token, no set-up)",
        "",
        "policy.toml:",
        *("    " + line for line in POLICY_DEMO.splitlines()),
        "",
        "What each client sent and saw (the official ollama client; > request, < response, : what it got):",
        *transcript.lines,
        "",
        f"Decision log (the audit file, {len(events)} lines):",
        *(json.dumps(e) for e in events),
        "",
    ]), encoding="utf-8")
