"""One answer for one question: ``vramgate plan`` and the running gate charge the same bytes for
the same model, context and GPU (they share the version rules, batch choice and overheads)."""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.cli import main
from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import small_and_big

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "24GiB"}]


@pytest.fixture
def emulator() -> Emulator:
    return small_and_big()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("OLLAMA_NUM_PARALLEL", "OLLAMA_KV_CACHE_TYPE", "OLLAMA_FLASH_ATTENTION", "OLLAMA_CONTEXT_LENGTH",
                "VRAMGATE_CONFIG"):
        monkeypatch.delenv(var, raising=False)


async def _gate_need(start_proxy, tmp_path, body: dict) -> tuple[int, dict]:
    audit = tmp_path / "audit.jsonl"
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, audit_file=str(audit))
    import aiohttp

    async with aiohttp.ClientSession() as s, s.post(url + "/api/generate", json=body) as r:
        await r.read()
        status = r.status
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    return status, next(e for e in events if e["event"].startswith("load."))


@pytest.mark.parametrize("model,options,plan_args,plan_rc", [
    ("llama3:8b", {}, [], 0),
    ("llama3:8b", {"num_ctx": 65536}, ["--num-ctx", "65536"], 0),
    ("llama3:8b", {"num_ctx": 8192, "num_batch": 2048}, ["--num-ctx", "8192", "--num-batch", "2048"], 0),
    ("llama3:70b", {}, [], 3),  # does not fit: plan exits 3
])
async def test_plan_charges_what_the_gate_charges(start_proxy, emulator_url, tmp_path, monkeypatch, capsys,
                                                  model, options, plan_args, plan_rc):
    status, event = await _gate_need(start_proxy, tmp_path, {"model": model, "prompt": "hi", "stream": False,
                                                             "options": options})
    assert (status == 200) == (plan_rc == 0)
    monkeypatch.setenv("VRAMGATE_UPSTREAM", emulator_url)
    rc = await asyncio.to_thread(main, ["plan", model, "--vram", "24GiB", "--json", *plan_args])
    plan = json.loads(capsys.readouterr().out)
    assert rc == plan_rc
    assert plan["charged_bytes"] == event["need_bytes"]
    assert plan["ollama_version"] == "0.33.0"  # the emulator's: both asked the same server
