"""Shared fixtures: an Ollama emulator and vramgate in front of it, both on 127.0.0.1, free ports.

``emulator`` is the state object (add models, inject faults, read what it received);
``emulator_url`` / ``proxy_url`` are the two base URLs. ``start_proxy`` starts another proxy
with chosen settings or admission (the fit gate's tests use it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from proxy.config.log_setup import configure_logging
from proxy.config.settings import Settings, load_settings
from proxy.edge.server import AdmissionFactory, RunningProxy, start_server
from proxy.gate.admission import Admission
from tests.emulator import Emulator, Running, serve

StartProxy = Callable[..., Awaitable[str]]


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    configure_logging("json", "warning")


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator()
    emu.add_model("llama3:8b")
    emu.add_model("nomic-embed-text")
    return emu


@pytest.fixture
async def emulator_server(emulator: Emulator) -> AsyncIterator[Running]:
    running = await serve(emulator.app())
    yield running
    await running.close()


@pytest.fixture
async def emulator_url(emulator_server: Running) -> str:
    return emulator_server.url


@pytest.fixture
async def start_proxy(emulator_url: str) -> AsyncIterator[StartProxy]:
    """Start a proxy; returns its base URL. Defaults: upstream = the emulator, pass-through."""
    started: list[RunningProxy] = []

    async def start(
        *,
        admission: Admission | None = None,
        admission_factory: AdmissionFactory | None = None,
        upstream: str | None = None,
        **settings: Any,
    ) -> str:
        config = proxy_settings(upstream or emulator_url, **settings)
        running = await start_server(config, admission, admission_factory=admission_factory)
        started.append(running)
        return running.url

    yield start
    for running in reversed(started):
        await running.close()


@pytest.fixture
async def proxy_url(start_proxy: StartProxy) -> str:
    return await start_proxy()


def proxy_settings(upstream: str, **overrides: Any) -> Settings:
    """Settings for an in-process proxy, independent of the environment running the tests."""
    values: dict[str, Any] = {"upstream": upstream, "listen": "127.0.0.1:0", "shutdown_grace": 0.5, **overrides}
    return load_settings(None, **values)
