"""Helpers for the shared-GPU tests (issue 9): a vramgate with a policy file, a tokens file and an
audit file in front of the Ollama emulator on one emulated 24 GiB GPU, and clients for its users.

``await Starter(...)(policy_text, **settings)`` writes the policy and tokens files, starts the proxy
(``gpu="static"``, ``STATIC``) with the Gate captured, and gives back a ``SharedGpu`` with what a test
reads: the URL, the Gate, the audit lines, clients (``ollama.AsyncClient``) that identify by token,
and raw HTTP calls where status and headers matter. ``Held`` keeps a model generating.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import ollama

from proxy.gate.service import Gate, build_admission
from proxy.identity.tokens import TokenBook
from tests.emulator import Emulator
from tests.emulator_gate import GiB, GpuModel, estimated_size, show_llama3_8b, show_llama3_70b, show_mid

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB", "bandwidth": "1008GB/s"}]
FREE = 22 * GiB
CUDA = 500 * 1024**2
ME = pwd.getpwuid(os.getuid()).pw_name  # the loopback user of this process's own connections

# the tokens each user's client sends (the tokens file keeps only their sha256)
TOKENS = {
    "alice": "vg_alice_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "bob": "vg_bob_0123456789abcdefghijklmnopqrstuvwxyzABCD",
    "carol": "vg_carol_0123456789abcdefghijklmnopqrstuvwxyzAB",
    "dave": "vg_dave_0123456789abcdefghijklmnopqrstuvwxyzABC",
}


def world() -> Emulator:
    """Ollama 0.33 with a few models of known shapes (sizes by the footprint estimator)."""
    emu = Emulator(default_num_ctx=32768)
    emu.add_model("llama3:8b", show_llama3_8b())  # 5.0 GiB at num_ctx 4096 as the gate sizes it, 17.2 at 98304
    emu.add_model("llama3:70b", show_llama3_70b())  # never fits
    emu.add_model("small:1b", show_mid(8))  # 1.0 GiB at 4096
    emu.add_model("small:3b", show_mid(24))  # 1.8 GiB at 4096, 4.5 at 32768
    emu.add_model("qwen3:8b", show_llama3_8b())
    emu.add_model("gemma3:8b", show_llama3_8b())
    return emu


def write_tokens(path: Path, users: dict[str, str] = TOKENS) -> Path:
    book = TokenBook()
    for user, token in users.items():
        book = book.with_token(user, token)
    path.write_text(book.render(), encoding="utf-8")
    return path


@dataclass
class Reply:
    """One HTTP exchange as the client saw it."""

    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, or the text

    @property
    def error(self) -> str:
        if isinstance(self.body, dict):
            err = self.body.get("error")
            return err.get("message", "") if isinstance(err, dict) else str(err or "")
        return ""


@dataclass
class SharedGpu:
    url: str
    gate: Gate
    emulator: Emulator
    gpu: GpuModel | None
    audit_path: Path
    policy_path: Path | None
    tokens_path: Path | None
    tmp: Path
    clients: list[ollama.AsyncClient] = field(default_factory=list)

    def events(self, *names: str) -> list[dict[str, Any]]:
        """The audit file's decision lines (all of them, or those named)."""
        if not self.audit_path.exists():
            return []
        lines = [json.loads(line) for line in self.audit_path.read_text(encoding="utf-8").splitlines() if line]
        return [e for e in lines if not names or e["event"] in names]

    def client(self, user: str | None = None, token: str | None = None) -> ollama.AsyncClient:
        """The official async client, as ``user`` (by their token), or with no token at all."""
        token = token if token is not None else (TOKENS[user] if user is not None else None)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        c = ollama.AsyncClient(host=self.url, headers=headers, timeout=30)
        self.clients.append(c)
        return c

    async def call(self, path: str, body: dict[str, Any] | bytes | None = None, *, user: str | None = None,
                   method: str = "POST", token: str | None = None) -> Reply:
        """A raw request (status and headers matter), as ``user`` by their token."""
        token = token if token is not None else (TOKENS[user] if user is not None else None)
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        async with aiohttp.ClientSession() as s, s.request(method, self.url + path, data=data, headers=headers) as r:
            raw = await r.read()
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw.decode(errors="replace")
            return Reply(r.status, dict(r.headers), parsed)

    async def close(self) -> None:
        for c in self.clients:
            await c._client.aclose()


class Starter:
    """``await start(policy_text, **settings)``: vramgate with that policy (None: no policy file) in
    front of ``emulator`` with a ``GpuModel`` of ``FREE`` bytes; ``await start.close()`` at the end."""

    def __init__(self, start_proxy: Any, emulator: Emulator, tmp_path: Path) -> None:
        self._start_proxy = start_proxy
        self.emulator = emulator
        self.tmp = tmp_path
        self.opened: list[SharedGpu] = []

    async def __call__(self, policy: str | None = None, *, tokens: bool = True, gpu_model: bool = True,
                       **settings: Any) -> SharedGpu:
        gates: list[Gate] = []

        def factory(s: Any, session: Any) -> Gate:
            g = build_admission(s, session)
            gates.append(g)
            return g

        policy_path = None
        if policy is not None:
            policy_path = self.tmp / "policy.toml"
            policy_path.write_text(policy, encoding="utf-8")
        tokens_path = write_tokens(self.tmp / "tokens.toml") if tokens else None
        audit = self.tmp / "audit.jsonl"
        emu = self.emulator
        gpu = GpuModel(emu, FREE, estimated_size(emu), cuda_context=CUDA).install() if gpu_model else None
        values: dict[str, Any] = {"gpu": "static", "static_gpus": STATIC, "audit_file": audit,
                                  "policy_file": policy_path, "tokens_file": tokens_path, **settings}
        url = await self._start_proxy(admission_factory=factory, **values)
        shared = SharedGpu(url, gates[0], emu, gpu, audit, policy_path, tokens_path, self.tmp)
        self.opened.append(shared)
        return shared

    async def close(self) -> None:
        for shared in self.opened:
            await shared.close()


class Held:
    """A streamed request held open after its first line: its model stays busy (generating) until
    ``release()``. The emulator must hang the stream (``Fault(path, "hang", after=1)``)."""

    def __init__(self, shared: SharedGpu, path: str, body: dict[str, Any], user: str | None = None) -> None:
        self.shared, self.path, self.body, self.user = shared, path, body, user
        self.status = 0
        self.headers: dict[str, str] = {}
        self.first: Any = None
        self._session: aiohttp.ClientSession | None = None
        self._response: aiohttp.ClientResponse | None = None

    async def start(self) -> Held:
        headers = {"Authorization": f"Bearer {TOKENS[self.user]}"} if self.user is not None else {}
        self._session = aiohttp.ClientSession()
        self._response = await self._session.post(self.shared.url + self.path, data=json.dumps(self.body),
                                                  headers=headers)
        self.status, self.headers = self._response.status, dict(self._response.headers)
        line = await self._response.content.readline()
        self.first = json.loads(line) if line.strip() else None
        return self

    async def release(self) -> None:
        """The client goes away; returns once vramgate counts the model idle again."""
        if self._response is not None:
            self._response.close()
        if self._session is not None:
            await self._session.close()
        self._response = self._session = None
        gate = self.shared.gate
        await until(lambda: not gate.residency.in_flight.get(_key(self.body["model"]), 0))


def _key(model: str) -> str:
    return model if ":" in model else f"{model}:latest"


async def until(predicate: Callable[[], bool], timeout: float = 3.0, step: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds (state that is not the emulator's, e.g. the gate's queue)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            return False
        await asyncio.sleep(step)
    return True


def chat_body(model: str, prompt: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False, **extra}
