"""An HTTP-level Ollama emulator for tests (see ``app.Emulator``)."""

from tests.emulator.app import Disconnect, Emulator, Received
from tests.emulator.catalogue import Model, make_show, normalize_name, tensor_bytes
from tests.emulator.faults import Fault
from tests.emulator.runners import (
    OOM_PREFIX,
    LoadError,
    LoadOptions,
    LoadResult,
    Runner,
    oom_error,
)
from tests.emulator.server import Running, serve

__all__ = [
    "Disconnect", "Emulator", "Fault", "LoadError", "LoadOptions", "LoadResult", "Model", "OOM_PREFIX",
    "Received", "Runner", "Running", "make_show", "normalize_name", "oom_error", "serve", "tensor_bytes",
]
