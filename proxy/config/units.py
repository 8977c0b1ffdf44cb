"""Human-friendly sizes and bandwidths: the units an admin types and a refusal message shows.

Binary suffixes (KiB, MiB, GiB, TiB) are powers of 1024; decimal ones (KB, MB, GB, TB) powers of
1000, because GPU datasheets quote bandwidth in GB/s while memory is sized in GiB.
"""

from __future__ import annotations

import re

_FACTORS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: str | int | float) -> int:
    """'24GiB' -> 25769803776; plain numbers are bytes. Raises ValueError with the offending text."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"size must not be negative: {value!r}")
        return int(value)
    match = _SIZE.match(value)
    if not match or match.group(2).lower() not in _FACTORS:
        raise ValueError(f"not a size: {value!r} (examples: 24GiB, 512MiB, 1000000000)")
    return int(float(match.group(1)) * _FACTORS[match.group(2).lower()])


def parse_bandwidth(value: str | int | float) -> float:
    """'1008GB/s' -> 1.008e12 bytes per second; plain numbers are bytes per second."""
    if isinstance(value, str):
        text = value.strip()
        if text.lower().endswith("/s"):
            text = text[:-2]
        return float(parse_bytes(text))
    return float(parse_bytes(value))


def format_bytes(n: int | float) -> str:
    """Binary units with one decimal, the way nvidia-smi users read memory: 17.3 GiB."""
    n = float(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{n:.0f} {unit}" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_bandwidth(bytes_per_s: float) -> str:
    """Decimal units, as datasheets print them: 1008 GB/s."""
    if bytes_per_s >= 1e12:
        return f"{bytes_per_s / 1e12:.2f} TB/s"
    return f"{bytes_per_s / 1e9:.0f} GB/s"
