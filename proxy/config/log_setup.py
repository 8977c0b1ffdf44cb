"""structlog set-up: JSON lines on stdout by default, the console renderer when stdout is a TTY.

Configured once at start-up with a cached, level-filtering logger so a log call that is filtered
out costs almost nothing. ``current()`` tells the access log how output is configured, so it can
write its (very frequent) JSON lines itself in the same shape at a fraction of the cost.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


@dataclass(frozen=True)
class LogOutput:
    stream: TextIO
    json: bool  # JSON lines (else the console renderer)
    level: int


_current = LogOutput(sys.stdout, True, logging.INFO)
# Loggers are cached on first use (a filtered call then costs almost nothing). A test suite turns
# this off: structlog's ``capture_logs`` cannot see a logger cached before it ran.
CACHE_LOGGERS = True


def configure_logging(log_format: str = "auto", log_level: str = "info", stream: TextIO | None = None) -> None:
    global _current
    out = stream if stream is not None else sys.stdout
    console = log_format == "console" or (log_format == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[log_level]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=CACHE_LOGGERS,
    )
    _current = LogOutput(out, not console, _LEVELS[log_level])
    _route_stdlib_logging(out, renderer, _LEVELS[log_level])


class _VramgateHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Marks the one handler this module installs, so reconfiguring replaces it."""


def _route_stdlib_logging(out: TextIO, renderer: Any, level: int) -> None:
    """aiohttp and asyncio log through the standard library: render their records the same way."""
    handler = _VramgateHandler(out)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
        ],
    ))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _VramgateHandler)] + [handler]
    root.setLevel(max(level, logging.INFO))


def current() -> LogOutput:
    return _current


def get_logger(name: str) -> Any:
    return structlog.get_logger(name).bind(logger=name)
