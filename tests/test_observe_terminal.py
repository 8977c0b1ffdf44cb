"""``vramgate status``'s text view and the bar rule it shares with the page (proxy.observe.segments)."""

from __future__ import annotations

import re

from proxy.observe.segments import Segment, bar_scale, gpu_segments
from proxy.observe.terminal import LAST_DECISIONS, _cells, render
from tests.observe_status import EVIL, GiB, status

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_segments_are_the_holders_then_reserve_and_free() -> None:
    gpu = status()["gpus"][0]
    segments = gpu_segments(gpu)
    assert segments == [
        Segment("ollama", "qwen3:32b", "alice", 18 * GiB, None, False),
        Segment("ollama", EVIL, None, GiB, None, False),
        Segment("pending", "llama3.2:3b", "bob", 2 * GiB, None, True),
        Segment("process", "python3", "carol", GiB, 4242, None),
        Segment("reserve", "reserve", None, GiB // 2),
        Segment("free", "free", None, 3 * GiB // 2),
    ]
    assert bar_scale(gpu, segments) == 24 * GiB == sum(s.bytes for s in segments)


def test_memory_no_holder_accounts_for_is_its_own_segment() -> None:
    segments = gpu_segments(status()["gpus"][1])
    assert [(s.kind, s.bytes) for s in segments] == [("unattributed", 6 * GiB), ("free", 2 * GiB)]


def test_without_a_budget_free_is_free_minus_reserve_and_the_bar_never_overflows() -> None:
    gpu = status()["gpus"][0]
    gpu["budget_bytes"] = None
    assert gpu_segments(gpu)[-1] == Segment("free", "free", None, 3 * GiB // 2)
    gpu.update(free_bytes=None, total_bytes=10 * GiB)  # holders alone exceed the total
    segments = gpu_segments(gpu)
    assert segments[-1].kind == "reserve"
    assert bar_scale(gpu, segments) == sum(s.bytes for s in segments) > 10 * GiB


def test_cells_are_proportional_at_least_one_each_and_fill_the_width() -> None:
    assert _cells([18, 1, 2, 1, 1, 1], 24, 96) == [72, 4, 8, 4, 4, 4]
    cells = _cells([10_000, 1, 1], 10_002, 50)
    assert sum(cells) == 50 and cells[1:] == [1, 1]
    assert _cells([], 1, 10) == []


def test_the_view_shows_who_holds_what_and_why() -> None:
    text = render(status(), width=130)
    assert "GPU 0  NVIDIA GeForce RTX 4090 (nvml)" in text
    assert "total 24.0 GiB · free 2.0 GiB · reserve 512.0 MiB · budget 1.5 GiB" in text
    lines = text.splitlines()
    holder = next(line for line in lines if "qwen3:32b" in line and "alice" in line and "18.0 GiB" in line)
    assert "ollama" in holder
    assert any("loading" in line and "llama3.2:3b" in line and "bob" in line and "busy" in line for line in lines)
    assert any("process" in line and "python3" in line and "carol (pid 4242)" in line and "1.0 GiB" in line
               for line in lines)
    assert any(EVIL[:20] in line and "…" in line and "outside vramgate" in line for line in lines)  # cut
    assert any("other" in line and "6.0 GiB" in line for line in lines)  # GPU 1's unattributed memory
    model = next(line for line in lines if line.startswith("  qwen3:32b"))
    for cell in ("alice, bob", "8,192", "4m00s", "17.0 GiB", "18.0 GiB", "+5.9%", "idle 1m00s"):
        assert cell in model
    assert any("forever/?" in line and "busy" in line for line in lines)  # the unowned model
    assert any("dave" in line and "llama3.1:8b" in line and "12s" in line for line in lines)
    assert "num_ctx 131072 -> 128000" in text
    assert "needs 42.3 GiB" in text


def test_decisions_are_newest_first_and_refusals_red_only_with_color() -> None:
    plain = render(status())
    assert ANSI.search(plain) is None
    order = [plain.index(event) for event in ("load.refused", "load.rewritten", "load.admitted")]
    assert order == sorted(order)
    assert "11:59:58 (2s ago)" in plain
    colored = render(status(), color=True)
    refused = next(line for line in colored.splitlines() if "load.refused" in line)
    assert refused.startswith("\x1b[31m")
    admitted = next(line for line in colored.splitlines() if "load.admitted" in line)
    assert "\x1b[31m" not in admitted
    assert ANSI.sub("", colored) == plain


def test_only_the_last_decisions_are_shown() -> None:
    snapshot = status()
    snapshot["decisions"] = [{**snapshot["decisions"][0], "model": f"m{i}"} for i in range(30)]
    text = render(snapshot)
    assert "m29" in text and f"m{30 - LAST_DECISIONS}" in text and f"m{29 - LAST_DECISIONS} " not in text


def test_every_line_fits_the_width_and_the_bar_fills_it() -> None:
    for width in (60, 100, 160):
        text = render(status(), width=width)
        assert max(len(line) for line in text.splitlines()) <= width
        bars = [line for line in text.splitlines() if line.startswith("  [")]
        assert len(bars) == 2 and all(len(bar) == width for bar in bars)


def test_ascii_only_bars() -> None:
    text = render(status(), ascii_only=True)
    bars = [line for line in text.splitlines() if line.startswith("  [")]
    assert all(bar.isascii() for bar in bars)
    assert bars[0].count("#") == round(19 / 24 * 96)


def test_an_empty_or_partial_status_renders() -> None:
    text = render({})
    assert "no GPU is known" in text and "no model is loaded" in text and "no decision yet" in text
    assert "unknown status schema" in text
    odd = render({"schema": 1, "gpus": [{"index": 0}], "models": [{"name": "x"}],
                  "decisions": [{"time": "not a time", "status": None}], "queue": [{}]})
    assert "GPU 0  ?" in odd and "not a time" in odd


def test_a_models_error_history_is_shown_when_there_is_one() -> None:
    from tests.observe_status import status as fixture

    data = fixture()
    data["models"][0]["observed_history"] = [
        {"time": "2026-12-01T11:00:00Z", "predicted_bytes": 1000, "observed_bytes": 1059, "num_ctx": 8192},
        {"time": "2026-12-01T11:30:00Z", "predicted_bytes": 2000, "observed_bytes": 1990, "num_ctx": 4096}]
    text = render(data, width=120)
    name = data["models"][0]["name"]
    assert f"  {name}: observed vs predicted, oldest first: +5.9% -0.5%" in text.splitlines()
    assert "oldest first" not in render(fixture(), width=120)  # no history, no line
