"""Who is asking, end to end (issue 9): a token of ours, the loopback socket's Unix user, or the
address; ``require_identity``. Real sockets, the official ``ollama`` client, the audit file."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import sys
from collections.abc import AsyncIterator

import ollama
import pytest

from tests.emulator import Emulator
from tests.shared_gpu import ME, TOKENS, Starter, chat_body, world


@pytest.fixture
def emulator() -> Emulator:
    return world()


@pytest.fixture
async def start(start_proxy, emulator, tmp_path, monkeypatch) -> AsyncIterator[Starter]:
    monkeypatch.delenv("OLLAMA_API_KEY", raising=False)  # a client without a token must send none
    s = Starter(start_proxy, emulator, tmp_path)
    yield s
    await s.close()


async def test_a_token_of_ours_is_its_user_and_never_reaches_ollama(start, emulator) -> None:
    shared = await start(None)  # a tokens file and no policy: identities, today's rules
    alice = shared.client("alice")
    reply = await alice.chat(model="small:1b", messages=[{"role": "user", "content": "hi"}],
                             options={"num_ctx": 4096})
    assert reply.message.content == "The sky is blue."
    await alice.list()  # not gated: relayed as it is, but without vramgate's token either

    (admitted,) = shared.events("load.admitted")
    assert (admitted["user"], admitted["identity"], admitted["model"]) == ("alice", "token", "small:1b")
    (chat,) = emulator.received("/api/chat")
    assert emulator.received("/api/tags")  # the client's list went through (and the gate asks it too)
    assert [r.path for r in emulator.requests if "Authorization" in r.headers] == []
    assert "Authorization" not in chat.headers
    assert TOKENS["alice"] not in shared.audit_path.read_text()


async def test_an_unknown_token_falls_through_to_the_loopback_user(start, emulator) -> None:
    shared = await start(None)
    stranger = shared.client(token="ollama_com_key_not_ours")
    await stranger.chat(model="small:1b", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 4096})
    (admitted,) = shared.events("load.admitted")
    assert (admitted["user"], admitted["identity"]) == (ME, "loopback")
    # not vramgate's token: it may be an ollama.com key meant for Ollama, so it goes on
    (chat,) = emulator.received("/api/chat")
    assert chat.headers["Authorization"] == "Bearer ollama_com_key_not_ours"


async def test_a_loopback_client_is_the_unix_user_owning_its_socket(start) -> None:
    shared = await start(None)
    me = shared.client()  # no token at all: this process's connection, over 127.0.0.1
    await me.generate(model="small:1b", prompt="hi", options={"num_ctx": 4096})
    (admitted,) = shared.events("load.admitted")
    assert admitted["user"] == pwd.getpwuid(os.getuid()).pw_name
    assert admitted["identity"] == "loopback"


async def test_a_client_run_as_another_uid_is_that_user(start) -> None:
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a client as another uid")
    shared = await start(None)
    # the standard library only: uid 65534 may not be able to read this checkout's virtual environment
    # (a clone in a private temporary directory), so the official client cannot be imported there
    host, port = shared.url.removeprefix("http://").rsplit(":", 1)
    code = ("import http.client, json, sys\n"
            f"c = http.client.HTTPConnection({host!r}, {int(port)}, timeout=15)\n"
            "c.request('POST', '/api/generate', json.dumps({'model': 'small:1b', 'prompt': 'hi', 'stream': False,"
            " 'options': {'num_ctx': 4096}}), {'Content-Type': 'application/json'})\n"
            "sys.stdout.write(json.loads(c.getresponse().read())['response'])\n")
    env = {k: v for k, v in os.environ.items() if k != "OLLAMA_API_KEY"}
    proc = await asyncio.create_subprocess_exec(
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd="/")
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert out.decode() == "The sky is blue."
    (admitted,) = shared.events("load.admitted")
    assert admitted["user"] == pwd.getpwuid(65534).pw_name  # "nobody"
    assert admitted["identity"] == "loopback"


POLICY_ANONYMOUS = """
[groups.anonymous]
models = ["small*"]
"""


async def test_an_anonymous_client_is_its_address_and_the_policy_treats_it_as_a_group(start, emulator) -> None:
    shared = await start(POLICY_ANONYMOUS, identify_loopback=False)
    anonymous = shared.client()
    await anonymous.chat(model="small:1b", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 4096})
    with pytest.raises(ollama.ResponseError) as refused:
        await anonymous.chat(model="llama3:8b", messages=[{"role": "user", "content": "hi"}])
    assert refused.value.status_code == 403
    assert refused.value.error == (
        "vramgate refused llama3:8b for 127.0.0.1: the policy does not allow this model (rule "
        "groups.anonymous.models). Use one of the models your policy allows, or ask the admin to add it.")
    raw = await shared.call("/api/chat", chat_body("llama3:8b"))
    assert raw.status == 403 and raw.headers["X-Vramgate-Decision"] == "refused 403 model_denied"
    assert raw.body["vramgate"]["rule"] == "groups.anonymous.models"
    assert raw.body["vramgate"]["user"] == "127.0.0.1"
    # an identified user is not in groups.anonymous: the built-in rules let alice use it
    await shared.client("alice").chat(model="llama3:8b", messages=[{"role": "user", "content": "hi"}],
                                      options={"num_ctx": 4096})

    admitted, alices = shared.events("load.admitted")
    assert (admitted["user"], admitted["identity"], admitted["client"]) == ("127.0.0.1", "address", "127.0.0.1")
    assert (alices["user"], alices["identity"], alices["model"]) == ("alice", "token", "llama3:8b")
    refusals = shared.events("load.refused")
    assert [(e["user"], e["identity"], e["rule"], e["status"]) for e in refusals] == [
        ("127.0.0.1", "address", "groups.anonymous.models", 403)] * 2
    assert [r.json["model"] for r in emulator.received("/api/chat")] == ["small:1b", "llama3:8b"]


async def test_require_identity_refuses_anonymous_clients_with_401(start, emulator) -> None:
    shared = await start(None, identify_loopback=False, require_identity=True)
    native = await shared.call("/api/chat", chat_body("small:1b"))
    assert native.status == 401
    assert native.headers["WWW-Authenticate"] == 'Bearer realm="vramgate"'
    assert list(native.body) == ["error"] and native.body["error"].startswith(
        "vramgate requires an identity on this server: set OLLAMA_API_KEY to your vramgate token")
    openai = await shared.call("/v1/chat/completions",
                               {"model": "small:1b", "messages": [{"role": "user", "content": "hi"}]})
    assert openai.status == 401 and openai.headers["WWW-Authenticate"] == 'Bearer realm="vramgate"'
    assert openai.body == {"error": {"message": native.body["error"], "type": "api_error", "param": None,
                                     "code": None}}
    tags = await shared.call("/api/tags", method="GET")  # every route, not only the gated ones
    assert tags.status == 401
    with pytest.raises(ollama.ResponseError) as refused:
        await shared.client().list()
    assert refused.value.status_code == 401
    assert {r.path for r in emulator.requests} <= {"/api/version"}  # only the gate's own question at start

    ok = await shared.call("/api/chat", chat_body("small:1b", options={"num_ctx": 4096}), user="alice")
    assert ok.status == 200 and ok.body["message"]["content"] == "The sky is blue."
    listed = await shared.client("bob").list()
    assert {m.model for m in listed.models} >= {"small:1b", "llama3:8b"}
