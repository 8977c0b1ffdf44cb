"""How long a footprint plan takes for a 1000-tensor model: cold (first estimate of a freshly read
description) and cached (the same model and run again), plus the inverse search.

    uv run python benchmarks/plan_speed.py

Targets (issue 3): under 5 ms cold, microseconds cached. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from proxy.footprint import RunConfig, description_from_show, estimate, max_num_ctx
from proxy.footprint.compute import _expert_ff, _ffn_kind
from proxy.footprint.estimate import _weights
from proxy.footprint.roofline import active_layer_bytes

SHOW = Path(__file__).resolve().parent.parent / "tests" / "data" / "show-gemma3-12b-q4_K_M.json"


def clear_caches() -> None:
    for f in (estimate, _weights, _expert_ff, _ffn_kind, active_layer_bytes):
        f.cache_clear()


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    show = json.loads(SHOW.read_text())
    model = description_from_show(show, name="gemma3:12b")
    run = RunConfig(num_ctx=32768)
    print(f"model: {model.name} ({model.architecture}), {len(model.tensors)} tensors")

    parse = timed(lambda: description_from_show(show, name="gemma3:12b"), 20)
    print(f"describe from /api/show JSON     median {statistics.median(parse) * 1e3:8.3f} ms")

    def cold() -> None:
        clear_caches()
        estimate(model, run)

    c = timed(cold, 50)
    print(f"estimate, cold (no caches)       median {statistics.median(c) * 1e3:8.3f} ms   max {max(c) * 1e3:.3f} ms")

    estimate(model, run)
    w = timed(lambda: estimate(model, run), 10000)
    print(f"estimate, cached                 median {statistics.median(w) * 1e6:8.3f} us")

    runs = [RunConfig(num_ctx=1024 * k) for k in range(1, 101)]
    estimate(model, runs[0])
    t0 = time.perf_counter()
    for r in runs:
        estimate(model, r)
    print(f"estimate, new run, model cached  mean   {(time.perf_counter() - t0) / len(runs) * 1e6:8.3f} us")

    def inverse() -> None:
        clear_caches()
        max_num_ctx(model, RunConfig(num_ctx=131072), 12 * 1024**3)

    i = timed(inverse, 20)
    print(f"max_num_ctx, cold                median {statistics.median(i) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
