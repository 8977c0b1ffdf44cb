"""The status page in a real headless Chromium (Debian's ``chromium`` package), against Endpoints.

The page and a fixture status are served by ``proxy.edge.endpoints.Endpoints`` on 127.0.0.1;
Chromium runs the page's own script (under its real Content-Security-Policy) and the rendered DOM
is checked: the bars' segments (kind, name, owner, bytes, width proportional to bytes), the model
and queue rows, the decisions newest first with the refusal marked ``refused``, the token read
from ``#token=``, the message when the status cannot be read, and that no name becomes markup.
A screenshot is saved to ``artifacts/status-page.png``.

Chromium is found as ``$VRAMGATE_CHROMIUM`` or on PATH; where it is missing and the tests run as root
on Debian, they install it with apt-get first (once). Without it the tests skip, except under CI
(``$CI`` set), where they fail.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer

from proxy.edge.endpoints import Endpoints
from proxy.observe.segments import bar_scale, gpu_segments
from tests.observe_status import EVIL, STATUS, FakeSource, status

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
SCREENSHOT = ARTIFACTS / "status-page.png"
TOKEN = "page-t0ken"
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
          "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--disable-extensions", "--mute-audio", "--hide-scrollbars")
RUN_TIMEOUT_S = 90


def _find() -> str | None:
    return os.environ.get("VRAMGATE_CHROMIUM") or next(filter(None, map(shutil.which, _NAMES)), None)


def _install_chromium() -> None:
    """Debian's chromium, as root with apt-get, once per machine (workers wait on a lock): the test
    command does its own set-up, like the oracle's build tools."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    lock = Path(os.environ.get("VRAMGATE_CACHE", Path.home() / ".cache" / "vramgate")) / "chromium-install.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if _find() is None:
            sys.stderr.write("\ninstalling Debian's chromium with apt-get (for the status page's tests)\n")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=False, capture_output=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                           env=env, check=False, capture_output=True)


def chromium_binary() -> str:
    found = _find()
    if found is None:
        _install_chromium()
        found = _find()
    if found is None:
        message = ("Chromium is not installed: apt-get install chromium chromium-driver (Debian), "
                   "or set VRAMGATE_CHROMIUM to a Chrome/Chromium binary")
        if os.environ.get("CI"):
            pytest.fail(f"{message}; CI must run the page tests (.ci/run installs it)")
        pytest.skip(message)
    return found


@dataclass
class Served:
    url: str  # the page: http://127.0.0.1:port/vramgate/
    source: FakeSource
    status_hits: list[str] = field(default_factory=list)  # Authorization header of each /vramgate/status


Serve = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[RawTestServer] = []

    async def start(source: FakeSource | None = None, *, token: str | None = None,
                    listen_loopback: bool = True) -> Served:
        source = source or FakeSource()
        endpoints = Endpoints(source, token, listen_loopback)
        served = Served("", source)

        async def handler(request: web.BaseRequest) -> web.StreamResponse:
            if request.path == "/vramgate/status":
                served.status_hits.append(request.headers.get("Authorization", ""))
            if not endpoints.handles(request.path):  # e.g. /favicon.ico: the page must not ask for it
                return web.Response(status=404, text="not vramgate's")
            return await endpoints.handle(request, request.path)

        server = RawTestServer(handler, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        served.url = str(server.make_url("/vramgate/"))
        return served

    yield start
    for server in servers:
        await server.close()


class Browser:
    def __init__(self, binary: str, tmp: Path) -> None:
        self.binary = binary
        self.tmp = tmp
        self.runs = 0

    async def run(self, url: str, *args: str, budget_ms: int = 5000) -> bytes:
        """Run Chromium once on ``url``; its stdout. Virtual time runs ``budget_ms`` (page timers included)."""
        self.runs += 1
        profile = self.tmp / f"profile-{self.runs}"
        proc = await asyncio.create_subprocess_exec(
            self.binary, *_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(self.tmp)})
        try:
            out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"Chromium did not finish within {RUN_TIMEOUT_S} s on {url}")
        if proc.returncode != 0:
            pytest.fail(f"Chromium exited {proc.returncode} on {url}: {err.decode(errors='replace')[-2000:]}")
        return out

    async def dom(self, url: str, budget_ms: int = 5000) -> Element:
        return parse(await self.run(url, "--dump-dom", budget_ms=budget_ms))


@pytest.fixture
def browser(tmp_path: Path) -> Browser:
    return Browser(chromium_binary(), tmp_path)


# --- the rendered DOM, as a small tree --------------------------------------------------------
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.walk()

    def all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Element]:
        return [e for e in self.walk() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
                and all(e.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Element:
        (found,) = self.all(tag, cls, **attrs)
        return found

    def cells(self) -> list[str]:
        return [td.text for td in self.all("td")]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in _VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: bytes) -> Element:
    builder = _TreeBuilder()
    builder.feed(html.decode())
    builder.close()
    return builder.root


def width_percent(element: Element) -> float:
    style = dict(part.split(":", 1) for part in element.attrs.get("style", "").split(";") if ":" in part)
    return float(style[" width" if " width" in style else "width"].strip().removesuffix("%"))


# --- the tests ------------------------------------------------------------------------------
async def test_bars_models_queue_and_decisions(serve: Serve, browser: Browser) -> None:
    served = await serve()
    doc = await browser.dom(served.url, budget_ms=7000)
    body = doc.one("body")
    assert body.attrs.get("data-loaded") == "1" and "data-error" not in body.attrs
    assert len(served.status_hits) >= 2  # it refreshes (every 3 s of the page's time)

    for gpu in STATUS["gpus"]:
        node = doc.one("div", "gpu", data_index=str(gpu["index"]))
        expected = gpu_segments(gpu)
        scale = bar_scale(gpu, expected)
        shown = node.one("div", "bar").all("div", "seg")
        assert [(s.attrs["data-kind"], s.attrs["data-name"], s.attrs.get("data-who"), int(s.attrs["data-bytes"]))
                for s in shown] == [(e.kind, e.name, e.who, e.bytes) for e in expected]
        for segment, want in zip(shown, expected):
            assert abs(width_percent(segment) - 100 * want.bytes / scale) < 0.001
        assert abs(sum(map(width_percent, shown)) - 100) < 0.01
    first = doc.one("div", "gpu", data_index="0")
    assert "24.0 GiB total" in first.text and "budget 1.5 GiB" in first.text
    qwen = first.one("div", "seg", data_name="qwen3:32b")
    assert qwen.attrs["data-who"] == "alice" and "18.0 GiB" in qwen.text and qwen.attrs["style"] == "width: 75%;"
    carol = first.one("div", "seg", data_kind="process")
    assert carol.attrs["data-who"] == "carol" and carol.attrs["data-pid"] == "4242" and "python3" in carol.text
    assert "busy" in first.one("tr", data_kind="pending").cells()

    # a name is text, never markup: no <img> was made, its onerror never ran
    assert doc.all("img") == [] and "data-pwned" not in body.attrs
    assert EVIL in doc.one("div", "seg", data_name=EVIL).text

    models = {row.attrs["data-model"]: row.cells() for row in doc.all("tr", "model")}
    assert models["qwen3:32b"] == ["qwen3:32b", "alice", "alice, bob", "8,192", "4m 00s", "17.0 GiB", "18.0 GiB",
                                   "+5.9%", "idle 1m 00s"]
    assert models[EVIL] == [EVIL, "outside vramgate", "", "4,096", "forever / unknown", "\u2014", "1.0 GiB",
                            "\u2014", "busy"]
    assert doc.one("tr", "queued").cells()[:4] == ["1", "dave", "llama3.1:8b", "0"]

    rows = doc.all("tr", "decision")
    assert [r.attrs["data-event"] for r in rows] == ["load.refused", "load.rewritten", "load.admitted"]
    assert ["refused" in r.classes for r in rows] == [True, False, False]
    refused = rows[0].cells()
    assert refused[1:7] == ["load.refused", "bob", "llama3.1:70b", "/api/chat", "507", "too_big"]
    assert "needs 42.3 GiB" in refused[7] and "(2s ago)" in refused[0]
    assert "num_ctx 131072 \u2192 128000" in rows[1].cells()[7]


async def test_the_token_comes_from_the_fragment(serve: Serve, browser: Browser) -> None:
    served = await serve(token=TOKEN, listen_loopback=False)
    doc = await browser.dom(served.url + "#token=" + TOKEN)
    assert doc.one("body").attrs.get("data-loaded") == "1"
    assert served.status_hits and set(served.status_hits) == {f"Bearer {TOKEN}"}

    doc = await browser.dom(served.url)  # no token: the page loads, the status does not
    body = doc.one("body")
    assert "data-loaded" not in body.attrs and body.attrs.get("data-error") == "1"
    error = doc.one(id="error")
    assert "hidden" not in error.attrs
    assert "401" in error.text and "#token=" in error.text
    assert doc.all("div", "seg") == []


async def test_a_status_that_cannot_be_read_is_said_plainly(serve: Serve, browser: Browser) -> None:
    source = FakeSource()
    source.fail = RuntimeError("the gate is not started")
    served = await serve(source)
    doc = await browser.dom(served.url)
    error = doc.one(id="error")
    assert "hidden" not in error.attrs
    assert "Cannot read vramgate's status" in error.text and "503" in error.text
    assert "the gate is not started" in error.text


async def test_screenshot(serve: Serve, browser: Browser, request: pytest.FixtureRequest) -> None:
    """For a reader: the fixture, with a realistic name where the injection test's name was."""
    demo = status()
    for holder in demo["gpus"][0]["holders"]:
        if holder["name"] == EVIL:
            holder["name"] = "nomic-embed-text:latest"
    demo["models"][1]["name"] = "nomic-embed-text:latest"
    served = await serve(FakeSource(demo))
    ARTIFACTS.mkdir(exist_ok=True)
    shot = browser.tmp / "status-page.png"
    await browser.run(served.url, f"--screenshot={shot}", "--window-size=1280,1200")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 1200)
    assert len(png) > 20_000  # a rendered page, not a blank one
    shutil.copyfile(shot, SCREENSHOT)
    _announce(request.config, f"status page screenshot: {SCREENSHOT}")


def _announce(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture, so the path shows in the run's output."""
    print(line)
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
        sys.stderr.write(f"\n{line}\n")
        sys.stderr.flush()
