"""Shared fixtures: an Ollama emulator and vramgate in front of it, both on 127.0.0.1, free ports.

``emulator`` is the state object (add models, inject faults, read what it received);
``emulator_url`` / ``proxy_url`` are the two base URLs. ``start_proxy`` starts another proxy
with chosen settings or admission (the fit gate's tests use it).

The oracle's build and model-generation progress (tests/oracle/build.py) is written to the
terminal past pytest's output capture, so a first run's minutes-long llama.cpp build is visible.
"""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import nullcontext
from typing import Any

import pytest

from proxy.config import log_setup
from proxy.config.log_setup import configure_logging
from proxy.config.settings import Settings, load_settings
from proxy.edge.server import AdmissionFactory, RunningProxy, start_server
from proxy.gate.admission import Admission
from tests.emulator import Emulator, Running, serve
from tests.oracle.build import set_progress_writer

StartProxy = Callable[..., Awaitable[str]]


def pytest_configure(config: pytest.Config) -> None:
    set_progress_writer(_terminal_writer(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    set_progress_writer(None)


def _terminal_writer(config: pytest.Config) -> Callable[[str], None]:
    """Write a line to the terminal now, even from inside a captured fixture or collection.

    In an xdist worker stdout is not the terminal (the controller reports), stderr still is; a
    worker's first line after a pause starts on a new line (the controller may be mid-line).
    """
    in_worker = hasattr(config, "workerinput")
    last = [-1e9]

    def write(line: str) -> None:
        now = time.monotonic()
        if in_worker and now - last[0] > 2:
            line = "\n" + line
        last[0] = now
        capman = config.pluginmanager.getplugin("capturemanager")
        with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
            reporter = None if in_worker else config.pluginmanager.getplugin("terminalreporter")
            if reporter is not None:
                if reporter._tw.width_of_current_line:  # mid-line (-q progress dots): start a new one
                    reporter.write("\n")
                reporter.write_line(line)
                reporter.flush()
            else:
                sys.stderr.write(line + "\n")
                sys.stderr.flush()

    return write


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> None:
    # no cached loggers: a module's logger first used by one test must stay visible to a later
    # test's structlog.testing.capture_logs (which order and xdist's distribution decide)
    log_setup.CACHE_LOGGERS = False
    configure_logging("json", "warning")


@pytest.fixture(autouse=True)
def _own_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test's gates and plans keep observed load sizes in a directory of their own, never in
    the real ~/.local/state/vramgate (a correction learnt in one test must not change another)."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


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
    # queue_timeout 0: tests written before the queue see the fit gate's own answers (503) at once;
    # the queue's tests set it
    values: dict[str, Any] = {"upstream": upstream, "listen": "127.0.0.1:0", "shutdown_grace": 0.5,
                              "queue_timeout": 0, **overrides}
    return load_settings(None, **values)
