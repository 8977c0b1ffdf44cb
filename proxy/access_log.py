"""One ``access`` event per request: who asked what, how it ended, how long it took. Never bodies."""

from __future__ import annotations

from typing import Any

from proxy.logging_setup import get_logger


class AccessLog:
    def __init__(self) -> None:
        self._log: Any = get_logger("vramgate.access")

    def record(
        self,
        *,
        method: str,
        path: str,
        status: int,
        sent: int,
        duration: float,
        client: str,
        ttfb: float | None,
        outcome: str = "ok",
    ) -> None:
        """``sent`` = body bytes to the client; ``duration``/``ttfb`` in seconds (ttfb: upstream headers)."""
        self._log.info(
            "access",
            method=method,
            path=path,
            status=status,
            bytes=sent,
            duration_ms=round(duration * 1000, 3),
            upstream_ttfb_ms=None if ttfb is None else round(ttfb * 1000, 3),
            client=client,
            outcome=outcome,
        )
