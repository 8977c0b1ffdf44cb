"""The log of decisions: who asked for which model, what vramgate did and why.

Every decision is one structlog event (``load.admitted``, ``load.rewritten``, ``load.refused``,
``pull.refused``, ``load.spilled``, ...) and, when ``audit_file`` is set, one JSON line appended
to that file. Only load-time options are logged: never prompts, messages or other option text.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("vramgate.audit")

LOAD_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "use_mmap", "num_thread")
_WARN = {"load.refused", "pull.refused", "load.spilled", "pull.check_failed"}


def load_options(options: object) -> dict[str, Any]:
    """The options that decide memory; everything else (stop words, ...) stays out of logs."""
    if not isinstance(options, dict):
        return {}
    return {k: options[k] for k in LOAD_OPTIONS if k in options}


class Audit:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def check(self) -> None:
        """At start: a decision log that cannot be written is a start-up error, not a silent gap."""
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise OSError(f"cannot write the audit file {self.path}: {exc.strerror or exc}") from None

    def event(self, name: str, **fields: Any) -> None:
        (log.warning if name in _WARN else log.info)(name, **fields)
        if self.path is None:
            return
        record = {"time": datetime.now(UTC).isoformat(), "event": name, **fields}
        line = json.dumps(record, default=str) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            log.error("audit.write_failed", path=str(self.path), error=str(exc))
