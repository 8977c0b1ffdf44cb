"""The Prometheus exposition: live instruments and the gauges read from a status snapshot at scrape time.

Every value is checked against the fixture's numbers by hand, from the text Prometheus would parse.
"""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from proxy.observe.metrics import Metrics
from tests.observe_status import EVIL, GiB, status


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, **labels: str) -> float:
    return found[(metric, frozenset(labels.items()))]


def names(found: dict[tuple[str, frozenset[tuple[str, str]]], Any]) -> set[str]:
    return {name for name, _ in found}


def test_decisions_are_counted_by_outcome_reason_route_and_user() -> None:
    metrics = Metrics()
    metrics.decision("refused", "too_big", "/api/chat", "bob")
    metrics.decision("refused", "too_big", "/api/chat", "bob")
    metrics.decision("admitted", None, "/api/generate", None)
    found = samples(metrics)
    assert value(found, "vramgate_decisions_total", outcome="refused", reason="too_big", route="/api/chat",
                 user="bob") == 2
    assert value(found, "vramgate_decisions_total", outcome="admitted", reason="", route="/api/generate",
                 user="") == 1


def test_histograms_counters_and_the_open_streams_gauge() -> None:
    metrics = Metrics()
    metrics.decision_latency(0.0003)
    metrics.decision_latency(0.02)
    metrics.queue_wait(12.0)
    metrics.ttfb(0.2)
    metrics.upstream_error("unreachable")
    metrics.upstream_error("unreachable")
    metrics.upstream_error("timeout")
    for _ in range(3):
        metrics.stream_opened()
    metrics.stream_closed()
    found = samples(metrics)
    assert value(found, "vramgate_decision_seconds_count") == 2
    assert abs(value(found, "vramgate_decision_seconds_sum") - 0.0203) < 1e-12
    assert value(found, "vramgate_decision_seconds_bucket", le="0.0005") == 1  # sub-millisecond buckets exist
    assert value(found, "vramgate_decision_seconds_bucket", le="0.025") == 2
    assert value(found, "vramgate_queue_wait_seconds_bucket", le="10.0") == 0
    assert value(found, "vramgate_queue_wait_seconds_bucket", le="30.0") == 1
    assert value(found, "vramgate_upstream_ttfb_seconds_bucket", le="0.25") == 1
    assert value(found, "vramgate_upstream_ttfb_seconds_bucket", le="0.1") == 0
    assert value(found, "vramgate_upstream_errors_total", kind="unreachable") == 2
    assert value(found, "vramgate_upstream_errors_total", kind="timeout") == 1
    assert value(found, "vramgate_open_streams") == 2


def test_gpu_model_and_queue_gauges_come_from_the_status_snapshot() -> None:
    snapshot = status()
    found = samples(Metrics(lambda: snapshot))
    assert value(found, "vramgate_gpu_total_bytes", gpu="0", name="NVIDIA GeForce RTX 4090") == 24 * GiB
    assert value(found, "vramgate_gpu_total_bytes", gpu="1", name="NVIDIA RTX A2000") == 8 * GiB
    assert value(found, "vramgate_gpu_free_bytes", gpu="0") == 2 * GiB
    assert value(found, "vramgate_gpu_reserve_bytes", gpu="0") == GiB // 2
    assert value(found, "vramgate_gpu_budget_bytes", gpu="0") == 3 * GiB // 2
    assert value(found, "vramgate_gpu_held_bytes", gpu="0", kind="ollama") == 19 * GiB  # two models
    assert value(found, "vramgate_gpu_held_bytes", gpu="0", kind="pending") == 2 * GiB
    assert value(found, "vramgate_gpu_held_bytes", gpu="0", kind="process") == GiB
    for kind in ("ollama", "pending", "process"):  # present at zero, so sums over kinds work
        assert value(found, "vramgate_gpu_held_bytes", gpu="1", kind=kind) == 0
    assert value(found, "vramgate_model_predicted_bytes", model="qwen3:32b") == 17 * GiB
    assert value(found, "vramgate_model_observed_bytes", model="qwen3:32b") == 18 * GiB
    assert value(found, "vramgate_model_observed_bytes", model=EVIL) == GiB  # label values are escaped
    assert ("vramgate_model_predicted_bytes", frozenset({("model", EVIL)})) not in found  # null: left out
    assert value(found, "vramgate_queue_length") == 1
    assert value(found, "vramgate_info", version="0.1.0", ollama_version="0.12.6") == 1


def test_the_snapshot_is_read_at_each_scrape() -> None:
    snapshot = status()
    metrics = Metrics(lambda: snapshot)
    snapshot["gpus"][0]["free_bytes"] = 5 * GiB
    snapshot["queue"] = []
    del snapshot["models"][0]
    found = samples(metrics)
    assert value(found, "vramgate_gpu_free_bytes", gpu="0") == 5 * GiB
    assert value(found, "vramgate_queue_length") == 0
    assert ("vramgate_model_observed_bytes", frozenset({("model", "qwen3:32b")})) not in found  # unloaded


def test_null_fields_are_left_out_not_zeroed() -> None:
    snapshot = status()
    snapshot["gpus"][0].update(free_bytes=None, budget_bytes=None)
    snapshot["queue"] = None
    found = samples(Metrics(lambda: snapshot))
    assert ("vramgate_gpu_free_bytes", frozenset({("gpu", "0")})) not in found
    assert ("vramgate_gpu_budget_bytes", frozenset({("gpu", "0")})) not in found
    assert value(found, "vramgate_gpu_reserve_bytes", gpu="0") == GiB // 2
    assert "vramgate_queue_length" not in names(found)


def test_no_snapshot_or_a_failing_one_still_serves_the_live_metrics() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("gate not started")

    for source in (None, lambda: None, broken):
        metrics = Metrics(source)
        metrics.stream_opened()
        found = samples(metrics)
        assert value(found, "vramgate_open_streams") == 1
        assert not any(name.startswith("vramgate_gpu_") for name in names(found))


def test_each_metrics_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()  # no "Duplicated timeseries" error
    first.decision("refused", "too_big", "/api/chat", "bob")
    assert not any(name.startswith("vramgate_decisions") for name in names(samples(second)))
    assert prometheus_client.REGISTRY.get_sample_value("vramgate_open_streams") is None


def test_render_gives_prometheus_text_and_its_content_type() -> None:
    body, content_type = Metrics(status).render()
    assert content_type == prometheus_client.CONTENT_TYPE_LATEST and content_type.startswith("text/plain")
    text = body.decode()
    assert "# TYPE vramgate_decisions_total counter" in text
    assert "# TYPE vramgate_gpu_total_bytes gauge" in text
    assert "# TYPE vramgate_upstream_ttfb_seconds histogram" in text
