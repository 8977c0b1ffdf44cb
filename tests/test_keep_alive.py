"""proxy.keep_alive against Ollama's api.Duration.UnmarshalJSON and Go's time.ParseDuration.

Expected values follow the Go source (api/types.go, time/format.go) and were checked against
a real Go build of the same logic.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from proxy.ollama.gojson import GoObject, RawNumber, decode
from proxy.ollama.keep_alive import (
    FOREVER,
    FOREVER_NS,
    INT64_MIN,
    KeepAliveError,
    float_to_int64,
    is_zero,
    keep_alive_ns,
    keep_alive_seconds,
    parse_go_duration,
    parse_go_duration_ns,
    unmarshal_error,
)

S = 1_000_000_000

TABLE: list[tuple[Any, int | None | type[KeepAliveError]]] = [
    ("0", 0), (0, 0), (0.0, 0), ("0s", 0), ("0m0s", 0), ("-0", 0), ("+0s", 0), ("0.0h", 0), (-0.0, 0),
    ("5m", 300 * S), ("1h30m", 5400 * S), ("24h", 86400 * S), (300, 300 * S), (1.5, 1_500_000_000),
    ("-1", KeepAliveError),  # no unit
    (-1, FOREVER_NS), (-0.5, FOREVER_NS), ("-1s", FOREVER_NS), ("-1h30m", FOREVER_NS),
    ("300", KeepAliveError),  # a number in a string still needs a unit
    ("abc", KeepAliveError), ("", KeepAliveError), ("1d", KeepAliveError), (" 1s", KeepAliveError),
    (True, KeepAliveError), (False, KeepAliveError), ([], KeepAliveError), (GoObject(), KeepAliveError),
    (RawNumber("1e400"), KeepAliveError), (10 ** 400, KeepAliveError),
    (None, None),
    (1e-10, 0),  # 0.1 ns truncates to 0: an unload
    (1e-9, 1),
    (1e10, INT64_MIN),  # 1e19 ns is past int64: amd64's conversion gives MinInt64
]


@pytest.mark.parametrize("raw, ns", TABLE)
def test_keep_alive_table(raw: Any, ns: Any) -> None:
    if ns is KeepAliveError:
        with pytest.raises(KeepAliveError):
            keep_alive_ns(raw)
        assert unmarshal_error(raw) is not None
        assert not is_zero(raw)
    else:
        assert keep_alive_ns(raw) == ns
        assert unmarshal_error(raw) is None
        assert is_zero(raw) == (ns == 0)


def test_seconds_view() -> None:
    assert keep_alive_seconds("5m") == 300.0
    assert keep_alive_seconds(-1) == FOREVER == math.inf
    assert keep_alive_seconds("-5m") == FOREVER
    assert keep_alive_seconds(None) is None
    assert keep_alive_seconds(2.5) == 2.5


def test_the_value_as_decoded_from_json() -> None:
    for body, ns in [(b"0", 0), (b"-0", 0), (b"1e2", 100 * S), (b'"2m"', 120 * S), (b"-1e400", None)]:
        value = decode(body)
        if ns is None:
            assert unmarshal_error(value) is not None
        else:
            assert keep_alive_ns(value) == ns


def test_out_of_range_float_depends_on_the_cpu() -> None:
    assert keep_alive_ns(1e10, arch="amd64") == INT64_MIN  # dropped as soon as idle
    assert keep_alive_ns(1e10, arch="arm64") == FOREVER_NS
    assert float_to_int64(2.0 ** 63) == INT64_MIN
    assert float_to_int64(-(2.0 ** 63)) == INT64_MIN
    assert float_to_int64(2.0 ** 63, "arm64") == FOREVER_NS
    assert float_to_int64(-1.9) == -1 and float_to_int64(1.9) == 1


@pytest.mark.parametrize("text, ns", [
    ("0", 0), ("+0", 0), ("-0", 0), ("0s", 0), ("-0s", 0), ("0.0h", 0),
    ("1ns", 1), ("1us", 1000), ("1\u00b5s", 1000), ("1\u03bcs", 1000), ("1ms", 1_000_000), ("1s", S),
    ("1m", 60 * S), ("1h", 3600 * S), ("1.5h", 5400 * S), (".5s", S // 2), ("5.s", 5 * S),
    ("1h1h", 7200 * S), ("2h45m", 9900 * S), ("-1.5h", -5400 * S), ("300ms", 300_000_000),
    ("1.0000000001s", 1_000_000_000), ("0.1234567890123456789012345h", 444444440444),
    ("9223372036854775807ns", 2 ** 63 - 1), ("-9223372036854775808ns", -(2 ** 63)),
    ("2562047h47m16.854775807s", 2 ** 63 - 1),
    # The running total is a uint64: two halves of 2**64 wrap to 0 (a Go quirk, kept on purpose).
    ("9223372036854775808ns9223372036854775808ns", 0),
    ("9223372036854775808ns9223372036854775808ns1s", S),
])
def test_parse_go_duration(text: str, ns: int) -> None:
    assert parse_go_duration_ns(text) == ns
    assert parse_go_duration(text) == ns / 1e9


@pytest.mark.parametrize("text", [
    "", "+", "-", "1", "300", "-1", "1d", "1S", "1H", "1 s", " 1s", "1s ", ".s", "-.s", ".", "s", "1e3s",
    "3m-1s", "+-1s", "\uff11s", "1sec", "9223372036854775808ns", "-9223372036854775809ns",
    "2562047h47m16.854775808s", "99999999999999999999s", "4611686018427387904ns4611686018427387904ns",
])
def test_parse_go_duration_errors(text: str) -> None:
    with pytest.raises(KeepAliveError):
        parse_go_duration_ns(text)
