"""What vramgate adds to a small request, side by side with direct access and with nginx.

Starts, all on 127.0.0.1: a small fast backend answering ``GET /api/version`` like Ollama, vramgate
in front of it (``python -m proxy serve``, JSON access log on, as deployed), and nginx as a
streaming reverse proxy (``proxy_buffering off``, HTTP/1.1 keep-alive upstream). Then ``wrk``
measures, in one run: p50 latency at 1 connection and requests/s at 32 connections, for each.

Needs ``wrk`` and ``nginx`` on PATH (``apt-get install -y wrk nginx``); installs nothing itself.
Usage: ``uv run python benchmarks/passthrough.py [--seconds 5] [--backend aiohttp|nginx]``.
Prints a table, the latency vramgate adds over direct at p50 (target: <= 150 us) and its request
rate relative to nginx at 32 connections (reported, no target).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Processes, free_port, missing_tools, wait_ready

BACKEND = textwrap.dedent("""
    import asyncio, sys
    from aiohttp import web
    BODY = b'{"version":"0.33.0"}'
    async def handler(request):
        return web.Response(body=BODY, headers={"Content-Type": "application/json; charset=utf-8"})
    async def main(port):
        try:
            import uvloop
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        server = web.Server(handler, access_log=None)
        runner = web.ServerRunner(server)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()
    asyncio.run(main(int(sys.argv[1])))
""")

NGINX_STATIC = """
    server {{
        listen 127.0.0.1:{port};
        access_log off;
        location = /api/version {{
            default_type "application/json; charset=utf-8";
            return 200 '{{"version":"0.33.0"}}';
        }}
    }}
"""


def wrk(url: str, connections: int, seconds: int) -> tuple[float, float]:
    """(p50 latency in microseconds, requests per second)."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True, timeout=seconds + 30,
    ).stdout
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not p50 or not rps:
        raise SystemExit(f"cannot read wrk output:\n{out}")
    scale = {"us": 1.0, "ms": 1000.0, "s": 1e6}[p50.group(2)]
    return float(p50.group(1)) * scale, float(rps.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="duration of each wrk run")
    parser.add_argument("--backend", choices=["aiohttp", "nginx"], default="aiohttp",
                        help="the fake Ollama: a minimal aiohttp server, or nginx serving a fixed answer")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole comparison (best round kept)")
    args = parser.parse_args()
    missing = missing_tools("wrk", "nginx")
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install -y wrk nginx)", file=sys.stderr)
        return 2

    with Processes() as procs:
        backend_port, nginx_port, proxy_port = free_port(), free_port(), free_port()
        static = ""
        if args.backend == "aiohttp":
            procs.python("backend", BACKEND, str(backend_port))
        else:
            static = NGINX_STATIC.format(port=backend_port)
        procs.nginx(backend_port, nginx_port, extra=static)
        procs.vramgate(backend_port, proxy_port)
        targets = {
            "direct": f"http://127.0.0.1:{backend_port}/api/version",
            "nginx": f"http://127.0.0.1:{nginx_port}/api/version",
            "vramgate": f"http://127.0.0.1:{proxy_port}/api/version",
        }
        for url in targets.values():
            wait_ready(url, procs=procs)
        for url in targets.values():
            wrk(url, 8, 1)  # warm up pools and caches

        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for name, url in targets.items():
                p50, _ = wrk(url, 1, args.seconds)
                _, rps = wrk(url, 32, args.seconds)
                old = best.get(name)
                best[name] = (min(p50, old[0]) if old else p50, max(rps, old[1]) if old else rps)

        print(f"backend: {args.backend}; wrk -t1, {args.seconds}s per run, best of {args.rounds} round(s); "
              f"{os.cpu_count()} CPUs shared by wrk, backend, nginx and vramgate")
        print(f"{'target':<10} {'p50 @1 conn (us)':>18} {'req/s @32 conns':>17}")
        for name, (p50, rps) in best.items():
            print(f"{name:<10} {p50:>18.1f} {rps:>17.0f}")
        added_vg = best["vramgate"][0] - best["direct"][0]
        added_nginx = best["nginx"][0] - best["direct"][0]
        ratio = best["vramgate"][1] / best["nginx"][1]
        verdict = "met" if added_vg <= 150 else "not met"
        print(f"added p50 over direct: vramgate {added_vg:.1f} us (target <= 150: {verdict}), "
              f"nginx {added_nginx:.1f} us")
        print(f"vramgate / nginx request rate at 32 connections: {ratio:.2f}x")
        return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; all processes stopped", file=sys.stderr)
        sys.exit(130)
