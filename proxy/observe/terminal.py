"""``vramgate status`` in a terminal: like nvidia-smi, but who holds the memory and why loads were refused.

``render`` is a pure function of the status JSON (``schema: 1``): per GPU a bar and one line per
holder (the segments of ``proxy.observe.segments``, as on the page), then the resident models, the
queue and the last decisions with their reasons. Fields the gate does not know (null) print as
``-``; a model with no owner was loaded outside vramgate.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from proxy.config.units import format_bytes
from proxy.observe.segments import Segment, bar_scale, gpu_segments

LAST_DECISIONS = 10
CELL_MAX = 24  # a table cell longer than this (a long model name) is cut, so the other columns stay on screen
_UNICODE = {"ollama": "█", "pending": "▓", "process": "▒", "unattributed": "?", "reserve": "░", "free": "·"}
_ASCII = {"ollama": "#", "pending": "+", "process": "=", "unattributed": "?", "reserve": "-", "free": "."}
_COLORS = {"ollama": "34", "pending": "33", "process": "35", "unattributed": "90", "reserve": "2", "free": "32"}
_KIND_TEXT = {"ollama": "ollama", "pending": "loading", "process": "process", "unattributed": "other",
              "reserve": "reserve", "free": "free"}
_RED, _BOLD = "31", "1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def render(status: Mapping[str, Any], width: int = 100, color: bool = False, ascii_only: bool = False) -> str:
    """The whole view as text, ``width`` columns at most (bars and tables shrink to fit)."""
    out = _Out(max(40, width), color)
    out.line(_headline(status))
    for gpu in status.get("gpus") or ():
        out.blank()
        _gpu(out, gpu, ascii_only)
    if not status.get("gpus"):
        out.blank()
        out.line("no GPU is known")
    out.blank()
    out.line(out.paint("Resident models", _BOLD))
    _models(out, status.get("models") or ())
    out.blank()
    out.line(out.paint("Queue", _BOLD))
    _queue(out, status.get("queue") or ())
    out.blank()
    out.line(out.paint("Last decisions (newest first)", _BOLD))
    _decisions(out, status.get("decisions") or (), status.get("time"))
    return out.text()


class _Out:
    def __init__(self, width: int, color: bool) -> None:
        self.width = width
        self.color = color
        self._lines: list[str] = []

    def paint(self, text: str, code: str | None) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code else text

    def line(self, text: str = "") -> None:
        """Add a line, cut at the width (an over-long painted line loses its colours, never its end mark)."""
        if _visible(text) > self.width:
            text = _fit(_strip_ansi(text), self.width)
        self._lines.append(text)

    def blank(self) -> None:
        self._lines.append("")

    def text(self) -> str:
        return "\n".join(self._lines) + "\n"


def _headline(status: Mapping[str, Any]) -> str:
    parts = [f"vramgate {status.get('vramgate_version') or '?'}",
             f"Ollama {status.get('ollama_version') or '?'} at {status.get('upstream') or '?'}",
             str(status.get("time") or "")]
    if status.get("schema") != 1:
        parts.append(f"unknown status schema {status.get('schema')!r}: this view may misread it")
    return " · ".join(p for p in parts if p)


def _size(value: Any) -> str:
    return format_bytes(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _gpu(out: _Out, gpu: Mapping[str, Any], ascii_only: bool) -> None:
    source = f" ({gpu['source']})" if gpu.get("source") else ""
    out.line(out.paint(f"GPU {gpu.get('index', '?')}  {gpu.get('name') or '?'}{source}", _BOLD))
    out.line(f"  total {_size(gpu.get('total_bytes'))} · free {_size(gpu.get('free_bytes'))} · "
             f"reserve {_size(gpu.get('reserve_bytes'))} · budget {_size(gpu.get('budget_bytes'))}")
    segments = gpu_segments(gpu)
    if not segments:
        out.line("  no memory figures")
        return
    glyphs = _ASCII if ascii_only else _UNICODE
    cells = _cells([s.bytes for s in segments], bar_scale(gpu, segments), out.width - 4)
    bar = "".join(out.paint(glyphs.get(s.kind, "?") * n, _COLORS.get(s.kind)) for s, n in zip(segments, cells))
    out.line(f"  [{bar}]")
    rows = [[out.paint(glyphs.get(s.kind, "?"), _COLORS.get(s.kind)), _KIND_TEXT.get(s.kind, s.kind),
             _holder_name(s), _holder_who(s), format_bytes(s.bytes), "busy" if s.busy else ""] for s in segments]
    _table(out, None, rows, right={4})


def _holder_name(s: Segment) -> str:
    return s.name if s.kind in ("ollama", "pending", "process") else ""


def _holder_who(s: Segment) -> str:
    if s.kind == "process":
        return (s.who or "?") + (f" (pid {s.pid})" if s.pid is not None else "")
    if s.kind in ("ollama", "pending"):
        return s.who or "outside vramgate"
    return ""


def _cells(sizes: Sequence[int], scale: int, width: int) -> list[int]:
    """Bar cells per segment: proportional, each at least one (a holder never vanishes), summing to width."""
    if not sizes:
        return []
    width = max(width, len(sizes))
    exact = [size * width / scale for size in sizes]
    cells = [max(1, int(x)) for x in exact]
    target = round(sum(exact)) if sum(sizes) < scale else width
    while sum(cells) < target:
        i = max(range(len(cells)), key=lambda k: exact[k] - cells[k])
        cells[i] += 1
    while sum(cells) > target:
        shrinkable = [k for k in range(len(cells)) if cells[k] > 1]
        if not shrinkable:
            break
        cells[max(shrinkable, key=lambda k: cells[k] - exact[k])] -= 1
    return cells


def _duration(seconds: Any) -> str:
    """Compact, for table cells: 12s, 4m00s, 1h05m, 2d03h."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s // 60 % 60:02d}m"
    return f"{s // 86400}d{s // 3600 % 24:02d}h"


def _models(out: _Out, models: Sequence[Mapping[str, Any]]) -> None:
    if not models:
        out.line("  no model is loaded")
        return
    rows = []
    for m in models:
        predicted, observed = m.get("predicted_bytes"), m.get("size_vram_bytes")
        diff = "-"
        if isinstance(predicted, (int, float)) and isinstance(observed, (int, float)) and predicted > 0:
            diff = f"{(observed - predicted) / predicted * 100:+.1f}%"
        keep = m.get("keep_alive_left_s")
        context = m.get("context_length")
        rows.append([str(m.get("name") or "?"), str(m.get("owner") or "outside vramgate"),
                     ", ".join(str(u) for u in m.get("users") or ()) or "-",
                     f"{context:,}" if isinstance(context, int) else "-",
                     _duration(keep) if keep is not None else "forever/?",
                     _size(predicted), _size(observed), diff,
                     "busy" if m.get("busy") else f"idle {_duration(m.get('idle_s'))}"])
    _table(out, ["MODEL", "OWNER", "USERS", "CONTEXT", "KEEP-ALIVE", "PREDICTED", "OBSERVED", "DIFF", "STATE"],
           rows, right={3, 4, 5, 6, 7})
    for m in models:
        if errors := _history(m.get("observed_history") or ()):
            out.line(f"  {m.get('name') or '?'}: observed vs predicted, oldest first: {' '.join(errors)}")


def _history(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """How far each past load's observed size was from its prediction (``+5.9%``)."""
    out = []
    for o in history:
        predicted, observed = o.get("predicted_bytes"), o.get("observed_bytes")
        if isinstance(predicted, (int, float)) and isinstance(observed, (int, float)) and predicted > 0:
            out.append(f"{(observed - predicted) / predicted * 100:+.1f}%")
    return out


def _queue(out: _Out, queue: Sequence[Mapping[str, Any]]) -> None:
    if not queue:
        out.line("  no load is waiting")
        return
    rows = [[str(q.get("position", "?")), str(q.get("user") or "?"), str(q.get("model") or "?"),
             str(q.get("priority", "-")), _duration(q.get("waited_s"))] for q in queue]
    _table(out, ["#", "USER", "MODEL", "PRIORITY", "WAITING"], rows, right={0, 3, 4})


def _clock(when: Any, now: Any) -> str:
    """``11:59:58 (2 s ago)`` in the timestamp's own zone (the server's UTC), or the text as given."""
    try:
        t = datetime.fromisoformat(str(when))
    except ValueError:
        return str(when or "")
    try:
        ago = f" ({_duration((datetime.fromisoformat(str(now)) - t).total_seconds())} ago)"
    except (ValueError, TypeError):
        ago = ""
    return t.strftime("%H:%M:%S") + ago


def _decisions(out: _Out, decisions: Sequence[Mapping[str, Any]], now: Any) -> None:
    if not decisions:
        out.line("  no decision yet")
        return
    for d in reversed(list(decisions)[-LAST_DECISIONS:]):
        status = d.get("status")
        refused = isinstance(status, int) and status >= 400
        head = "  ".join(str(x) for x in (_clock(d.get("time"), now), d.get("event") or "?", d.get("user") or "?",
                                          d.get("model") or "-", d.get("route") or "-",
                                          status if status is not None else "-", d.get("reason") or "-"))
        out.line(out.paint(_fit("  " + head, out.width), _RED if refused else None))
        why = str(d.get("explanation") or "")
        if d.get("num_ctx_from") is not None and d.get("num_ctx_to") is not None:
            why += f" (num_ctx {d['num_ctx_from']} -> {d['num_ctx_to']})"
        for text in textwrap.wrap(why, width=out.width - 6, max_lines=3, placeholder=" …"):
            out.line("      " + text)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(out: _Out, headers: list[str] | None, rows: list[list[str]], right: set[int]) -> None:
    """Columns padded to their widest cell (ANSI codes not counted), each line cut at the width."""
    every = ([headers] if headers else []) + [[_fit(cell, CELL_MAX) for cell in row] for row in rows]
    if not every:
        return
    widths = [max(_visible(r[i]) for r in every) for i in range(len(every[0]))]
    for n, row in enumerate(every):
        cells = []
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - _visible(cell))
            cells.append(pad + cell if i in right else cell + pad)
        line = "  " + "  ".join(cells).rstrip()
        if _visible(line) > out.width:
            line = _fit(_strip_ansi(line), out.width)
        out.line(out.paint(line, _BOLD if headers and n == 0 else None))


def _strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _visible(text: str) -> int:
    """Length without ANSI colour codes."""
    return len(_strip_ansi(text))
