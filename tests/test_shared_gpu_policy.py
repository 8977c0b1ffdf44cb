"""Each per-user policy key allowing and refusing, end to end (issue 9): ``models``/``deny_models``,
``max_num_ctx``, ``max_keep_alive``, the store operations, ``allow_partial_offload``; and the policy
file reloaded (valid, invalid, by the watcher) and refused at start when invalid."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import ollama
import pytest
from structlog.testing import capture_logs

from proxy.edge.server import StartError
from tests.emulator import Emulator
from tests.shared_gpu import ME, TOKENS, Starter, chat_body, world, write_tokens


@pytest.fixture
def emulator() -> Emulator:
    emu = world()
    emu.add_model("small:7b", remote=True)  # in the registry only: what /api/pull fetches
    return emu


@pytest.fixture
async def start(start_proxy, emulator, tmp_path, monkeypatch) -> AsyncIterator[Starter]:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)  # a client without a token must send none
    s = Starter(start_proxy, emulator, tmp_path)
    yield s
    await s.close()


def options_sent(emulator: Emulator, path: str = "/api/chat") -> list[dict]:
    return [r.json.get("options") for r in emulator.received(path)]


# --- models / deny_models ------------------------------------------------------------------------

POLICY_MODELS = """
admins = ["alice"]

[default]
models = ["llama3:*", "small:*"]
deny_models = ["llama3:70b"]

[users.bob]
models = ["qwen3:*"]
"""


async def test_models_and_deny_models_allow_and_refuse_naming_the_rule(start, emulator) -> None:
    shared = await start(POLICY_MODELS, registry="http://127.0.0.1:9")  # no registry: pulls pass unchecked

    allowed = [("alice", "llama3:8b"), ("alice", "small:1b"), ("bob", "qwen3:8b")]
    for user, model in allowed:
        reply = await shared.call("/api/chat", chat_body(model, options={"num_ctx": 4096}), user=user)
        assert reply.status == 200, (user, model, reply.body)
    refused = [("alice", "qwen3:8b", "default.models"), ("alice", "llama3:70b", "default.deny_models"),
               ("bob", "llama3:8b", "users.bob.models"), ("bob", "llama3:70b", "default.deny_models")]
    for user, model, rule in refused:
        reply = await shared.call("/api/chat", chat_body(model), user=user)
        assert reply.status == 403, (user, model)
        assert reply.headers["X-Vramgate-Decision"] == "refused 403 model_denied"
        assert reply.body["error"] == (
            f"vramgate refused {model} for {user}: the policy does not allow this model (rule {rule})."
            " Use one of the models your policy allows, or ask the admin to add it.")
        assert reply.body["vramgate"] == {"decision": "refused", "status": 403, "reason": "model_denied",
                                          "rule": rule, "user": user}
    # the OpenAI shape on /v1, with the same rule
    v1 = await shared.call("/v1/chat/completions", {"model": "llama3:8b", "messages": [{"role": "user", "content": "x"}]},
                           user="bob")
    assert v1.status == 403
    assert v1.body["error"]["code"] == "policy_refused" and v1.body["error"]["type"] == "api_error"
    assert "(rule users.bob.models)" in v1.body["error"]["message"]
    # a pull of a denied model is refused even for an admin, before the registry is asked
    pull = await shared.call("/api/pull", {"model": "llama3:70b", "stream": False}, user="alice")
    assert pull.status == 403 and "(rule default.deny_models)" in pull.body["error"]
    # ... and so is a create made from it (a create pulls what it is made from when missing)
    create = await shared.call("/api/create", {"model": "small:mine", "from": "llama3:70b", "stream": False}, user="alice")
    assert create.status == 403 and "refused llama3:70b for alice" in create.body["error"]

    assert [r.json["model"] for r in emulator.received("/api/chat")] == ["llama3:8b", "small:1b", "qwen3:8b"]
    assert emulator.received("/v1/chat/completions") == [] and emulator.received("/api/pull") == []
    events = [(e["event"], e["user"], e["model"], e.get("rule")) for e in shared.events("load.refused", "pull.refused")]
    assert events == [("load.refused", u, m, r) for u, m, r in refused] + [
        ("load.refused", "bob", "llama3:8b", "users.bob.models"),
        ("pull.refused", "alice", "llama3:70b", "default.deny_models"),
        ("pull.refused", "alice", "llama3:70b", "default.deny_models")]
    assert emulator.received("/api/create") == []


# --- max_num_ctx ---------------------------------------------------------------------------------

POLICY_CTX = """
[users.alice]
max_num_ctx = 8192
"""


async def test_max_num_ctx_rewrites_native_loads_down_to_the_cap(start, emulator) -> None:
    shared = await start(POLICY_CTX)
    big = await shared.call("/api/chat", chat_body("llama3:8b", options={"num_ctx": 65536, "temperature": 0.2}),
                            user="alice")
    assert big.status == 200
    assert big.headers["X-Vramgate-Num-Ctx"] == "65536 -> 8192 (policy users.alice.max_num_ctx)"
    assert big.headers["X-Vramgate-Decision"] == "admitted num_ctx=8192 num_gpu=33"
    assert options_sent(emulator) == [{"num_ctx": 8192, "num_gpu": 33, "temperature": 0.2}]
    assert emulator.runners["llama3:8b"].context_length == 8192
    (event,) = shared.events("load.admitted")
    assert (event["user"], event["num_ctx_from"], event["num_ctx_to"]) == ("alice", 65536, 8192)
    assert event["num_ctx_steps"] == [{"num_ctx": 8192, "reason": "policy users.alice.max_num_ctx"}]

    # no num_ctx: the server's default (32768 on this GPU) is over her cap too, and is said to be
    default = await shared.call("/api/chat", chat_body("small:3b"), user="alice")
    assert default.headers["X-Vramgate-Num-Ctx"] == "32768 -> 8192 (policy users.alice.max_num_ctx)"
    assert options_sent(emulator)[-1] == {"num_ctx": 8192, "num_gpu": 25}
    # within the cap: as asked, nothing said about num_ctx
    small = await shared.call("/api/chat", chat_body("small:1b", options={"num_ctx": 4096}), user="alice")
    assert small.status == 200 and "X-Vramgate-Num-Ctx" not in small.headers
    assert options_sent(emulator)[-1] == {"num_ctx": 4096, "num_gpu": 9}
    # bob has no cap: his 16384 goes through (it fits next to alice's models)
    bobs = await shared.call("/api/chat", chat_body("qwen3:8b", options={"num_ctx": 16384}), user="bob")
    assert bobs.status == 200 and "X-Vramgate-Num-Ctx" not in bobs.headers
    assert options_sent(emulator)[-1] == {"num_ctx": 16384, "num_gpu": 33}


async def test_max_num_ctx_refuses_a_v1_load_above_the_cap(start, emulator) -> None:
    shared = await start(POLICY_CTX)
    body = {"model": "qwen3:8b", "messages": [{"role": "user", "content": "hi"}]}
    refused = await shared.call("/v1/chat/completions", body, user="alice")  # the server default: 32768 here
    assert refused.status == 403
    assert refused.headers["X-Vramgate-Decision"] == "refused 403 num_ctx_cap"
    assert refused.body["error"]["code"] == "policy_refused"
    assert refused.body["error"]["message"].startswith(
        "vramgate refused to load qwen3:8b: it would load at num_ctx 32768 (server default) but you may use at"
        " most 8192 (policy rule users.alice.max_num_ctx)")
    numbers = refused.body["vramgate"]
    assert (numbers["reason"], numbers["max_num_ctx"], numbers["rule"]) == ("num_ctx_cap", 8192, "users.alice.max_num_ctx")
    assert emulator.received("/v1/chat/completions") == []
    (event,) = shared.events("load.refused")
    assert (event["user"], event["reason"], event["rule"], event["status"]) == (
        "alice", "num_ctx_cap", "users.alice.max_num_ctx", 403)

    assert (await shared.call("/v1/chat/completions", body, user="bob")).status == 200  # no cap for bob
    # once resident at a context within her cap (loaded natively, capped), /v1 may use it as it is
    await shared.call("/api/chat", chat_body("llama3:8b", options={"num_ctx": 65536}), user="alice")
    reused = await shared.call("/v1/chat/completions", {**body, "model": "llama3:8b"}, user="alice")
    assert reused.status == 200 and reused.headers["X-Vramgate-Decision"] == "resident"


# --- max_keep_alive ------------------------------------------------------------------------------

POLICY_KEEP_ALIVE = """
[default]
max_keep_alive = "30m"

[users.bob]
max_keep_alive = "4h"
"""


@pytest.mark.parametrize("asked,sent,seconds", [
    (-1, "30m0s", 1800.0),  # forever
    ("24h", "30m0s", 1800.0),
    (86400, "30m0s", 1800.0),  # a number is seconds
    ("-5m", "30m0s", 1800.0),  # any negative is forever
    ("10m", "10m", 600.0),  # shorter: kept as sent
    (600, 600, 600.0),
    (0, 0, None),  # unload when done: kept
])
async def test_max_keep_alive_rewrites_longer_and_negative_values_to_the_cap(start, emulator, asked, sent,
                                                                             seconds) -> None:
    shared = await start(POLICY_KEEP_ALIVE)
    reply = await shared.call("/api/generate", {"model": "small:1b", "prompt": "hi", "stream": False,
                                                "keep_alive": asked, "options": {"num_ctx": 4096}}, user="alice")
    assert reply.status == 200
    (received,) = emulator.received("/api/generate")
    assert received.json["keep_alive"] == sent
    if seconds is None:
        assert "small:1b" not in emulator.runners
    else:
        assert emulator.runners["small:1b"].keep_alive == seconds  # Ollama reads exactly the cap
    (event,) = shared.events("load.admitted")
    if sent != asked:
        assert reply.headers["X-Vramgate-Keep-Alive"] == f"{asked} -> 30m0s (policy default.max_keep_alive)"
        assert (event["keep_alive_from"], event["keep_alive_to"], event["keep_alive_rule"]) == (
            str(asked), "30m0s", "default.max_keep_alive")
    else:
        assert "X-Vramgate-Keep-Alive" not in reply.headers and "keep_alive_to" not in event


async def test_max_keep_alive_per_user_and_through_the_ollama_client(start, emulator) -> None:
    shared = await start(POLICY_KEEP_ALIVE)
    await shared.client("bob").chat(model="small:1b", messages=[{"role": "user", "content": "hi"}], keep_alive="24h",
                                    options={"num_ctx": 4096})
    assert emulator.received("/api/chat")[-1].json["keep_alive"] == "4h0m0s"
    assert emulator.runners["small:1b"].keep_alive == 4 * 3600.0
    # bob's model: alice's keep_alive does not change it, neither pinning it nor unloading it under him
    for asked in (-1, 0, "1s"):
        reply = await shared.call("/api/chat", {"model": "small:1b", "messages": [{"role": "user", "content": "hi"}],
                                                "stream": False, "keep_alive": asked, "options": {"num_ctx": 4096}},
                                  user="alice")
        assert reply.status == 200 and reply.headers["X-Vramgate-Keep-Alive"] == f"{asked} -> kept (bob's model)"
        assert emulator.received("/api/chat")[-1].json["keep_alive"] is None  # Go reads null as absent
        assert emulator.runners["small:1b"].keep_alive == 4 * 3600.0  # still bob's 4 h, and still loaded
    await shared.client("alice").chat(model="small:1b", messages=[{"role": "user", "content": "hi"}],
                                      options={"num_ctx": 4096})  # absent: Ollama keeps the runner's own
    assert "keep_alive" not in emulator.received("/api/chat")[-1].json
    assert emulator.runners["small:1b"].keep_alive == 4 * 3600.0
    # on her own model her keep_alive counts (capped by her rule)
    await shared.client("alice").chat(model="small:3b", messages=[{"role": "user", "content": "hi"}], keep_alive=-1,
                                      options={"num_ctx": 4096})
    assert emulator.received("/api/chat")[-1].json["keep_alive"] == "30m0s"
    assert emulator.runners["small:3b"].keep_alive == 1800.0


# --- the model-store operations ------------------------------------------------------------------

POLICY_STORE = """
admins = ["alice"]

[users.alice]
can_push = false  # her own section beats her admin status

[users.carol]
can_pull = true
can_copy = true
"""
BLOB = b"GGUF a tiny blob"
BLOB_PATH = "/api/blobs/sha256:" + hashlib.sha256(BLOB).hexdigest()
STORE_CALLS = [  # (method, path, body, operation)
    ("DELETE", "/api/delete", {"model": "small:3b"}, "delete"),
    ("POST", "/api/copy", {"source": "small:1b", "destination": "mine:1b"}, "copy"),
    ("POST", "/api/push", {"model": "small:1b", "stream": False}, "push"),
    ("POST", "/api/pull", {"model": "small:7b", "stream": False}, "pull"),
    ("POST", "/api/create", {"model": "made:1b", "from": "small:1b", "stream": False}, "create"),
    ("POST", BLOB_PATH, BLOB, "create"),
]


async def test_store_operations_are_refused_for_a_non_admin(start, emulator) -> None:
    shared = await start(POLICY_STORE, registry="http://127.0.0.1:9")
    for method, path, body, op in STORE_CALLS:
        reply = await shared.call(path, body, user="bob", method=method)
        assert reply.status == 403, (method, path)
        assert reply.body["error"] == (
            f"vramgate refused this {op} for bob: the policy does not let bob {op} models (rule admins)."
            f" Ask an admin to {op} it for you, or to set can_{op} for you.")
        assert reply.body["vramgate"] == {"decision": "refused", "status": 403, "reason": "operation_denied",
                                          "rule": "admins", "user": "bob"}
    bob = shared.client("bob")  # the official client sees the same refusals
    for call in (bob.delete("small:3b"), bob.copy("small:1b", "mine:1b"), bob.pull("small:7b"),
                 bob.push("small:1b"), bob.create("made:1b", from_="small:1b")):
        with pytest.raises(ollama.ResponseError) as refused:
            await call
        assert refused.value.status_code == 403 and "(rule admins)" in refused.value.error
    blob = shared.tmp / "blob.gguf"
    blob.write_bytes(BLOB)
    with pytest.raises(ollama.ResponseError) as refused:
        await bob.create_blob(blob)  # HEAD passes (it changes nothing), the upload is refused
    assert refused.value.status_code == 403

    store_paths = {"/api/delete", "/api/copy", "/api/push", "/api/pull", "/api/create"}
    assert [r.path for r in emulator.requests if r.path in store_paths or r.method == "POST" and
            r.path.startswith("/api/blobs/")] == []
    assert set(emulator.models) >= {"small:3b", "small:1b"} and "mine:1b" not in emulator.models
    refusals = shared.events("request.refused")
    assert len(refusals) == len(STORE_CALLS) + 6
    assert {(e["user"], e["reason"], e["rule"]) for e in refusals} == {("bob", "operation_denied", "admins")}


async def test_store_operations_pass_for_an_admin_and_where_the_policy_allows(start, emulator) -> None:
    shared = await start(POLICY_STORE, registry="http://127.0.0.1:9")
    for method, path, body, op in STORE_CALLS:
        reply = await shared.call(path, body, user="alice", method=method)
        if op == "push":  # can_push = false in her own section
            assert reply.status == 403 and "(rule users.alice.can_push)" in reply.body["error"]
        else:
            assert reply.status in (200, 201), (method, path, reply.body)
    assert [(r.method, r.path) for r in emulator.requests if r.path != "/api/push" and
            (r.path, r.method) in {(p, m) for m, p, _, _ in STORE_CALLS}] == [
        ("DELETE", "/api/delete"), ("POST", "/api/copy"), ("POST", "/api/pull"), ("POST", "/api/create"),
        ("POST", BLOB_PATH)]
    assert emulator.received("/api/push") == []
    assert "small:3b" not in emulator.models and {"mine:1b", "small:7b", "made:1b"} <= set(emulator.models)
    assert emulator.blobs == {"sha256:" + hashlib.sha256(BLOB).hexdigest(): len(BLOB)}

    # carol may pull and copy (her section), not delete (admins only)
    assert (await shared.call("/api/pull", {"model": "small:7b", "stream": False}, user="carol")).status == 200
    assert (await shared.call("/api/copy", {"source": "small:1b", "destination": "carols:1b"}, user="carol")).status == 200
    denied = await shared.call("/api/delete", {"model": "carols:1b"}, user="carol", method="DELETE")
    assert denied.status == 403 and "(rule admins)" in denied.body["error"]
    assert "carols:1b" in emulator.models
    # this process's own user, root, is always an admin
    if ME == "root":
        assert (await shared.call("/api/delete", {"model": "carols:1b"}, method="DELETE")).status == 200


async def test_without_a_policy_file_store_operations_stay_open(start, emulator) -> None:
    shared = await start(None)
    reply = await shared.call("/api/copy", {"source": "small:1b", "destination": "mine:1b"}, user="bob")
    assert reply.status == 200 and "mine:1b" in emulator.models


# --- allow_partial_offload -----------------------------------------------------------------------

POLICY_PARTIAL = """
[users.alice]
allow_partial_offload = true
"""


async def test_allow_partial_offload_per_user(start, emulator) -> None:
    shared = await start(POLICY_PARTIAL)  # the setting allow_partial_offload is false
    asked = {"num_ctx": 4096, "num_gpu": 10}  # 10 of llama3:8b's 33 layers on the GPU, the rest in RAM
    alices = await shared.call("/api/chat", chat_body("llama3:8b", options=asked), user="alice")
    assert alices.status == 200 and alices.headers["X-Vramgate-Decision"] == "partial_allowed"
    assert options_sent(emulator) == [asked]  # unchanged
    bobs = await shared.call("/api/chat", chat_body("qwen3:8b", options=asked), user="bob")
    assert bobs.status == 200 and bobs.headers["X-Vramgate-Decision"] == "admitted num_ctx=4096 num_gpu=33"
    assert options_sent(emulator)[-1] == {"num_ctx": 4096, "num_gpu": 33}  # planned by the gate: all on the GPU
    (partial,) = [e for e in shared.events("load.admitted") if e["reason"] == "partial_allowed"]
    assert partial["user"] == "alice"


# --- reloading the policy ------------------------------------------------------------------------

POLICY_OPEN = """
[default]
models = ["*"]
"""
POLICY_DENY = """
[default]
models = ["*"]
deny_models = ["qwen3:*"]
"""
POLICY_BROKEN = """
[default]
models = ["*"]
max_vramm = "8GiB"
"""


async def test_a_reload_applies_a_valid_file_and_keeps_the_policy_when_invalid(start) -> None:
    shared = await start(POLICY_OPEN)
    assert (await shared.call("/api/chat", chat_body("qwen3:8b", options={"num_ctx": 4096}), user="bob")).status == 200

    shared.policy_path.write_text(POLICY_DENY)
    with capture_logs() as logs:
        shared.gate.reload()  # what SIGHUP does
    assert [e for e in logs if e["log_level"] != "info"] == []  # (policy.reloaded is at info)
    refused = await shared.call("/api/chat", chat_body("qwen3:8b"), user="bob")
    assert refused.status == 403 and "(rule default.deny_models)" in refused.body["error"]

    shared.policy_path.write_text(POLICY_BROKEN)
    with capture_logs() as logs:
        shared.gate.reload()
    assert logs == [{
        "event": "policy.invalid", "log_level": "error", "file": str(shared.policy_path),
        "error": f"{shared.policy_path}: default.max_vramm: unknown key; did you mean max_vram?",
        "kept": "the previous policy"}]
    assert not shared.gate.files.changed_on_disk()  # so the watcher's next looks do not log it again
    still = await shared.call("/api/chat", chat_body("qwen3:8b"), user="bob")  # the previous policy runs on
    assert still.status == 403 and "(rule default.deny_models)" in still.body["error"]
    assert (await shared.call("/api/chat", chat_body("llama3:8b", options={"num_ctx": 4096}), user="bob")).status == 200

    # the tokens file is reread with it: bob's token dropped, his client is known by its socket again
    write_tokens(shared.tokens_path, {"alice": TOKENS["alice"]})
    shared.gate.reload()
    await shared.call("/api/chat", chat_body("small:1b", options={"num_ctx": 4096}), user="bob")
    assert (shared.events()[-1]["user"], shared.events()[-1]["identity"]) == (ME, "loopback")


async def test_the_watcher_picks_up_a_changed_file(start) -> None:
    shared = await start(POLICY_OPEN)
    assert (await shared.call("/api/chat", chat_body("qwen3:8b", options={"num_ctx": 4096}), user="bob")).status == 200
    shared.policy_path.write_text(POLICY_DENY)  # no SIGHUP: the file's change is enough

    async def refused() -> bool:
        return (await shared.call("/api/chat", chat_body("qwen3:8b"), user="bob")).status == 403

    loop = asyncio.get_running_loop()
    started = loop.time()
    while not await refused():
        assert loop.time() - started < 5, "the policy change was not picked up within 5 s"
        await asyncio.sleep(0.1)
    assert loop.time() - started < 3  # the watcher looks every 2 s


async def test_an_invalid_policy_at_start_is_a_start_error(start, tmp_path) -> None:
    with pytest.raises(StartError) as failed:
        await start(POLICY_BROKEN)
    assert str(failed.value) == (
        f"cannot start the fit gate: {tmp_path / 'policy.toml'}: default.max_vramm: unknown key; did you mean max_vram?")
