"""The emulated scheduler: which models are loaded, with which load-time options, until when.

It follows ollama.md §1.4, §1.5 and §2: a request whose load-time options differ from the loaded
runner's reloads it (``num_gpu`` < 0 or absent matches anything; automatic ``num_ctx`` on both
sides is not compared); a request without ``keep_alive`` keeps the runner's previous value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from tests.emulator.catalogue import Model
from tests.emulator.wire import FOREVER, rfc3339

RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
INT_OPTIONS = {"num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_predict", "num_keep", "seed", "top_k"}
DEFAULT_KEEP_ALIVE = 300.0
OOM_PREFIX = "llama-server reported out-of-memory during startup: "


@dataclass(frozen=True)
class LoadOptions:
    """What a load hook is told: the request's load-time options as Ollama would resolve them."""

    num_ctx: int  # effective (default applied, capped to the trained context)
    num_gpu: int  # -1 = automatic
    auto_ctx: bool  # True when neither request nor Modelfile set num_ctx
    options: dict[str, Any]  # the request's raw ``options``
    keep_alive: float  # seconds, inf = forever


@dataclass(frozen=True)
class LoadResult:
    """How big the load turned out: ``size`` total, ``size_vram`` the part on the GPU."""

    size: int
    size_vram: int
    context_length: int | None = None  # defaults to the effective num_ctx


class LoadError(Exception):
    """A failed load, answered like Ollama: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def oom_error(detail: str = "cudaMalloc failed: out of memory") -> LoadError:
    """The load failure Ollama >= 0.30 reports when llama-server runs out of GPU memory."""
    return LoadError(OOM_PREFIX + detail, 500)


class OptionTypeError(Exception):
    pass


def check_option_types(options: dict[str, Any]) -> None:
    """Ollama rejects wrong JSON types for options with a 500 (ollama.md §1.12)."""
    for key, value in options.items():
        if key in INT_OPTIONS and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise OptionTypeError(f'option "{key}" must be of type integer')
        if key == "use_mmap" and not isinstance(value, bool):
            raise OptionTypeError(f'option "{key}" must be of type boolean')


@dataclass
class Runner:
    model: Model
    size: int
    size_vram: int
    context_length: int
    num_gpu: int
    auto_ctx: bool
    load_options: dict[str, Any]  # the runner options it was loaded with (raw values)
    keep_alive: float
    expires_at: float = 0.0  # epoch seconds, inf = never
    busy: int = 0
    loaded_at: float = field(default_factory=time.time)

    def touch(self, now: float) -> None:
        self.expires_at = FOREVER if self.keep_alive == FOREVER else now + self.keep_alive

    def ps_entry(self) -> dict[str, Any]:
        expires = self.expires_at if self.expires_at != FOREVER else time.time() + 290 * 365 * 86400
        return {
            "name": self.model.name,
            "model": self.model.name,
            "size": self.size,
            "digest": self.model.digest,
            "details": self.model.details,
            "expires_at": rfc3339(expires),
            "size_vram": self.size_vram,
            "context_length": self.context_length,
        }


def resolve_options(
    model: Model, options: dict[str, Any], keep_alive: float, default_num_ctx: int
) -> LoadOptions:
    modelfile_ctx = _modelfile_num_ctx(model)
    if "num_ctx" in options:
        num_ctx, auto = int(options["num_ctx"]), False
    elif modelfile_ctx is not None:
        num_ctx, auto = modelfile_ctx, False
    else:
        num_ctx, auto = default_num_ctx, True
    num_ctx = max(num_ctx, 4)
    trained = model.trained_context
    if trained:
        num_ctx = min(num_ctx, trained)
    num_gpu = int(options.get("num_gpu", -1))
    return LoadOptions(num_ctx=num_ctx, num_gpu=num_gpu, auto_ctx=auto, options=dict(options), keep_alive=keep_alive)


def needs_reload(runner: Runner, wanted: LoadOptions) -> bool:
    if not (runner.auto_ctx and wanted.auto_ctx) and runner.context_length != wanted.num_ctx:
        return True
    if wanted.num_gpu >= 0 and wanted.num_gpu != runner.num_gpu:
        return True
    for key in ("num_batch", "main_gpu", "use_mmap", "num_thread"):
        if runner.load_options.get(key) != wanted.options.get(key):
            return True
    return False


def _modelfile_num_ctx(model: Model) -> int | None:
    for line in (model.show.get("parameters") or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "num_ctx" and value.strip().isdigit():
            return int(value.strip())
    return None
