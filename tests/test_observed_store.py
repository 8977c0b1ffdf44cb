"""Observed load sizes kept across restarts (proxy.gate.observed): the store alone, then a gate that
learns a correction, is restarted, and still applies it; the status JSON, `plan --json` and the page
show the history."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from proxy.cli import main
from proxy.edge.server import start_server
from proxy.gate import observed
from proxy.gate.observed import FILE_NAME, LoadConfig, ObservedStore, default_state_dir, store_path
from proxy.gate.residency import Residency
from proxy.gate.service import Gate, build_admission
from tests.conftest import proxy_settings
from tests.emulator import Emulator
from tests.emulator_gate import GiB, GpuModel, small_and_big
from tests.observe_status import FakeSource, status
from tests.test_gate_loads import CUDA, FREE, STATIC, footprint_size, post
from tests.test_observe_page import browser, serve  # noqa: F401  (fixtures)

CONFIG = LoadConfig(num_ctx=8192, num_batch=1024, parallel=1, kv_type="f16", flash_attention=True,
                    rules="llama.cpp b9460+ (Ollama >= 0.30.1)")
DIGEST = "a" * 64


def test_default_state_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir() == tmp_path / "vramgate"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")  # the XDG spec: only absolute paths count
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_state_dir() == tmp_path / "home" / ".local" / "state" / "vramgate"
    assert store_path(tmp_path / "mine") == tmp_path / "mine" / FILE_NAME


def test_observations_persist_across_a_reopen(tmp_path):
    path = tmp_path / "state" / FILE_NAME  # the directory is created
    store = ObservedStore(path).open()
    assert store.persistent and store.problem is None and store.empty
    store.record(DIGEST, CONFIG, 9 * GiB, 10 * GiB, 1_000.0, model="llama3:8b", observed_vram=10 * GiB)
    wider = LoadConfig(32768, 1024, 1, "f16", True, CONFIG.rules)
    store.record(DIGEST, wider, 12 * GiB, 12 * GiB + 3 * 2**20, 2_000.0, model="llama3:8b")
    store.record("b" * 64, CONFIG, 5 * GiB, 4 * GiB, 3_000.0, model="other:latest")  # smaller than predicted
    store.close()

    again = ObservedStore(path).open()  # a restart
    rows = again.history(DIGEST)
    assert [(o.time, o.config, o.predicted_bytes, o.observed_bytes) for o in rows] == [
        (1_000.0, CONFIG, 9 * GiB, 10 * GiB), (2_000.0, wider, 12 * GiB, 12 * GiB + 3 * 2**20)]
    assert rows[0].observed_vram_bytes == 10 * GiB and rows[0].model == "llama3:8b"
    assert again.history(DIGEST, limit=1) == rows[-1:]
    assert again.correction(DIGEST, CONFIG) == GiB  # that configuration's excess
    assert again.correction(DIGEST, wider) == 3 * 2**20
    assert again.correction(DIGEST) == GiB  # any configuration: the largest
    assert again.correction(DIGEST, LoadConfig(4096, 512, 1, "q8_0", True, CONFIG.rules)) == GiB  # unseen: any
    assert again.correction("b" * 64) == 0  # a load smaller than predicted never lowers a prediction
    assert again.correction("c" * 64) == 0
    assert again.corrections() == {DIGEST: GiB}
    assert again.latest_digest("llama3:8b") == DIGEST and again.latest_digest("nothing") is None
    assert rows[0].as_dict() == {"time": "1970-01-01T00:16:40Z", "model": "llama3:8b", "digest": DIGEST,
                                 "predicted_bytes": 9 * GiB, "observed_bytes": 10 * GiB,
                                 "observed_vram_bytes": 10 * GiB, "num_ctx": 8192, "num_batch": 1024, "parallel": 1,
                                 "kv_type": "f16", "flash_attention": True, "rules": CONFIG.rules}
    again.close()


def test_old_rows_are_trimmed_per_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(observed, "KEEP_PER_DIGEST", 3)
    path = tmp_path / FILE_NAME
    store = ObservedStore(path).open()
    for i in range(5):
        store.record(DIGEST, CONFIG, 100, 100 + i, float(i))
    store.record("b" * 64, CONFIG, 1, 2, 9.0)
    assert [o.time for o in store.history(DIGEST)] == [2.0, 3.0, 4.0]
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM observations WHERE digest = ?", (DIGEST,)).fetchone() == (3,)
    assert [o.time for o in ObservedStore(path).open().history(DIGEST)] == [2.0, 3.0, 4.0]


def test_an_unusable_state_dir_is_one_warning_and_memory_only(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with capture_logs() as logs:
        store = ObservedStore(blocker / "vramgate" / FILE_NAME).open()
        store.record(DIGEST, CONFIG, 100, 150, 1.0)
        store.record(DIGEST, CONFIG, 100, 120, 2.0)
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["gate.state_unavailable"]
    assert "a-file" in warnings[0]["path"] and "memory only" in warnings[0]["consequence"]
    assert not store.persistent and store.problem is not None
    assert store.correction(DIGEST) == 50 and len(store.history(DIGEST)) == 2  # it keeps working


def test_a_file_that_fails_later_is_dropped_with_one_warning(tmp_path):
    store = ObservedStore(tmp_path / FILE_NAME).open()
    assert store._db is not None
    store._db.close()  # whatever makes the next write fail (a full disk, a file removed under it)
    with capture_logs() as logs:
        store.record(DIGEST, CONFIG, 100, 130, 1.0)
        store.record(DIGEST, CONFIG, 100, 140, 2.0)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["gate.state_unavailable"]
    assert not store.persistent and store.correction(DIGEST) == 40


def test_read_only_opening_never_creates_anything(tmp_path):
    missing = tmp_path / "nothing" / FILE_NAME
    assert ObservedStore.open_read_only(missing).empty
    assert not (tmp_path / "nothing").exists()
    path = tmp_path / FILE_NAME
    writer = ObservedStore(path).open()
    writer.record(DIGEST, CONFIG, 100, 200, 1.0)
    reader = ObservedStore.open_read_only(path)  # while the gate still has it open
    assert reader.correction(DIGEST) == 100 and not reader.persistent
    writer.close()
    (tmp_path / "junk.sqlite3").write_bytes(b"this is not a database" * 100)
    junk = ObservedStore.open_read_only(tmp_path / "junk.sqlite3")
    assert junk.empty and junk.problem is not None


def test_residency_applies_the_learnt_correction_by_digest():
    r = Residency(learned={DIGEST: 5 * GiB})
    assert r.correction("llama3:8b", DIGEST) == 5 * GiB
    assert r.correction("llama3:8b", "b" * 64) == 0 and r.correction("llama3:8b") == 0  # a re-pulled model
    r.observe("llama3:8b", 10 * GiB, 8 * GiB, "b" * 64)
    assert r.correction("llama3:8b") == 2 * GiB and r.learned["b" * 64] == 2 * GiB


# --- a gate restarted in-process ------------------------------------------------------------------


@pytest.fixture
def emulator() -> Emulator:
    return small_and_big()


async def eventually(predicate, timeout: float = 3.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_correction_survives_a_gate_restart(emulator, emulator_url, tmp_path):
    # The real load is 14 GiB bigger than predicted: a /v1 request (automatic num_gpu) spills; the gate
    # unloads it, learns the excess and keeps it in state_dir.
    GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA, spill_extra={"llama3:8b": 14 * GiB}).install()
    settings = proxy_settings(emulator_url, gpu="static", static_gpus=STATIC, unload_on_spill=True,
                              state_dir=str(tmp_path / "state"))
    chat = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    first = await start_server(settings, admission_factory=build_admission)
    try:
        status, _, _ = await post(first.url, "/v1/chat/completions", chat)
        assert status == 200
        gate = first.admission
        assert isinstance(gate, Gate) and gate.observed.persistent
        assert await eventually(lambda: bool(gate.observed.history(emulator.models["llama3:8b"].digest)))
        assert await emulator.wait_for(lambda: "llama3:8b" not in emulator.runners)
    finally:
        await first.close()

    digest = emulator.models["llama3:8b"].digest
    on_disk = ObservedStore.open_read_only(tmp_path / "state" / FILE_NAME)
    (seen,) = on_disk.history(digest)
    runner_size = seen.observed_bytes
    assert seen.model == "llama3:8b" and seen.config.rules == "llama.cpp b9460+ (Ollama >= 0.30.1)"
    assert 13 * GiB < seen.excess <= 14 * GiB and seen.config.num_ctx == 32768
    assert seen.observed_vram_bytes < runner_size  # it spilled

    second = await start_server(settings, admission_factory=build_admission)  # the restart
    try:
        assert second.admission.residency.learned == {digest: seen.excess}
        status, _, body = await post(second.url, "/v1/chat/completions", chat)
        assert status in (503, 507)  # refused instead of spilling again
        assert body["vramgate"]["need"]["learned_correction_bytes"] == seen.excess
        assert "its last load took beyond the estimate" in body["error"]["message"]
    finally:
        await second.close()


async def test_without_a_usable_state_dir_the_gate_still_learns_in_memory(emulator, emulator_url, tmp_path):
    GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA, spill_extra={"llama3:8b": 14 * GiB}).install()
    (tmp_path / "a-file").write_text("")
    settings = proxy_settings(emulator_url, gpu="static", static_gpus=STATIC, unload_on_spill=True,
                              state_dir=str(tmp_path / "a-file" / "state"))
    chat = {"model": "llama3:8b", "messages": [{"role": "user", "content": "hi"}]}
    with capture_logs() as logs:
        running = await start_server(settings, admission_factory=build_admission)
    try:
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["gate.state_unavailable"]
        assert (await post(running.url, "/v1/chat/completions", chat))[0] == 200
        assert await emulator.wait_for(lambda: "llama3:8b" not in emulator.runners)
        status, _, body = await post(running.url, "/v1/chat/completions", chat)
        assert status in (503, 507) and body["vramgate"]["need"]["learned_correction_bytes"] > 13 * GiB
    finally:
        await running.close()


async def test_status_and_plan_show_the_history(emulator, emulator_url, tmp_path, monkeypatch, capsys):
    GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA).install()
    monkeypatch.setenv("VRAMGATE_UPSTREAM", emulator_url)
    settings = proxy_settings(emulator_url, gpu="static", static_gpus=STATIC)  # state_dir: the test's XDG dir
    running = await start_server(settings, admission_factory=build_admission)
    digest = emulator.models["llama3:8b"].digest
    try:
        body = {"model": "llama3:8b", "prompt": "hi", "stream": False, "options": {"num_ctx": 8192}}
        assert (await post(running.url, "/api/generate", body))[0] == 200
        gate = running.admission
        assert await eventually(lambda: bool(gate.observed.history(digest)))
        async with __import__("aiohttp").ClientSession() as s, s.get(running.url + "/vramgate/status") as r:
            data = await r.json()
    finally:
        await running.close()
    (model,) = data["models"]
    (entry,) = model["observed_history"]
    assert set(entry) == {"time", "predicted_bytes", "observed_bytes", "num_ctx"} and entry["num_ctx"] == 8192
    assert entry["time"].endswith("Z") and entry["observed_bytes"] == model["size_bytes"]
    assert entry["predicted_bytes"] == model["predicted_bytes"]  # no correction was learnt: the same number

    # plan reads the store without a gate: the model's digest from Ollama's /api/tags
    assert await asyncio.to_thread(main, ["plan", "llama3:8b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (planned,) = out["observed_history"]
    assert planned["digest"] == digest and planned["num_ctx"] == 8192 and planned["rules"] == out["rules"]["name"]
    assert planned["observed_bytes"] == entry["observed_bytes"]
    # a model nobody loaded has no history, and a plan without --json says nothing of it
    emulator.add_model("fresh:latest")
    assert await asyncio.to_thread(main, ["plan", "fresh", "--json"]) == 0
    assert "observed_history" not in json.loads(capsys.readouterr().out)


def test_plan_from_a_saved_show_finds_the_history_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    store = ObservedStore(store_path(None)).open()
    store.record(DIGEST, CONFIG, 100, 150, 1.0, model="show-llama3.1-8b-q4_K_M:latest")
    store.close()
    show = Path(__file__).parent / "data" / "show-llama3.1-8b-q4_K_M.json"
    assert main(["plan", "--show", str(show), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["observed_history"]
    assert entry["digest"] == DIGEST and entry["observed_bytes"] == 150


async def test_the_page_shows_a_history_cell_when_there_is_one(serve, browser):  # noqa: F811
    with_history = status()
    with_history["models"][0]["observed_history"] = [
        {"time": "2026-12-01T11:00:00Z", "predicted_bytes": 20 * GiB, "observed_bytes": 21 * GiB, "num_ctx": 8192},
        {"time": "2026-12-01T11:30:00Z", "predicted_bytes": 17 * GiB, "observed_bytes": 17 * GiB, "num_ctx": 8192}]
    served = await serve(FakeSource(with_history))
    doc = await browser.dom(served.url)
    assert "History" in [th.text for th in doc.one("section", id="models").all("th")]
    rows = {row.attrs["data-model"]: row for row in doc.all("tr", "model")}
    cell = rows["qwen3:32b"].one("td", "history")
    assert cell.text == "+5.0% +0.0%"
    assert "num_ctx 8192: predicted 20.0 GiB, observed 21.0 GiB" in cell.attrs["title"]
    assert rows["qwen3:32b"].cells()[:9] == ["qwen3:32b", "alice", "alice, bob", "8,192", "4m 00s", "17.0 GiB",
                                             "18.0 GiB", "+5.9%", "idle 1m 00s"]
    assert len(rows["qwen3:32b"].cells()) == 10 and rows["qwen3:32b"].cells()[9] == "+5.0% +0.0%"
    others = [row for name, row in rows.items() if name != "qwen3:32b"]
    assert [row.cells()[9] for row in others] == [""]  # a model without history: an empty cell
