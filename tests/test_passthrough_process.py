"""vramgate as a process (``python -m proxy``): start line, access log, SIGTERM drain, flat memory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.emulator import Emulator, Fault

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ProxyProcess:
    proc: asyncio.subprocess.Process
    url: str
    lines: list[dict[str, Any]] = field(default_factory=list)

    async def read_rest(self) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        raw = await self.proc.stdout.read()
        self.lines += [json.loads(line) for line in raw.splitlines() if line.strip()]
        return self.lines

    def memory_kib(self, field_name: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field_name} in /proc status")


async def start_process(upstream: str, **env: str) -> ProxyProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMGATE_", "OLLAMA_"))}
    # no GPU here: let the fit gate (when installed) allow loads; these tests are about the relay
    clean.update({"VRAMGATE_LOG_FORMAT": "json", "VRAMGATE_SHUTDOWN_GRACE": "5", "VRAMGATE_GPU": "none",
                  "VRAMGATE_ON_NO_GPU": "allow", **env})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--upstream", upstream, "--listen", "127.0.0.1:0",
        cwd=REPO, env=clean, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    before: list[dict[str, Any]] = []
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
            assert line, f"vramgate exited before starting: {before}"
            event = json.loads(line)
            if event["event"] == "vramgate started":
                return ProxyProcess(proc, "http://" + event["listen"], [*before, event])
            before.append(event)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise


@pytest.fixture
async def process(emulator_url: str) -> AsyncIterator[ProxyProcess]:
    running = await start_process(emulator_url)
    yield running
    if running.proc.returncode is None:
        running.proc.kill()
        await running.proc.wait()


async def test_start_line_names_listen_and_upstream(process: ProxyProcess, emulator_url: str) -> None:
    started = process.lines[-1]
    assert started["upstream"] == emulator_url and started["listen"].startswith("127.0.0.1:")
    assert started["level"] == "info" and "timestamp" in started


async def test_sigterm_drains_streams_in_flight_then_exits(emulator: Emulator, process: ProxyProcess) -> None:
    # /api/push: a streamed route no gate inspects, so this tests the relay alone
    emulator.inject(Fault("/api/push", "slow", delay=0.15))
    secret = "my-secret-model-name"
    emulator.add_model(secret)
    async with aiohttp.ClientSession() as session:
        async with session.post(process.url + "/api/push", json={"model": secret}) as resp:
            first = await resp.content.readline()
            process.proc.send_signal(signal.SIGTERM)
            rest = await resp.read()
    lines = (first + rest).splitlines()
    assert len(lines) == 7 and json.loads(lines[-1]) == {"status": "success"}  # finished despite SIGTERM
    assert await asyncio.wait_for(process.proc.wait(), timeout=10) == 0
    events = await process.read_rest()
    access = [e for e in events if e["event"] == "access"]
    assert len(access) == 1
    entry = access[0]
    assert entry["method"] == "POST" and entry["path"] == "/api/push" and entry["status"] == 200
    assert entry["bytes"] == len(first + rest) and entry["client"] == "127.0.0.1"
    assert entry["duration_ms"] >= entry["upstream_ttfb_ms"] > 0
    names = [e["event"] for e in events]
    # the stream was still running when the stop began, and ended before the process did
    assert names.index("vramgate stopping") < names.index("access") < names.index("vramgate stopped")
    assert names[-1] == "vramgate stopped"
    assert secret not in json.dumps(events) and "pushing" not in json.dumps(events)  # no bodies logged


async def test_two_gib_blob_upload_streams_in_flat_memory(emulator: Emulator, process: ProxyProcess) -> None:
    emulator.verify_blobs = False  # hashing 2 GiB would only slow the test down
    chunk = b"\x5a" * (1024 * 1024)
    total_chunks = 2048  # 2 GiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total_chunks):
            yield chunk

    digest = "sha256:" + "ab" * 32
    async with aiohttp.ClientSession() as session:
        async with session.get(process.url + "/api/version") as resp:  # warm up the upstream pool
            assert resp.status == 200
        baseline = process.memory_kib("VmRSS")
        async with session.post(process.url + f"/api/blobs/{digest}", data=body()) as resp:
            assert resp.status == 201
    peak = process.memory_kib("VmHWM")
    assert emulator.blobs[digest] == total_chunks * len(chunk)
    growth_mib = (peak - baseline) / 1024
    print(f"proxy RSS {baseline / 1024:.0f} MiB before, peak {peak / 1024:.0f} MiB during a 2 GiB upload")
    assert growth_mib < 64, f"proxy RSS grew by {growth_mib:.0f} MiB during a 2 GiB upload"


async def test_a_busy_listen_address_is_one_error_line_and_exit_1(emulator_url: str) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMGATE_", "OLLAMA_"))}
        clean.update(VRAMGATE_LOG_FORMAT="json", VRAMGATE_GPU="none", VRAMGATE_ON_NO_GPU="allow")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "serve", "--upstream", emulator_url, "--listen", f"127.0.0.1:{port}",
            cwd=REPO, env=clean, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    assert out == b""  # the address is bound before anything else starts: nothing else is said
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vramgate: cannot listen on 127.0.0.1:{port}: ")
    assert "address already in use" in lines[0].lower()


async def test_sigterm_drain_is_bounded_by_shutdown_grace(emulator: Emulator, emulator_url: str) -> None:
    running = await start_process(emulator_url, VRAMGATE_SHUTDOWN_GRACE="0.5")
    try:
        emulator.inject(Fault("/api/push", "hang", after=1))  # a stream that would never end
        async with aiohttp.ClientSession() as session:
            async with session.post(running.url + "/api/push", json={"model": "llama3:8b"}) as resp:
                await resp.content.readline()
                stopped_at = asyncio.get_running_loop().time()
                running.proc.send_signal(signal.SIGTERM)
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # cut off when the grace period ends
        assert await asyncio.wait_for(running.proc.wait(), timeout=10) == 0
        assert asyncio.get_running_loop().time() - stopped_at < 5
        assert await emulator.wait_for(lambda: bool(emulator.disconnects), timeout=1.0)  # upstream closed too
    finally:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def test_a_gate_that_cannot_start_is_one_line_and_exit_1(emulator_url: str, tmp_path: Path) -> None:
    """Never a silent pass-through: the gate is built at start, or vramgate says why and exits."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("VRAMGATE_", "OLLAMA_"))}
    clean.update(VRAMGATE_LOG_FORMAT="json", VRAMGATE_GPU="none",
                 VRAMGATE_AUDIT_FILE=str(tmp_path / "no-such-dir" / "audit.jsonl"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "serve", "--upstream", emulator_url, "--listen", "127.0.0.1:0",
        cwd=REPO, env=clean, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 1
    lines = err.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vramgate: cannot start the fit gate: cannot write the audit file")
    assert b"vramgate started" not in out


async def test_an_endless_header_value_is_431_in_bounded_memory(process: ProxyProcess) -> None:
    """The old front end buffered one header value without bound (188 MiB took it to 238 MiB)."""
    host, port = process.url.removeprefix("http://").split(":")
    before = process.memory_kib("VmRSS")
    reader, writer = await asyncio.open_connection(host, int(port))
    sent = 0
    try:
        writer.write(b"GET /api/tags HTTP/1.1\r\nHost: localhost\r\nX-Endless: ")
        chunk = b"a" * 65536
        while sent < 64 * 1024**2:  # 64 MiB of one header value, never ended
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except ConnectionError:
        pass  # vramgate answered and closed: the rest is not wanted
    finally:
        try:
            answer = await asyncio.wait_for(reader.read(4096), timeout=5)
        except ConnectionError:
            answer = b""
        writer.close()
    after = process.memory_kib("VmHWM")
    assert answer.split(b"\r\n", 1)[0].endswith(b" 431 Request Header Fields Too Large"), answer[:60]  # read before the close
    assert after - before < 32 * 1024, f"RSS grew by {(after - before) // 1024} MiB"
    async with aiohttp.ClientSession() as session, session.get(process.url + "/api/version",
                                                               headers={"Host": "localhost"}) as resp:
        assert resp.status == 200  # still serving
