"""Predicted against observed load sizes, kept across restarts in a small SQLite file.

After a load vramgate admitted, Ollama's ``/api/ps`` says how big it really is (from 0.30 the sum
of llama-server's own buffer lines). The closed loop (``proxy.gate.closed_loop``) records each
comparison here, per model digest and run configuration (num_ctx, num_batch, parallel, KV type,
flash attention, the llama.cpp rule set). How much a digest's real loads exceeded the footprint's
prediction is the correction its next prediction gets (``Residency.learned``: never lowering a
prediction), so it survives a restart; ``vramgate plan --json`` and the status JSON show the history.

The file is ``observed.sqlite3`` under ``state_dir`` (default ``$XDG_STATE_HOME/vramgate``, else
``~/.local/state/vramgate``), read with the standard library's ``sqlite3``. Every row is also kept
in memory, so what a decision reads is a dict lookup (no I/O under the admission lock); the gate
writes a row with ``asyncio.to_thread`` (one small insert, but a disk can stall). If the directory
cannot be created or the file cannot be written, one warning is logged and the store keeps working
in memory only (corrections then last until vramgate stops, as before this store existed).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("vramgate.gate")

FILE_NAME = "observed.sqlite3"
KEEP_PER_DIGEST = 200  # newest rows kept per model digest: the history stays small
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS observations (
    time REAL NOT NULL,
    model TEXT NOT NULL,
    digest TEXT NOT NULL,
    num_ctx INTEGER NOT NULL,
    num_batch INTEGER NOT NULL,
    parallel INTEGER NOT NULL,
    kv_type TEXT NOT NULL,
    flash_attention INTEGER NOT NULL,
    rules TEXT NOT NULL,
    predicted_bytes INTEGER NOT NULL,
    observed_bytes INTEGER NOT NULL,
    observed_vram_bytes INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS observations_by_digest ON observations (digest, time);
"""
_COLUMNS = ("time, model, digest, num_ctx, num_batch, parallel, kv_type, flash_attention, rules, predicted_bytes, "
            "observed_bytes, observed_vram_bytes")


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/vramgate (an absolute XDG_STATE_HOME only, as the XDG spec says), else ~/.local/state/vramgate."""
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "state"
    return base / "vramgate"


def store_path(state_dir: Path | None) -> Path:
    return (state_dir if state_dir is not None else default_state_dir()) / FILE_NAME


@dataclass(frozen=True)
class LoadConfig:
    """What a load's size depends on besides the model file."""

    num_ctx: int  # per sequence, as forwarded to Ollama
    num_batch: int
    parallel: int
    kv_type: str
    flash_attention: bool
    rules: str  # the llama.cpp rule set's name (proxy.footprint.rules)


@dataclass(frozen=True)
class Observation:
    time: float  # Unix seconds
    model: str
    digest: str
    config: LoadConfig
    predicted_bytes: int  # the footprint's prediction, without any learnt correction (comparable with size)
    observed_bytes: int  # /api/ps size
    observed_vram_bytes: int  # /api/ps size_vram

    @property
    def excess(self) -> int:
        """Bytes the real load took beyond the prediction (0 when it took less)."""
        return max(0, self.observed_bytes - self.predicted_bytes)

    @property
    def iso_time(self) -> str:
        return datetime.fromtimestamp(self.time, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def as_dict(self) -> dict[str, Any]:
        """For ``vramgate plan --json``: when, what was predicted and observed, with which configuration."""
        return {"time": self.iso_time, "model": self.model, "digest": self.digest,
                "predicted_bytes": self.predicted_bytes, "observed_bytes": self.observed_bytes,
                "observed_vram_bytes": self.observed_vram_bytes, **asdict(self.config)}


class ObservedStore:
    """The store; ``open`` (or ``open_read_only``) does the I/O, nothing else raises."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: in memory only
        self.problem: str | None = None  # why the file is not used, when it is not
        self._db: sqlite3.Connection | None = None
        self._rows: dict[str, list[Observation]] = {}  # digest -> its observations, oldest first
        self._lock = threading.Lock()  # record() runs in a worker thread, reads on the event loop

    # --- opening --------------------------------------------------------------------------------
    def open(self) -> ObservedStore:
        """Create the directory, the file and its table, and read every row kept."""
        if self.path is None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5, check_same_thread=False, isolation_level=None)
            try:
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                rows = db.execute(f"SELECT {_COLUMNS} FROM observations ORDER BY time").fetchall()
            except sqlite3.Error:
                db.close()
                raise
        except (OSError, sqlite3.Error) as exc:
            self._unavailable(exc)
            return self
        with self._lock:
            self._db = db
            self._load(rows)
        return self

    @classmethod
    def open_read_only(cls, path: Path) -> ObservedStore:
        """Read what a running (or earlier) gate recorded, never creating or changing anything."""
        store = cls(None)
        if not path.is_file():
            return store
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
            try:
                rows = db.execute(f"SELECT {_COLUMNS} FROM observations ORDER BY time").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            store.problem = f"cannot read {path}: {exc}"
            return store
        store._load(rows)
        return store

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    @property
    def persistent(self) -> bool:
        return self._db is not None

    @property
    def empty(self) -> bool:
        with self._lock:
            return not any(self._rows.values())

    # --- writing --------------------------------------------------------------------------------
    def record(self, digest: str, config: LoadConfig, predicted: int, observed: int, when: float | None = None,
               *, model: str = "", observed_vram: int = 0) -> Observation:
        """Keep one comparison (in memory at once, then in the file; a failing file is dropped)."""
        obs = Observation(time.time() if when is None else when, model, digest, config, predicted, observed,
                          observed_vram)
        with self._lock:
            rows = self._rows.setdefault(digest, [])
            rows.append(obs)
            del rows[:-KEEP_PER_DIGEST]
            if self._db is not None:
                try:
                    self._insert(self._db, obs)
                except sqlite3.Error as exc:
                    self._db.close()
                    self._db = None
                    self._unavailable(exc)
        return obs

    @staticmethod
    def _insert(db: sqlite3.Connection, o: Observation) -> None:
        c = o.config
        with db:  # one transaction: the insert and the trimming of old rows
            db.execute("BEGIN")
            db.execute(f"INSERT INTO observations ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (o.time, o.model, o.digest, c.num_ctx, c.num_batch, c.parallel, c.kv_type,
                        int(c.flash_attention), c.rules, o.predicted_bytes, o.observed_bytes, o.observed_vram_bytes))
            db.execute("DELETE FROM observations WHERE digest = ? AND rowid NOT IN (SELECT rowid FROM observations"
                       " WHERE digest = ? ORDER BY time DESC LIMIT ?)", (o.digest, o.digest, KEEP_PER_DIGEST))

    # --- reading --------------------------------------------------------------------------------
    def history(self, digest: str, limit: int | None = None) -> list[Observation]:
        """A digest's observations, oldest first (the last ``limit`` of them)."""
        with self._lock:
            rows = list(self._rows.get(digest, ()))
        return rows[-limit:] if limit else rows

    def latest_digest(self, model: str) -> str | None:
        """The digest most recently observed under this model name."""
        with self._lock:
            best = max((rows[-1] for rows in self._rows.values() if rows and any(r.model == model for r in rows)),
                       key=lambda o: o.time, default=None)
        return best.digest if best is not None else None

    def correction(self, digest: str, config: LoadConfig | None = None) -> int:
        """Bytes to add to this digest's next prediction: the largest excess seen with ``config``,
        or with any configuration when ``config`` is None or was never seen."""
        rows = self.history(digest)
        exact = [o.excess for o in rows if o.config == config]
        return max(exact or [o.excess for o in rows], default=0)

    def corrections(self) -> dict[str, int]:
        """Every digest's correction (any configuration): what the gate loads at start."""
        with self._lock:
            digests = list(self._rows)
        return {d: c for d in digests if (c := self.correction(d))}

    # --- helpers --------------------------------------------------------------------------------
    def _load(self, rows: list[tuple]) -> None:
        for row in rows:
            (when, model, digest, num_ctx, num_batch, parallel, kv_type, fa, rules, predicted, observed,
             observed_vram) = row
            config = LoadConfig(int(num_ctx), int(num_batch), int(parallel), str(kv_type), bool(fa), str(rules))
            self._rows.setdefault(str(digest), []).append(
                Observation(float(when), str(model), str(digest), config, int(predicted), int(observed),
                            int(observed_vram)))
        for kept in self._rows.values():
            del kept[:-KEEP_PER_DIGEST]

    def _unavailable(self, exc: BaseException) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.problem = f"{self.path}: {reason}"
        log.warning("gate.state_unavailable", path=str(self.path), error=reason,
                    consequence="observed load sizes are kept in memory only, until vramgate stops")
