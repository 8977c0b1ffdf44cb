"""The decision log: JSON lines with who/which/why, never prompt text."""

from __future__ import annotations

import json

from proxy.gate.audit import Audit, load_options
from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import show_llama3_8b, show_llama3_70b
from tests.test_gate_loads import STATIC, post

SECRET = "my bank password is hunter2"


def test_load_options_keep_only_memory_relevant_keys():
    assert load_options({"num_ctx": 8192, "stop": [SECRET], "temperature": 0.2, "num_gpu": 33}) == {"num_ctx": 8192, "num_gpu": 33}
    assert load_options(None) == {}


def test_audit_file_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    audit = Audit(path)
    audit.event("load.refused", model="m", status=507)
    audit.event("load.admitted", model="n")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["event"], e["model"]) for e in lines] == [("load.refused", "m"), ("load.admitted", "n")]
    assert lines[0]["time"].endswith("+00:00")


async def test_decisions_are_logged_without_prompts(start_proxy, emulator: Emulator, tmp_path):
    emulator.add_model("llama3:8b", show_llama3_8b())
    emulator.add_model("llama3:70b", show_llama3_70b())
    path = tmp_path / "audit.jsonl"
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, audit_file=str(path))
    await post(url, "/api/generate", {"model": "llama3:70b", "prompt": SECRET, "options": {"stop": [SECRET]}})
    await post(url, "/api/chat", {"model": "llama3:8b", "messages": [{"role": "user", "content": SECRET}], "stream": False,
                                  "options": {"num_ctx": 131072, "stop": [SECRET]}})
    text = path.read_text()
    assert SECRET not in text
    refused, rewritten = [json.loads(line) for line in text.splitlines()]
    assert refused["event"] == "load.refused" and refused["status"] == 507 and refused["client"] == "127.0.0.1"
    assert refused["explanation"].startswith("vramgate refused to load llama3:70b")
    assert rewritten["event"] == "load.rewritten" and rewritten["requested"] == {"num_ctx": 131072}
    assert rewritten["forwarded"]["num_ctx"] == rewritten["num_ctx_to"] < rewritten["num_ctx_from"] == 131072
