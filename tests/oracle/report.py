"""Print the estimator's accuracy against llama.cpp: worst relative error per component and model.

    uv run python -m tests.oracle.report            # every architecture, small and real-scale
    uv run python -m tests.oracle.report gemma3 -v  # one architecture, with the worst configurations
    uv run python -m tests.oracle.report maincoder  # an architecture the estimator does not model:
                                                    # it must err high, so "!" is expected there

Builds llama.cpp and the models when missing (see tests/oracle/build.py); measurements are cached.
"""

from __future__ import annotations

import argparse
import sys
import time

from .compare import COMPONENTS, TOLERANCES, Row, compare_model, worst
from .models import ARCHITECTURES, SIZES, UNKNOWN_ARCHITECTURES

MiB = 1024 * 1024


def _cell(row: Row | None) -> str:
    if row is None:
        return "-"
    if row.estimated is None:
        return "ERROR"
    mark = "" if row.ok else " !"
    if row.measured == 0:
        return f"n/a ({(row.estimated - row.measured) / MiB:+.3f}M){mark}"
    return f"{row.rel_err:+.2%} ({(row.estimated - row.measured) / MiB:+.1f}M){mark}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", nargs="*", help=f"architectures (default: all of {', '.join(ARCHITECTURES)})")
    parser.add_argument("--size", choices=SIZES, action="append", help="small and/or real (default both)")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every configuration outside tolerance")
    args = parser.parse_args(argv)
    archs = args.arch or list(ARCHITECTURES)
    sizes = args.size or list(SIZES)
    unknown = [a for a in archs if a not in ARCHITECTURES and a not in UNKNOWN_ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}")

    width = 22
    header = f"{'model':24s} {'cases':>5s}  " + "  ".join(f"{c:>{width}s}" for c in COMPONENTS) + "  failing"
    print("worst relative error (estimate - llama.cpp) per component; ! = outside tolerance")
    print("tolerances: " + ", ".join(f"{c} {r:.1%} or {a / MiB:.3g} MiB" for c, (r, a) in TOLERANCES.items()))
    print(header)
    print("-" * len(header))
    all_failing: list[Row] = []
    started = time.monotonic()
    for arch in archs:
        for size in sizes:
            rows = compare_model(arch, size)
            w = worst(rows)
            failing = [r for r in rows if not r.ok]
            all_failing.extend(failing)
            cells = "  ".join(f"{_cell(w.get(c)):>{width}s}" for c in COMPONENTS)
            print(f"{arch + '-' + size:24s} {len(rows) // len(COMPONENTS):5d}  {cells}  {len(failing)}", flush=True)
    print(f"\n{len(all_failing)} comparisons outside tolerance; {time.monotonic() - started:.1f} s")
    if args.verbose and all_failing:
        for row in sorted(all_failing, key=lambda r: -abs(r.rel_err)):
            print("  " + row.describe())
    return 1 if all_failing else 0


if __name__ == "__main__":
    sys.exit(main())
