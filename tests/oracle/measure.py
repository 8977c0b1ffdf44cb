"""Ask llama.cpp what a model would allocate, launched the way Ollama launches llama-server.

Ollama (>= 0.30) starts `llama-server -c num_ctx*parallel -np parallel -b num_batch -ub num_batch
[-fa on|off] [-ctk T -ctv T]`. The probe (tests/oracle/probe.cpp) parses exactly those arguments
with llama.cpp's own parser, applies llama-server's output limits, loads the model with no_alloc
(nothing allocated, no weight read) and prints llama_get_memory_breakdown() in bytes. Weight
repacking is turned off (-nr) so the CPU build reports the file's tensor bytes.

Results are memoised in-process and on disk (keyed by oracle binaries + model file + arguments).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from .build import Oracle, cache_dir, ensure_oracle

T = TypeVar("T")

MiB = 1024 * 1024

_KV_LINE = re.compile(
    r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), "
    r"K \((\w+)\): +([\d.]+) MiB, V \((\w+)\): +([\d.]+) MiB"
)
_RS_LINE = re.compile(
    r"llama_memory_recurrent: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers, +(\d+) seqs +(\d+) rs_seq\), "
    r"R \((\w+)\): +([\d.]+) MiB, S \((\w+)\): +([\d.]+) MiB"
)
_OUTPUT_LINE = re.compile(r"llama_context: +\S+ +output buffer size = +([\d.]+) MiB")


class OracleError(RuntimeError):
    """llama.cpp refused the model or the configuration (message carries its log tail)."""


@dataclass(frozen=True)
class KvCacheLine:
    """One `llama_kv_cache: size = ...` line (an iSWA model prints one per cache)."""

    mib: float
    cells: int
    layers: int
    seqs: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float


@dataclass(frozen=True)
class RecurrentLine:
    """The `llama_memory_recurrent: size = ...` line of recurrent/hybrid models."""

    mib: float
    cells: int
    layers: int
    seqs: int
    r_mib: float
    s_mib: float


@dataclass(frozen=True)
class Measurement:
    """llama.cpp's allocation for one configuration, bytes summed over all buffer types.

    context_bytes is llama.cpp's "context" category: the memory module (KV cache plus recurrent
    state). The output (logits) buffer is NOT part of it in this llama.cpp (llama_context's
    memory breakdown leaves it out); output_mib is its size as logged, to 0.01 MiB.
    """

    model_bytes: int
    context_bytes: int
    compute_bytes: int
    n_ctx: int
    n_ctx_seq: int
    n_seq_max: int
    n_ubatch: int
    buffers: tuple[dict, ...] = ()
    kv_caches: tuple[KvCacheLine, ...] = ()
    recurrent: tuple[RecurrentLine, ...] = ()
    output_mib: float | None = None  # the output (logits) buffer from the log, 0.01 MiB resolution
    args: tuple[str, ...] = field(default=())

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.context_bytes + self.compute_bytes

    @property
    def kv_bytes_approx(self) -> float:
        """KV cache from the log lines (0.01 MiB resolution); context_bytes is exact."""
        return sum(c.mib for c in self.kv_caches) * MiB

    @property
    def recurrent_bytes_approx(self) -> float:
        return sum(r.mib for r in self.recurrent) * MiB

    @property
    def kv_cells(self) -> tuple[int, ...]:
        return tuple(c.cells for c in self.kv_caches)


def server_args(
    num_ctx: int,
    parallel: int = 1,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attention: bool = False,
    n_batch: int = 512,
    n_ubatch: int | None = None,
    embedding: bool = False,
    swa_full: bool = False,
) -> list[str]:
    """llama-server arguments as Ollama builds them (non-unified KV: -np is explicit)."""
    ub = n_batch if n_ubatch is None else n_ubatch
    args = [
        "-c", str(num_ctx * parallel),
        "-np", str(parallel),
        "-b", str(n_batch),
        "-ub", str(ub),
        "-fa", "on" if flash_attention else "off",
        "-ctk", type_k,
        "-ctv", type_v,
        "-nr",  # no CPU weight repacking: model bytes = tensor bytes
        "-t", "1",
    ]
    if embedding:
        args.append("--embeddings")
    if swa_full:
        args.append("--swa-full")
    return args


_memo: dict[str, Measurement] = {}


def _model_identity(path: Path) -> str:
    st = path.stat()
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


def _parse(stdout: str, log: str, args: list[str]) -> Measurement:
    rows = [json.loads(ln) for ln in stdout.splitlines() if ln.startswith("{")]
    errors = [r["error"] for r in rows if "error" in r]
    if errors:
        raise OracleError(f"{errors[0]}; llama.cpp log tail:\n" + "\n".join(log.splitlines()[-15:]))
    buffers = tuple(r for r in rows if "buft" in r)
    info = next(r for r in rows if "n_ctx" in r)
    kv = tuple(
        KvCacheLine(float(m[1]), int(m[2]), int(m[3]), int(m[4]), m[6], float(m[7]), m[8], float(m[9]))
        for m in _KV_LINE.finditer(log)
    )
    rs = tuple(
        RecurrentLine(float(m[1]), int(m[2]), int(m[3]), int(m[4]), float(m[7]), float(m[9]))
        for m in _RS_LINE.finditer(log)
    )
    out = _OUTPUT_LINE.search(log)
    return Measurement(
        model_bytes=sum(b["model"] for b in buffers),
        context_bytes=sum(b["context"] for b in buffers),
        compute_bytes=sum(b["compute"] for b in buffers),
        n_ctx=info["n_ctx"],
        n_ctx_seq=info["n_ctx_seq"],
        n_seq_max=info["n_seq_max"],
        n_ubatch=info["n_ubatch"],
        buffers=buffers,
        kv_caches=kv,
        recurrent=rs,
        output_mib=float(out[1]) if out else None,
        args=tuple(args),
    )


def _from_json(data: dict) -> Measurement:
    data = dict(data)
    data["buffers"] = tuple(data["buffers"])
    data["kv_caches"] = tuple(KvCacheLine(**c) for c in data["kv_caches"])
    data["recurrent"] = tuple(RecurrentLine(**r) for r in data["recurrent"])
    data["args"] = tuple(data["args"])
    return Measurement(**data)


def run_probe(
    path: Path, args: list[str], oracle: Oracle | None = None, real_alloc: bool = False
) -> tuple[str, str, int]:
    """Run the probe once, uncached: (stdout, log, returncode).

    real_alloc really allocates (and reads the weights through mmap): only for small models, to
    check that the no_alloc numbers are what llama.cpp actually allocates.
    """
    oracle = oracle or ensure_oracle()
    env = dict(os.environ, VRAMGATE_PROBE_ALLOC="1" if real_alloc else "0")
    proc = subprocess.run(
        [str(oracle.probe), "-m", str(path), *args],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    return proc.stdout, proc.stderr, proc.returncode


def measure_args(
    path: Path | str, args: list[str], oracle: Oracle | None = None, real_alloc: bool = False
) -> Measurement:
    """Measure with explicit llama-server arguments (cached)."""
    path = Path(path)
    oracle = oracle or ensure_oracle()
    key = hashlib.sha256(
        json.dumps([oracle.identity, _model_identity(path), args, real_alloc]).encode()
    ).hexdigest()[:32]
    def run() -> Measurement:
        stdout, log, rc = run_probe(path, args, oracle, real_alloc)
        if rc != 0 and '"error"' not in stdout:
            raise OracleError(f"probe exited {rc}; llama.cpp log tail:\n" + "\n".join(log.splitlines()[-15:]))
        return _parse(stdout, log, args)

    return cached_measurement(key, _memo, _from_json, run)


def cached_measurement(key: str, memo: dict[str, T], from_json: Callable[[dict], T], run: Callable[[], T]) -> T:
    """A probe's result: from memory, else from ``measurements/<key>.json`` in the cache, else ``run()``
    (then saved atomically: concurrent sessions never read half a file)."""
    if key in memo:
        return memo[key]
    disk = cache_dir() / "oracle" / "measurements" / f"{key}.json"
    if disk.exists():
        try:
            result = memo[key] = from_json(json.loads(disk.read_text()))
            return result
        except (ValueError, TypeError, KeyError):
            disk.unlink(missing_ok=True)
    result = run()
    disk.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".m-", suffix=".json", dir=disk.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(asdict(result)))  # type: ignore[call-overload]  # (a dataclass)
    os.replace(tmp, disk)
    memo[key] = result
    return result


def measure(
    path: Path | str,
    num_ctx: int,
    parallel: int = 1,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attention: bool = False,
    n_batch: int = 512,
    n_ubatch: int | None = None,
    embedding: bool = False,
    swa_full: bool = False,
    oracle: Oracle | None = None,
) -> Measurement:
    """What llama-server, started by Ollama with these options, allocates for the model."""
    args = server_args(num_ctx, parallel, type_k, type_v, flash_attention, n_batch, n_ubatch, embedding, swa_full)
    return measure_args(path, args, oracle)


def fit_print(path: Path | str, args: list[str], oracle: Oracle | None = None) -> dict[str, tuple[int, int, int]]:
    """`llama-fit-params --fit-print on` rows {device: (model, context, compute) MiB}, a cross-check."""
    oracle = oracle or ensure_oracle()
    proc = subprocess.run(
        [str(oracle.fit_params), "-m", str(path), "--fit-print", "on", *args],
        capture_output=True, text=True, timeout=300, check=True,
    )
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return rows
