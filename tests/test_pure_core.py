"""The pure core really is importable without any I/O library (import-linter checks the import
graph statically; this checks what Python actually loads)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PURE = [
    "proxy.footprint", "proxy.gate.decision", "proxy.gate.explanation", "proxy.gate.reservations",
    "proxy.gate.residency", "proxy.gate.sizing", "proxy.gpu.snapshot", "proxy.ollama.gojson",
    "proxy.ollama.keep_alive", "proxy.ollama.model_name", "proxy.ollama.requests", "proxy.ollama.versions",
    "proxy.edge.target", "proxy.edge.cors", "proxy.edge.host_guard",
]
IO_LIBRARIES = ["aiohttp", "structlog", "pydantic", "pydantic_settings", "pynvml", "uvloop"]


@pytest.mark.parametrize("module", PURE)
def test_importing_a_pure_module_loads_no_io_library(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {IO_LIBRARIES!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
