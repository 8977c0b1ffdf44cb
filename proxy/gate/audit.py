"""The log of decisions: who asked for which model, what vramgate did and why.

Every decision is one structlog event (``load.admitted``, ``load.rewritten``, ``load.refused``,
``pull.refused``, ``load.spilled``, ...) and, when ``audit_file`` is set, one JSON line appended
to that file. Only load-time options are logged: never prompts, messages or other option text.

Every event carries who asked (``user`` and how they were identified: ``identity`` is ``token``,
``loopback`` or ``address``), taken from the request being decided (a context variable the gate
sets), so no decision can be logged without it. Tokens are never logged. The last 100 decisions
are also kept in memory for the status view.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("vramgate.audit")

# who the decision being made is for: (user, how identified), set by the gate per request
asking: ContextVar[tuple[str, str] | None] = ContextVar("vramgate_asking", default=None)
RECENT = 100
_RECENT_FIELDS = ("user", "model", "route", "status", "reason", "explanation", "num_ctx_from", "num_ctx_to")
_RECENT_EXTRA = ("rule", "waited_s", "owner", "for_user", "for_model")  # kept when an event has them

LOAD_OPTIONS = ("num_ctx", "num_gpu", "num_batch", "main_gpu", "use_mmap", "num_thread")
_WARN = {"load.refused", "pull.refused", "load.spilled", "pull.check_failed", "load.queue_timeout", "request.refused"}


def load_options(options: object) -> dict[str, Any]:
    """The options that decide memory; everything else (stop words, ...) stays out of logs."""
    if not isinstance(options, dict):
        return {}
    return {k: options[k] for k in LOAD_OPTIONS if k in options}


class Audit:
    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)  # for the status view, newest last
        self.listeners: list[Any] = []  # called with (name, fields) for every event (metrics)

    def check(self) -> None:
        """At start: a decision log that cannot be written is a start-up error, not a silent gap."""
        if self.path is not None:
            try:
                with open(self.path, "a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise OSError(f"cannot write the audit file {self.path}: {exc.strerror or exc}") from None

    def event(self, name: str, **fields: Any) -> None:
        who = asking.get()
        if who is not None and "user" not in fields:
            fields = {"user": who[0], "identity": who[1], **fields}
        (log.warning if name in _WARN else log.info)(name, **fields)
        now = datetime.now(UTC).isoformat()
        recent = {"time": now, "event": name, **{k: fields.get(k) for k in _RECENT_FIELDS}}
        recent.update((k, fields[k]) for k in _RECENT_EXTRA if k in fields)
        self.recent.append(recent)
        for listener in self.listeners:
            listener(name, fields)
        if self.path is None:
            return
        record = {"time": now, "event": name, **fields}
        line = json.dumps(record, default=str) + "\n"
        try:
            with self._lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as exc:
            log.error("audit.write_failed", path=str(self.path), error=str(exc))
