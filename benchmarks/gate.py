"""What the fit gate costs per gated request, in process, against the Ollama emulator.

Measures the time ``Gate.admit`` takes (the relay and the upstream excluded) for: a sticky request
to a resident model (the common case), a fresh load decision, a context rewrite, and a refusal
(two context searches). The emulator answers ``/api/ps``, ``/api/tags`` and ``/api/show`` on
loopback, so the numbers include those round trips. Also times the pure ``decide`` alone.

Usage: ``uv run python benchmarks/gate.py [--rounds 300]``. Prints p50/p95 in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from proxy.config.log_setup import configure_logging
from proxy.config.settings import load_settings
from proxy.gate.admission import AdmissionRequest
from proxy.gate.residency import VramgateLoad
from proxy.gate.service import Gate
from tests.emulator import serve
from tests.emulator_gate import demo_emulator

STATIC = [{"name": "RTX 4090", "total": "24GiB", "free": "22GiB", "bandwidth": "1008GB/s"}]


def request(path: str, body: dict) -> AdmissionRequest:
    return AdmissionRequest("POST", path, {}, json.dumps(body).encode(), "127.0.0.1")


async def timed(gate: Gate, req: AdmissionRequest, rounds: int, release: bool) -> list[float]:
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        decision = await gate.admit(req)
        out.append((time.perf_counter() - t0) * 1e6)
        cb = getattr(decision, "on_response", None)
        if release and cb is not None:
            cb(500)  # release the reservation without a closed-loop check
    return out


def show(name: str, samples: list[float]) -> None:
    samples = sorted(samples)
    p95 = samples[int(len(samples) * 0.95) - 1]
    print(f"{name:<34} p50 {statistics.median(samples):8.0f} us   p95 {p95:8.0f} us")


async def main(rounds: int) -> None:
    configure_logging("json", "error")
    emu = demo_emulator()
    running = await serve(emu.app())
    settings = load_settings(None, upstream=running.url, gpu="static", static_gpus=STATIC, audit_file=None)
    async with aiohttp.ClientSession() as session:
        gate = Gate(settings, session)
        await gate.start()
        # make llama3.1:8b resident with vramgate's options so later requests are sticky
        async with session.post(f"{running.url}/api/generate", json={"model": "llama3.1:8b", "options": {"num_ctx": 8192, "num_gpu": 33}}) as r:
            await r.read()
        gate.residency.record_load("llama3.1:8b", VramgateLoad(8192, 33, ((0, 6 << 30),), 5 << 30))
        gen = "/api/generate"
        show("sticky (resident model)", await timed(gate, request(gen, {"model": "llama3.1:8b", "prompt": "x"}), rounds, True))
        show("fresh load decision", await timed(gate, request(gen, {"model": "llama3.1:8b", "prompt": "x", "options": {"num_ctx": 16384}}), rounds, True))
        show("context rewrite (search)", await timed(gate, request(gen, {"model": "llama3.1:8b", "prompt": "x", "options": {"num_ctx": 131072}}), rounds, True))
        show("refusal 507 (two searches)", await timed(gate, request(gen, {"model": "llama3.1:70b", "prompt": "x"}), rounds, True))
        show("unload (not planned)", await timed(gate, request(gen, {"model": "llama3.1:8b", "keep_alive": 0}), rounds, True))
        await gate.close()
    await running.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=300)
    asyncio.run(main(parser.parse_args().rounds))
