"""What refused and rewritten clients read: the paragraph, the headers, the log; pure and end to end.

The pure tests reuse the hand-made linear footprint of ``test_decision`` (weights + 1 GiB of KV per
8192 tokens + 0.5 GiB compute + 0.5 GiB CUDA context), so the numbers follow by hand.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from proxy.gate.decision import Admit, Refuse, decide
from proxy.gate.explanation import admit_headers, num_ctx_steps, refusal_body, refusal_headers, refusal_text
from proxy.gate.service import build_admission
from tests.emulator import Emulator
from tests.emulator_gate import GiB, GpuModel, show_llama3_8b, show_mid
from tests.test_decision import gpu, inputs, nvml, resident, static
from tests.test_gate_loads import CUDA, FREE, STATIC, footprint_size, forwarded, post

# --- static GPUs held by other programs: 507, and what to do instead ---------------------------------


def test_static_others_refusal_says_waiting_will_not_help_and_what_fits_now():
    # budget 6.2 - 1 = 5.2 GiB, fixed 5 GiB: 0.2 GiB of KV = 1638 tokens -> 1536, below min_num_ctx
    d = decide(inputs(options={"num_ctx": 8192}, gpus=static(gpu(free=6.2))))
    assert isinstance(d, Refuse) and (d.status, d.reason, d.fits_ctx_now) == (507, "held_by_others", 1536)
    text = refusal_text(d)
    assert "Held by: programs other than Ollama 17.8 GiB on GPU 0." in text
    assert text.endswith(
        "It does not fit next to what programs other than Ollama hold (17.8 GiB on GPU 0), and with"
        " VRAMGATE_GPU=static that memory is taken for good, so waiting will not help: ask for num_ctx 1536 or"
        " less with options.num_ctx, which fits now (below min_num_ctx 2048, so vramgate did not shrink it"
        " itself); or use a smaller quantization or a model with fewer parameters; or free their memory and"
        " raise free in VRAMGATE_STATIC_GPUS to match."
    )
    assert "retry" not in text.lower()
    assert refusal_headers(d) == {"Content-Type": "application/json; charset=utf-8",
                                  "X-Vramgate-Decision": "refused 507 held_by_others"}
    numbers = json.loads(refusal_body(d))["vramgate"]
    assert (numbers["status"], numbers["reason"], numbers["retry_after_s"]) == (507, "held_by_others", None)


def test_static_others_refusal_on_v1_says_where_to_set_the_context():
    d = decide(inputs(route="openai", gpus=static(gpu(free=8))))
    assert isinstance(d, Refuse) and d.reason == "held_by_others"
    assert "ask for num_ctx 16384 or less with PARAMETER num_ctx in the model's Modelfile" in refusal_text(d)
    assert "(below min_num_ctx" not in refusal_text(d)
    error = json.loads(refusal_body(d))["error"]
    assert error["code"] == "insufficient_gpu_memory"  # not model_too_large: the model would fit these GPUs


def test_static_others_refusal_without_a_context_that_fits_now():
    d = decide(inputs(gpus=static(gpu(free=5.9))))  # 4.9 GiB usable, 5 GiB fixed: nothing fits now
    assert isinstance(d, Refuse) and d.reason == "held_by_others" and d.fits_ctx_now is None
    assert "waiting will not help: use a smaller quantization" in refusal_text(d)


def test_a_busy_model_in_the_way_still_says_retry():
    d = decide(inputs(weights=12 * GiB, residents=[resident("big:latest", 15, busy=True)]))
    assert isinstance(d, Refuse) and (d.status, d.retry_after) == (503, 10)
    assert "It would fit once other holders let go of memory: retry in 10 s." in refusal_text(d)
    assert refusal_headers(d)["Retry-After"] == "10"


def test_nvml_others_still_503():
    d = decide(inputs(gpus=nvml(gpu(free=5.9))))
    assert isinstance(d, Refuse) and (d.status, d.retry_after, d.reason) == (503, 60, "no_room")
    assert "retry in 60 s" in refusal_text(d)


# --- X-Vramgate-Num-Ctx: the ask, then each lowering and why ------------------------------------------


@pytest.mark.parametrize(
    "kw,header",
    [
        ({"options": {"num_ctx": 1000000}}, "1000000 -> 262144 (trained context) -> 147456 (GPU memory)"),
        ({"options": {"num_ctx": 1000000}, "trained": 131072}, "1000000 -> 131072 (trained context)"),
        ({"options": {"num_ctx": 262144}}, "262144 -> 147456 (GPU memory)"),
        ({"options": {"num_ctx": 8192}}, None),
        ({"trained": 8192}, None),  # the server default capped: Ollama's own pick, not an ask
    ],
)
def test_num_ctx_header(kw, header):
    d = decide(inputs(**kw))
    assert isinstance(d, Admit)
    assert admit_headers(d).get("X-Vramgate-Num-Ctx") == header


def test_num_ctx_steps_for_the_log():
    d = decide(inputs(options={"num_ctx": 1000000}))
    assert isinstance(d, Admit)
    assert num_ctx_steps(d) == [{"num_ctx": 262144, "reason": "trained context"},
                                {"num_ctx": 147456, "reason": "GPU memory"}]


# --- end to end: client -> vramgate (static GPU) -> Ollama emulator ----------------------------------


@pytest.fixture
def emulator() -> Emulator:
    emu = Emulator(default_num_ctx=32768, load_delay=0.01)
    emu.add_model("llama3:8b", show_llama3_8b())  # trained 131072
    emu.add_model("other", show_llama3_8b())
    emu.add_model("mid", show_mid(12))  # trained 32768
    return emu


@pytest.fixture
def gpu_model(emulator: Emulator) -> GpuModel:
    return GpuModel(emulator, FREE, footprint_size(emulator), cuda_context=CUDA).install()


async def test_header_and_log_show_the_ask_the_trained_context_and_memory(start_proxy, emulator, gpu_model, tmp_path):
    path = tmp_path / "audit.jsonl"
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, audit_file=str(path))
    status, headers, _ = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False,
                                                           "options": {"num_ctx": 1000000}})
    assert status == 200
    (sent,) = forwarded(emulator)
    to = sent["options"]["num_ctx"]
    assert 2048 <= to < 131072
    assert headers["X-Vramgate-Num-Ctx"] == f"1000000 -> 131072 (trained context) -> {to} (GPU memory)"
    assert headers["X-Vramgate-Decision"] == f"rewritten num_ctx={to} num_gpu=33"
    (event,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert event["event"] == "load.rewritten"
    assert (event["num_ctx_from"], event["num_ctx_to"]) == (1000000, to)


async def test_log_carries_the_reasons(start_proxy, emulator, gpu_model, tmp_path):
    path = tmp_path / "audit.jsonl"
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, audit_file=str(path))
    await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False,
                                      "options": {"num_ctx": 1000000}})
    (event,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert [s["reason"] for s in event["num_ctx_steps"]] == ["trained context", "GPU memory"]


async def test_header_with_one_step(start_proxy, emulator, gpu_model):
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC)
    status, headers, _ = await post(url, "/api/generate", {"model": "mid", "prompt": "hi", "stream": False,
                                                           "options": {"num_ctx": 100000}})
    assert status == 200
    assert headers["X-Vramgate-Num-Ctx"] == "100000 -> 32768 (trained context)"
    assert headers["X-Vramgate-Decision"] == "admitted num_ctx=32768 num_gpu=13"
    emulator.runners.clear()
    status, headers, _ = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False,
                                                           "options": {"num_ctx": 131072}})
    assert status == 200
    to = forwarded(emulator)[-1]["options"]["num_ctx"]
    assert headers["X-Vramgate-Num-Ctx"] == f"131072 -> {to} (GPU memory)"


async def test_static_gpu_held_by_other_programs_is_507(start_proxy, emulator, gpu_model):
    # other programs hold 19 of 24 GiB: 4 GiB usable; the 8B needs 4.8 GiB even at 2048, and they never leave
    crowded = [{"name": "RTX 4090", "total": "24GiB", "free": "5GiB"}]
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=crowded)
    status, headers, body = await post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi"})
    assert status == 507
    assert "Retry-After" not in headers
    assert headers["X-Vramgate-Decision"] == "refused 507 held_by_others"
    assert "Held by: programs other than Ollama 19.0 GiB on GPU 0." in body["error"]
    assert "VRAMGATE_GPU=static that memory is taken for good, so waiting will not help" in body["error"]
    assert "VRAMGATE_STATIC_GPUS" in body["error"]
    assert body["vramgate"]["fits_num_ctx_when_free"] == 32768
    assert emulator.received("/api/generate") == []


async def test_static_gpu_with_an_idle_ollama_model_in_the_way_is_503(start_proxy, emulator, gpu_model):
    emulator.preload("llama3:8b", 17 * GiB, num_ctx=8192)  # idle, and the policy does not evict it
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=STATIC, evict_idle=False)
    status, headers, body = await post(url, "/api/generate", {"model": "other", "prompt": "hi", "options": {"num_ctx": 8192}})
    assert status == 503
    assert headers["Retry-After"] == "60"
    assert headers["X-Vramgate-Decision"] == "refused 503 no_room"
    assert "retry in 60 s" in body["error"]


async def test_static_gpu_with_a_load_in_flight_in_the_way_is_503_soon(start_proxy, gpu_model):
    # 12 GiB configured free (11 usable): the first load (~9 GiB at 32768) is in flight for 1 s; the
    # second (~6 GiB at 8192, ~4.8 at 2048) does not fit next to it but will once it is done or gone
    emulator = gpu_model.emulator
    emulator.load_delay = 1.0
    half = [{"name": "RTX 4090", "total": "24GiB", "free": "12GiB"}]
    url = await start_proxy(admission_factory=build_admission, gpu="static", static_gpus=half)
    first = asyncio.create_task(post(url, "/api/generate", {"model": "llama3:8b", "prompt": "hi", "stream": False,
                                                            "options": {"num_ctx": 32768}}))
    for _ in range(200):  # until vramgate admitted it and forwarded it: its reservation is held now
        if emulator.received("/api/generate"):
            break
        await asyncio.sleep(0.01)
    status, headers, _ = await post(url, "/api/generate", {"model": "other", "prompt": "hi", "options": {"num_ctx": 8192}})
    assert (await first)[0] == 200
    assert status == 503
    assert headers["Retry-After"] == "10"
    assert headers["X-Vramgate-Decision"] == "refused 503 busy"
