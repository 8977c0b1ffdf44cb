"""What vramgate adds to streamed answers, side by side with direct access and with nginx.

Starts, all on 127.0.0.1: a small NDJSON streaming server emulating Ollama's streamed
``/api/generate`` answer (aiohttp, uvloop if installed), vramgate in front of it (``python -m proxy
serve``, JSON access log on, as deployed), and nginx as a streaming reverse proxy (1 worker,
``proxy_buffering off``, HTTP/1.1 keep-alive upstream, as in ``passthrough.py``). Then, for each
target in turn (direct, nginx, vramgate), a client opens ``--streams`` concurrent streams, their starts
staggered over ``--stagger`` seconds. Each stream is ``--tokens`` lines, one every ``--interval``
seconds (default 50 tokens/s), then a final ``"done":true`` line, like
``{"model":"bench","created_at":...,"response":"tok","done":false,"t_ns":...}``.

Each line carries the upstream's write time (``time.monotonic_ns()``: CLOCK_MONOTONIC, one clock for
all processes on a Linux host), so per-chunk latency = client read time - upstream write time. The
default route is ``GET /api/stream-bench``, a path vramgate's fit gate does not inspect (vramgate
forwards every path unchanged): this measures pure relaying. ``--route generate`` streams through
the gated ``POST /api/generate`` instead; the emulator answers the gate's ``/api/show`` with 404, so
each request costs the gate one ``/api/show`` round trip and is then passed ("unknown model").

Client: asyncio + aiohttp (+ uvloop) in ``--clients`` processes (default 1; its CPU use is printed,
use 2 if it nears a full core). For vramgate it also samples, every 100 ms, RSS (VmRSS; VmHWM at
the end) and open descriptors; descriptors are compared with a baseline taken after a warm-up
round at full concurrency (so pools of kept-alive upstream connections are already full).

Needs ``nginx`` on PATH (``apt-get install -y nginx``); installs nothing itself.
Usage: ``uv run python benchmarks/streaming.py [--streams 200] [--tokens 100] [--interval 0.02]
[--rounds 1] [--clients 1] [--route bench|generate]``. Takes about 20 s with the defaults.
Prints p50/p99/max per-chunk latency per target, chunks, errors, CPU per process, and the targets:
vramgate adds <= 2 ms at p99 over direct, stays within 1.5x of nginx's p99, RSS peak < 150 MB,
descriptors back to baseline after the streams.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    Processes,
    children,
    cpu_seconds,
    free_port,
    host_busy_seconds,
    missing_tools,
    open_fds,
    status_kib,
    wait_ready,
)

BENCH_PATH = "/api/stream-bench"
TARGET_ADDED_P99_MS = 2.0
TARGET_NGINX_RATIO = 1.5
TARGET_RSS_MB = 150.0


def _install_uvloop() -> str:
    import asyncio

    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def _die_with_parent() -> None:
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# --- the emulated Ollama (child process) --------------------------------------------------------------
def upstream_main(port: int) -> None:
    import asyncio

    from aiohttp import web

    _install_uvloop()
    version = b'{"version":"0.33.0"}'
    json_type = {"Content-Type": "application/json; charset=utf-8"}

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            await request.read()
        tokens = int(request.query.get("tokens", "100"))
        interval = float(request.query.get("interval", "0.02"))
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime()).encode()
        head = b'{"model":"bench","created_at":"' + created + b'","response":"tok","done":false,"t_ns":'
        last = (b'{"model":"bench","created_at":"' + created + b'","response":"","done":true,'
                b'"done_reason":"stop","eval_count":' + str(tokens).encode() + b',"t_ns":')
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(1, tokens + 1):
            delay = t0 + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await resp.write(head + str(time.monotonic_ns()).encode() + b"}\n")
        await resp.write(last + str(time.monotonic_ns()).encode() + b"}\n")
        await resp.write_eof()
        return resp

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path == BENCH_PATH or path == "/api/generate":
            return await stream(request)
        if request.method == "POST":
            await request.read()
        if path == "/api/version":
            return web.Response(body=version, headers=json_type)
        if path in ("/api/tags", "/api/ps"):
            return web.Response(body=b'{"models":[]}', headers=json_type)
        if path == "/api/show":
            return web.Response(status=404, body=b'{"error":"model \'bench\' not found"}', headers=json_type)
        return web.Response(status=404, body=b"404 page not found")

    async def main() -> None:
        server = web.Server(handler, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        await asyncio.Event().wait()

    asyncio.run(main())


# --- the client (child process) -----------------------------------------------------------------------
def client_main(spec_json: str) -> None:
    """Waits for a start time on stdin, runs its share of the streams, prints one JSON result line."""
    import asyncio
    import resource

    import aiohttp

    _die_with_parent()
    spec = json.loads(spec_json)
    loop_name = _install_uvloop()
    print("ready", flush=True)
    start_ns = int(sys.stdin.readline())
    expect_lines = spec["tokens"] + 1
    latencies: list[int] = []
    errors: dict[str, int] = {}
    streams_ok = 0

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def one(session: aiohttp.ClientSession, offset_s: float) -> None:
        nonlocal streams_ok
        delay = (start_ns - time.monotonic_ns()) / 1e9 + offset_s
        if delay > 0:
            await asyncio.sleep(delay)
        lines, done = 0, False
        try:
            async with session.request(spec["method"], spec["url"], data=spec["body"]) as resp:
                if resp.status != 200:
                    error(f"HTTP {resp.status}")
                    await resp.read()
                    return
                async for line in resp.content:
                    now = time.monotonic_ns()
                    at = line.rfind(b'"t_ns":')
                    if at < 0:
                        error("line without t_ns")
                        continue
                    latencies.append(now - int(line[at + 7:line.index(b"}", at)]))
                    lines += 1
                    if b'"done":true' in line:
                        done = True
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            error(type(exc).__name__)
            return
        if not done:
            error("no done line")
        elif lines != expect_lines:
            error("wrong line count")
        else:
            streams_ok += 1

    async def main() -> tuple[float, float]:
        timeout = aiohttp.ClientTimeout(total=spec["timeout"])
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            delay = (start_ns - time.monotonic_ns()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
            await asyncio.gather(*(one(session, offset) for offset in spec["offsets"]))
            r1, w1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
        return r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, w1 - w0

    cpu, wall = asyncio.run(main())
    # to a file, not stdout: the event loop may leave stdout non-blocking, and a big write then gets cut
    Path(spec["out"]).write_text(json.dumps({"lat": latencies, "errors": errors, "ok": streams_ok, "cpu": cpu,
                                             "wall": wall, "loop": loop_name}))


# --- the driver ---------------------------------------------------------------------------------------
class Sampler(threading.Thread):
    """Polls one process's VmRSS and open descriptors every ``period`` seconds until stopped."""

    def __init__(self, pid: int, period: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.rss_kib, self.fds = 0, 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.rss_kib = max(self.rss_kib, status_kib(self.pid, "VmRSS"))
            self.fds = max(self.fds, open_fds(self.pid))
            if self._stop_event.wait(self.period):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


class Target:
    def __init__(self, name: str, url: str, pid: int | None) -> None:
        self.name, self.url, self.pid = name, url, pid  # pid: the proxy's process (nginx: its worker)
        self.latencies: list[int] = []
        self.errors: dict[str, int] = {}
        self.ok = 0
        self.client_cpu = self.upstream_cpu = self.proxy_cpu = self.host_cpu = self.wall = 0.0
        self.rounds: list[tuple[float, float]] = []  # (p99 ns, others' CPU as a fraction of one core)
        self.client_cpu_max = 0.0  # the busiest client process, fraction of one core


def run_streams(procs: Processes, target: Target, args: argparse.Namespace, tokens: int, stagger: float,
                upstream_pid: int, record: bool, sampler_pid: int | None = None) -> Sampler | None:
    """One round against one target: ``args.streams`` streams split over ``args.clients`` processes."""
    offsets = [i * stagger / args.streams for i in range(args.streams)]
    url = f"{target.url}?tokens={tokens}&interval={args.interval}"
    if args.route == "generate":
        method, body = "POST", json.dumps({"model": "bench", "prompt": "hi", "stream": True})
    else:
        method, body = "GET", None
    expected = stagger + (tokens + 1) * args.interval
    workers = []
    for k in range(args.clients):
        spec = {"url": url, "method": method, "body": body, "offsets": offsets[k::args.clients],
                "tokens": tokens, "timeout": expected + 30, "out": str(procs.tmp / f"client{k}.json")}
        workers.append(procs.start(f"client {k}", [sys.executable, __file__, "_client", json.dumps(spec)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for w in workers:
        if w.stdout.readline().strip() != "ready":
            raise SystemExit("a client process failed to start")
    start_ns = time.monotonic_ns() + 50_000_000
    cpu0 = (cpu_seconds(upstream_pid), cpu_seconds(target.pid) if target.pid else 0.0, host_busy_seconds())
    sampler = Sampler(sampler_pid) if sampler_pid else None
    for w in workers:
        w.stdin.write(f"{start_ns}\n")
        w.stdin.flush()
    if sampler:
        sampler.start()
    results = []
    try:
        for k, w in enumerate(workers):
            w.communicate(timeout=expected + 60)
            out = procs.tmp / f"client{k}.json"
            if w.returncode != 0 or not out.exists():
                raise SystemExit(f"a client process failed (status {w.returncode})")
            results.append(json.loads(out.read_text()))
            out.unlink()
    finally:
        if sampler:
            sampler.stop()
        for w in workers:
            procs.discard(w, timeout=2)
    wall = (time.monotonic_ns() - start_ns) / 1e9
    cpu1 = (cpu_seconds(upstream_pid), cpu_seconds(target.pid) if target.pid else 0.0, host_busy_seconds())
    if record:
        for r in results:
            target.latencies.extend(r["lat"])
            for kind, n in r["errors"].items():
                target.errors[kind] = target.errors.get(kind, 0) + n
            target.ok += r["ok"]
            target.client_cpu += r["cpu"]
            target.client_cpu_max = max(target.client_cpu_max, r["cpu"] / max(r["wall"], 1e-9))
        target.upstream_cpu += cpu1[0] - cpu0[0]
        target.proxy_cpu += cpu1[1] - cpu0[1]
        target.host_cpu += cpu1[2] - cpu0[2]
        ours = sum(r["cpu"] for r in results) + cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1]
        target.rounds.append((percentile(sorted(lat for r in results for lat in r["lat"]), 0.99),
                              max(0.0, cpu1[2] - cpu0[2] - ours) / wall))
        target.wall += wall
    return sampler


def settle_fds(pid: int, baseline: int, timeout: float = 3.0) -> tuple[int, float]:
    """Polls the descriptor count until it is back to ``baseline`` or ``timeout`` passes."""
    t0 = time.monotonic()
    while True:
        fds = open_fds(pid)
        waited = time.monotonic() - t0
        if fds <= baseline or waited >= timeout:
            return fds, waited
        time.sleep(0.05)


def fmt_ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="concurrent streams per target")
    parser.add_argument("--tokens", type=int, default=100, help="token lines per stream (then a done line)")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between token lines")
    parser.add_argument("--stagger", type=float, default=1.0, help="stream starts spread over this many seconds")
    parser.add_argument("--rounds", type=int, default=1, help="rounds over all targets (chunks pooled)")
    parser.add_argument("--clients", type=int, default=1, help="client processes sharing the streams")
    parser.add_argument("--route", choices=["bench", "generate"], default="bench",
                        help=f"bench: GET {BENCH_PATH} (not gated); generate: POST /api/generate (gated)")
    args = parser.parse_args()
    if min(args.streams, args.tokens, args.rounds, args.clients) < 1 or args.interval <= 0:
        parser.error("--streams, --tokens, --rounds, --clients must be >= 1 and --interval > 0")
    missing = missing_tools("nginx")
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y nginx)", file=sys.stderr)
        return 2

    with Processes(prefix="vramgate-stream-bench-") as procs:
        upstream_port, nginx_port, proxy_port = free_port(), free_port(), free_port()
        upstream = procs.start("upstream", [sys.executable, __file__, "_upstream", str(upstream_port)])
        nginx = procs.nginx(upstream_port, nginx_port)
        vramgate = procs.vramgate(upstream_port, proxy_port)
        path = BENCH_PATH if args.route == "bench" else "/api/generate"
        bases = {"direct": upstream_port, "nginx": nginx_port, "vramgate": proxy_port}
        for port in bases.values():
            wait_ready(f"http://127.0.0.1:{port}/api/version", procs=procs)
        nginx_workers = children(nginx.pid)
        targets = [
            Target("direct", f"http://127.0.0.1:{upstream_port}{path}", None),
            Target("nginx", f"http://127.0.0.1:{nginx_port}{path}", nginx_workers[0] if nginx_workers else nginx.pid),
            Target("vramgate", f"http://127.0.0.1:{proxy_port}{path}", vramgate.pid),
        ]
        vg = targets[2]
        fds_fresh, rss_fresh = open_fds(vramgate.pid), status_kib(vramgate.pid, "VmRSS")

        # warm-up with all streams open at once (each outlasts the stagger): pools, caches, code paths
        warm_stagger = min(args.stagger, 0.2)
        warm_tokens = max(3, math.ceil(2 * warm_stagger / args.interval))
        for t in targets:
            run_streams(procs, t, args, tokens=warm_tokens, stagger=warm_stagger, upstream_pid=upstream.pid,
                        record=False)
        time.sleep(0.3)
        fds_base, rss_base = open_fds(vramgate.pid), status_kib(vramgate.pid, "VmRSS")

        rss_peak = fds_peak = 0
        fds_after: list[tuple[int, int, float]] = []  # (right after the streams, settled, seconds to settle)
        for _ in range(args.rounds):
            for t in targets:
                sampler = run_streams(procs, t, args, tokens=args.tokens, stagger=args.stagger,
                                      upstream_pid=upstream.pid, record=True,
                                      sampler_pid=vramgate.pid if t is vg else None)
                if sampler is not None:
                    rss_peak, fds_peak = max(rss_peak, sampler.rss_kib), max(fds_peak, sampler.fds)
                    end = open_fds(vramgate.pid)
                    fds_after.append((end, *settle_fds(vramgate.pid, fds_base)))
        hwm = status_kib(vramgate.pid, "VmHWM")
        procs.check_alive()

        expected_chunks = args.streams * (args.tokens + 1) * args.rounds
        route = f"GET {BENCH_PATH} (not gated)" if args.route == "bench" else "POST /api/generate (gated)"
        print(f"route {route}; {args.streams} streams x ({args.tokens} tokens + done line) every "
              f"{args.interval * 1000:g} ms, starts over {args.stagger:g} s; {args.rounds} round(s), "
              f"{args.clients} client process(es); {os.cpu_count()} CPUs shared by client, upstream and proxy")
        print("per-chunk latency = client read - upstream write (CLOCK_MONOTONIC); CPU as % of one core, "
              "over the round's wall time")
        print(f"{'target':<9} {'chunks':>8} {'streams ok':>10} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7}  {'client':>6} {'(max)':>5} {'upstream':>8} {'proxy':>6} {'others':>6}")
        p99: dict[str, float] = {}
        # CPU the whole host spent during the rounds beyond client, upstream and proxy (ours: nginx master,
        # this driver; anything else running on the machine makes the latencies noisy)
        others = {t.name: t.host_cpu - t.client_cpu - t.upstream_cpu - t.proxy_cpu for t in targets}
        for t in targets:
            lat = sorted(t.latencies)
            p99[t.name] = percentile(lat, 0.99)
            wall = t.wall

            def pct(seconds: float, wall: float = wall) -> str:
                return f"{100 * seconds / wall:.0f}%" if wall else "-"

            print(f"{t.name:<9} {len(lat):>8} {t.ok:>10} {sum(t.errors.values()):>6} "
                  f"{fmt_ms(percentile(lat, 0.5)):>7} {fmt_ms(p99[t.name]):>7} {fmt_ms(lat[-1] if lat else 0):>7}  "
                  f"{pct(t.client_cpu):>6} {100 * t.client_cpu_max:>4.0f}% {pct(t.upstream_cpu):>8} "
                  f"{pct(t.proxy_cpu) if t.pid else '-':>6} {pct(max(0.0, others[t.name])):>6}")
        print(f"expected chunks per target: {expected_chunks}")
        if args.rounds > 1:
            print("p99 ms by round (others' CPU): " + "; ".join(
                f"{t.name} " + " ".join(f"{fmt_ms(v)} ({100 * o:.0f}%)" for v, o in t.rounds) for t in targets))
        busiest = max(others.values()) / max(min(t.wall for t in targets), 1e-9)
        if busiest > 0.15:
            print(f"warning: other processes used up to {100 * busiest:.0f}% of a core during a round "
                  "(see 'others'): the latencies are noisy, rerun on a quiet machine")
        for t in targets:
            if t.errors:
                print(f"errors {t.name}: " + ", ".join(f"{k}: {n}" for k, n in sorted(t.errors.items())))
        print(f"vramgate RSS: {rss_fresh / 1024:.1f} MB fresh, {rss_base / 1024:.1f} MB after warm-up, "
              f"peak {rss_peak / 1024:.1f} MB during the streams (VmRSS every 100 ms), VmHWM {hwm / 1024:.1f} MB")
        after = ", ".join(f"{end}" + (f" -> {settled} after {waited:.1f} s" if settled != end else "")
                          for end, settled, waited in fds_after)
        print(f"vramgate open descriptors: {fds_fresh} fresh, {fds_base} after warm-up (idle upstream "
              f"connections kept alive), peak {fds_peak} during the streams, {after} when they ended")

        added = (p99["vramgate"] - p99["direct"]) / 1e6
        ratio = p99["vramgate"] / p99["nginx"] if p99["nginx"] else float("inf")
        peak_mb = max(hwm, rss_peak) / 1024
        # The pool of kept-alive upstream connections may still grow in the first measured round
        # (the warm-up's streams overlap less): the baseline is the larger of the two, and a leak is a
        # count that keeps growing round after round.
        fds_base = max([fds_base, *(settled for _, settled, _ in fds_after[:1])])
        fds_ok = all(settled <= fds_base for _, settled, _ in fds_after)
        complete = all(len(t.latencies) == expected_chunks and not t.errors for t in targets)

        def verdict(ok: bool) -> str:
            return "met" if ok else "NOT MET"

        print("targets:")
        print(f"  vramgate p99 - direct p99 = {added:.2f} ms (<= {TARGET_ADDED_P99_MS:g} ms): "
              f"{verdict(added <= TARGET_ADDED_P99_MS)}")
        print(f"  vramgate p99 / nginx p99 = {ratio:.2f}x (<= {TARGET_NGINX_RATIO:g}x): "
              f"{verdict(ratio <= TARGET_NGINX_RATIO)}")
        print(f"  vramgate RSS peak {peak_mb:.1f} MB (< {TARGET_RSS_MB:g} MB): {verdict(peak_mb < TARGET_RSS_MB)}")
        print(f"  vramgate descriptors back to baseline ({fds_base}: after warm-up or the first round, whichever "
              f"is larger) after the streams: {verdict(fds_ok)}")
        if not complete:
            print("  (some streams failed or lost chunks: see the errors above)")
        return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_upstream":
        upstream_main(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "_client":
        client_main(sys.argv[2])
    else:
        try:
            sys.exit(main())
        except KeyboardInterrupt:
            print("interrupted; all processes stopped", file=sys.stderr)
            sys.exit(130)
