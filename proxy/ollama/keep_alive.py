"""Ollama's ``keep_alive``: what the JSON value becomes (``api.Duration.UnmarshalJSON``).

Why: ``keep_alive`` decides whether an empty generate/chat request unloads a model instead of
loading it, and how long a loaded model stays. The gate must read it exactly as Ollama does,
including its odd corners, or a client could unload (or pin) a model behind the gate's back.

The rules (``api/types.go``, Go's ``time.ParseDuration``):

- absent or ``null``: no value; a new load uses ``OLLAMA_KEEP_ALIVE`` (default 5m), a loaded
  model keeps the duration it had.
- a number: seconds. Negative means forever (``Duration(MaxInt64)``). Otherwise the float64
  ``seconds * 1e9`` is truncated to int64 nanoseconds, so ``1e-10`` is 0 (unload) and a value
  of 2**63 ns or more is out of int64's range: Go's conversion then gives ``MinInt64`` on
  amd64 (a negative duration: the model is dropped as soon as it is idle) and ``MaxInt64`` on
  arm64. A number beyond float64 (``1e400``) is an error.
- a string: ``time.ParseDuration``; a negative result means forever. A bare number such as
  ``"300"`` has no unit and is an error.
- anything else (bool, array, object): an error.

Errors make Ollama answer 400 before loading anything. Durations here are int nanoseconds,
Go's own unit, so nothing is rounded.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from proxy.ollama.gojson import GoObject, GoTypeError, RawNumber, go_float

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
FOREVER_NS = INT64_MAX
"""What Ollama stores for "forever" (any negative keep_alive): about 292 years."""
FOREVER = math.inf
""":func:`keep_alive_seconds`'s value for :data:`FOREVER_NS`."""

Arch = Literal["amd64", "arm64"]

_UNITS_NS = {"ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
             "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_U64 = 1 << 64
_DIGITS = "0123456789"


class KeepAliveError(ValueError):
    """A keep_alive value Ollama rejects with 400."""


def parse_go_duration_ns(text: str) -> int:
    """Go's ``time.ParseDuration``, in int64 nanoseconds.

    Grammar ``[-+]?([0-9]*(\\.[0-9]*)?unit)+`` or a lone ``0``; units ns us µs μs ms s m h.
    Overflow past int64 is an error, except one Go quirk we keep: the running total is a
    uint64 that wraps at 2**64, so two groups of exactly 2**63 ns add up to 0.
    """
    rest, negative = text, False
    if rest[:1] in ("-", "+"):
        negative, rest = rest[0] == "-", rest[1:]
    if rest == "0":
        return 0
    if rest == "":
        raise KeepAliveError(f"time: invalid duration {_quote(text)}")
    total = 0
    while rest:
        group_ns, rest = _duration_group(rest, text)
        total = (total + group_ns) % _U64
        if total > 1 << 63:
            raise KeepAliveError(f"time: invalid duration {_quote(text)}")
    if negative:
        return -total
    if total > INT64_MAX:
        raise KeepAliveError(f"time: invalid duration {_quote(text)}")
    return total


def _duration_group(s: str, text: str) -> tuple[int, str]:
    """One ``number unit`` group: its nanoseconds and the text after it."""
    invalid = KeepAliveError(f"time: invalid duration {_quote(text)}")
    if s[0] != "." and s[0] not in _DIGITS:
        raise invalid
    whole, s, pre = _leading_int(s, invalid)
    fraction, scale, post = 0, 1.0, False
    if s[:1] == ".":
        fraction, scale, s, post = _leading_fraction(s[1:])
    if not pre and not post:
        raise invalid
    i = 0
    while i < len(s) and s[i] != "." and s[i] not in _DIGITS:
        i += 1
    if i == 0:
        raise KeepAliveError(f"time: missing unit in duration {_quote(text)}")
    unit_name, s = s[:i], s[i:]
    unit = _UNITS_NS.get(unit_name)
    if unit is None:
        raise KeepAliveError(f"time: unknown unit {_quote(unit_name)} in duration {_quote(text)}")
    if whole > (1 << 63) // unit:
        raise invalid
    ns = whole * unit
    if fraction > 0:
        ns += int(float(fraction) * (float(unit) / scale))  # float64, truncated, as Go does
        if ns > 1 << 63:
            raise invalid
    return ns, s


def _leading_int(s: str, invalid: KeepAliveError) -> tuple[int, str, bool]:
    i, x = 0, 0
    while i < len(s) and s[i] in _DIGITS:
        if x > (1 << 63) // 10:
            raise invalid
        x = x * 10 + int(s[i])
        if x > 1 << 63:
            raise invalid
        i += 1
    return x, s[i:], i > 0


def _leading_fraction(s: str) -> tuple[int, float, str, bool]:
    """Digits after the point; past 2**63 Go stops adding precision (no error)."""
    i, x, scale, overflow = 0, 0, 1.0, False
    while i < len(s) and s[i] in _DIGITS:
        if not overflow:
            y = x * 10 + int(s[i])
            if x > ((1 << 63) - 1) // 10 or y > 1 << 63:
                overflow = True
            else:
                x, scale = y, scale * 10
        i += 1
    return x, scale, s[i:], i > 0


def parse_go_duration(text: str) -> float:
    """``time.ParseDuration`` in seconds (see :func:`parse_go_duration_ns`)."""
    return parse_go_duration_ns(text) / 1e9


def float_to_int64(x: float, arch: Arch = "amd64") -> int:
    """Go's ``int64(x)`` for a float64: truncation; out of range is what the CPU gives.

    amd64's CVTTSD2SQ returns MinInt64 for anything out of range; arm64's FCVTZS saturates.
    (Go's spec calls the result implementation-dependent.)
    """
    if -(2.0 ** 63) <= x < 2.0 ** 63:
        return int(x)
    if arch == "amd64":
        return INT64_MIN
    return INT64_MAX if x > 0 else INT64_MIN


def keep_alive_ns(raw: Any, *, arch: Arch = "amd64") -> int | None:
    """The Duration Ollama gets from the raw JSON ``keep_alive`` value, None when absent/null.

    Raises :class:`KeepAliveError` where Ollama answers 400.
    """
    if raw is None:
        return None
    if isinstance(raw, str):
        ns = parse_go_duration_ns(raw)
        return FOREVER_NS if ns < 0 else ns
    if isinstance(raw, bool) or not isinstance(raw, (int, float, RawNumber)):
        raise KeepAliveError(f"Unsupported type: '{_go_type_name(raw)}'")
    try:
        seconds = go_float(raw)
    except GoTypeError as err:
        raise KeepAliveError(str(err)) from None
    if seconds < 0:
        return FOREVER_NS
    return float_to_int64(seconds * 1e9, arch)


def keep_alive_seconds(raw: Any, *, arch: Arch = "amd64") -> float | None:
    """:func:`keep_alive_ns` in seconds; :data:`FOREVER` (inf) for Ollama's forever, None when absent."""
    ns = keep_alive_ns(raw, arch=arch)
    if ns is None:
        return None
    return FOREVER if ns == FOREVER_NS else ns / 1e9


def unmarshal_error(raw: Any) -> str | None:
    """The error ``Duration.UnmarshalJSON`` returns for this value, None when it accepts it."""
    try:
        keep_alive_ns(raw)
    except KeepAliveError as err:
        return str(err)
    return None


def is_zero(raw: Any, *, arch: Arch = "amd64") -> bool:
    """Ollama reads this keep_alive as exactly 0 ("unload now" on an empty request).

    False for absent/null and for values Ollama rejects.
    """
    try:
        return keep_alive_ns(raw, arch=arch) == 0
    except KeepAliveError:
        return False


def _go_type_name(raw: Any) -> str:
    if isinstance(raw, bool):
        return "bool"
    if isinstance(raw, GoObject):
        return "map[string]interface {}"
    if isinstance(raw, list):
        return "[]interface {}"
    return type(raw).__name__


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
