"""vramgate's own endpoints on a running proxy with the fit gate and the emulator: the picture is
the gate's (who holds what, the last decisions), the metrics count what happened, health follows
the upstream. The page itself is checked in Chromium in test_observe_page.py."""

from __future__ import annotations

import os
import pwd

import aiohttp
import ollama
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import GpuModel, show_llama3_8b, show_llama3_70b
from tests.test_gate_loads import CUDA, FREE, STATIC, footprint_size

ME = pwd.getpwuid(os.getuid()).pw_name  # a loopback client is this process's user


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator(default_num_ctx=32768)
    emu.add_model("llama3:8b", show_llama3_8b())
    emu.add_model("llama3:70b", show_llama3_70b())
    return emu


@pytest.fixture
async def url(start_proxy, emulator):
    GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA).install()
    return await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC)


async def get(url: str, path: str) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as s, s.get(url + path) as r:
        return r.status, await r.read(), r.headers


async def load_two(url: str) -> None:
    client = ollama.AsyncClient(host=url)
    await client.generate("llama3:8b", "hi", options={"num_ctx": 1_000_000})  # shrunk to what fits
    with pytest.raises(ollama.ResponseError) as refused:
        await client.generate("llama3:70b", "hi")
    assert refused.value.status_code == 507


async def test_status_shows_who_holds_the_gpu_and_the_last_decisions(url):
    await load_two(url)
    status, body, headers = await get(url, "/vramgate/status")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    data = __import__("json").loads(body)
    assert data["schema"] == 1
    (gpu,) = data["gpus"]
    assert gpu["name"] == "RTX 4090" and gpu["total_bytes"] == 24 * 1024**3 and gpu["source"] == "static"
    (holder,) = [h for h in gpu["holders"] if h["kind"] == "ollama"]
    assert holder["name"] == "llama3:8b" and holder["owner"] == ME and holder["bytes"] > 10 * 1024**3
    (model,) = data["models"]
    assert model["name"] == "llama3:8b" and model["owner"] == ME and model["users"] == [ME]
    assert model["context_length"] < 131072 and model["predicted_bytes"] > 0 and model["busy"] is False
    events = [(d["event"], d["model"], d.get("status")) for d in data["decisions"]]
    assert ("load.rewritten", "llama3:8b", None) in events
    assert ("load.refused", "llama3:70b", 507) in events
    refused = next(d for d in data["decisions"] if d["event"] == "load.refused")
    assert refused["user"] == ME and refused["reason"] == "too_big" and "llama3:70b" in refused["explanation"]
    assert refused["num_ctx_from"] is None or isinstance(refused["num_ctx_from"], int)
    assert "hi" not in [v for d in data["decisions"] for v in d.values()]  # no prompt text


async def test_metrics_count_decisions_by_outcome_and_export_gpu_memory(url):
    await load_two(url)
    status, body, headers = await get(url, "/vramgate/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    assert samples[("vramgate_decisions_total", (("outcome", "rewritten"), ("reason", "rewritten"),
                                                 ("route", "/api/generate"), ("user", ME)))] == 1
    assert samples[("vramgate_decisions_total", (("outcome", "refused"), ("reason", "too_big"),
                                                 ("route", "/api/generate"), ("user", ME)))] == 1
    assert samples[("vramgate_gpu_total_bytes", (("gpu", "0"), ("name", "RTX 4090")))] == 24 * 1024**3
    assert samples[("vramgate_decision_seconds_count", ())] == 2
    assert samples[("vramgate_open_streams", ())] == 0
    held = samples[("vramgate_gpu_held_bytes", (("gpu", "0"), ("kind", "ollama")))]
    assert held > 10 * 1024**3


async def test_health_follows_the_upstream(start_proxy, url):
    status, body, _ = await get(url, "/vramgate/health")
    assert status == 200 and b'"ok"' in body
    dead = await start_proxy(upstream="http://127.0.0.1:9", probe_timeout=0.5)
    status, body, _ = await get(dead, "/vramgate/health")
    assert status == 503 and b"does not answer" in body


async def test_own_endpoints_never_reach_ollama(url, emulator):
    for path in ("/vramgate", "/vramgate/", "/vramgate/nothing", "/vramgate/health"):
        await get(url, path)
    assert not [r for r in emulator.received() if r.path.startswith("/vramgate")]


async def test_the_page_in_chromium_shows_the_readme_demo(url, tmp_path, request):
    """The README's demo in a real browser: the refused 70B model, the shrunk context, who holds what."""
    from tests.test_observe_page import ARTIFACTS, Browser, _announce, chromium_binary

    browser = Browser(chromium_binary(), tmp_path)
    await load_two(url)
    doc = await browser.dom(url + "/vramgate/", budget_ms=4000)
    assert doc.one("body").attrs.get("data-loaded") == "1"
    bar = doc.one("div", "gpu", data_index="0").one("div", "bar")
    segment = bar.one("div", "seg", data_kind="ollama")
    assert segment.attrs["data-name"] == "llama3:8b" and segment.attrs["data-who"] == ME
    kinds = {s.attrs["data-kind"]: int(s.attrs["data-bytes"]) for s in bar.all("div", "seg")}
    assert list(kinds)[-3:] == ["unattributed", "reserve", "free"]
    assert kinds["unattributed"] == 2 * 1024**3  # the static GPU's other programs (24 GiB total, 22 free)
    assert kinds["reserve"] == 1024**3 and sum(kinds.values()) == 24 * 1024**3  # the bar adds up
    (model,) = doc.all("tr", "model")
    cells = model.cells()
    assert cells[:3] == ["llama3:8b", ME, ME]
    context = int(cells[3].replace(",", ""))
    assert 2048 <= context < 131072  # the context vramgate shrank it to, not the million asked
    rows = {r.attrs["data-event"]: r for r in doc.all("tr", "decision")}
    assert "refused" in rows["load.refused"].classes and "llama3:70b" in rows["load.refused"].cells()
    assert "507" in rows["load.refused"].cells() and "refused" not in rows["load.rewritten"].classes
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page-live.png"
    await browser.run(url + "/vramgate/", f"--screenshot={shot}", "--window-size=1280,900", budget_ms=4000)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _announce(request.config, f"status page (live, README demo) screenshot: {shot}")
