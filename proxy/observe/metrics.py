"""vramgate's Prometheus metrics: live instruments the relay and the gate update, plus GPU gauges.

Each ``Metrics`` owns its ``CollectorRegistry`` (never prometheus_client's global one), so tests and
several proxies in one process never see each other's numbers or clash on names.

Two kinds of numbers:

* events, counted as they happen (decisions, latencies, upstream errors, open streams): the hot
  path calls one method, which finds its pre-bound child in a dict and increments it;
* state (GPU memory, holders, resident models, queue length), read at scrape time from the latest
  status snapshot (``status``, a cheap callable) by a custom collector, so nothing has to keep a
  gauge in step with the gate, and a model that unloads simply stops being exported.

Labels are bounded (outcome, reason, route path, GPU index, holder kind, error kind) except the
model and user names, which the issue allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config.log_setup import get_logger

StatusSnapshot = Callable[[], Mapping[str, Any] | None]

# a decision is microseconds when everything is cached, up to seconds when /api/show is slow
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
# a queued load waits for another model to unload: seconds to the queue timeout (minutes)
QUEUE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# the first byte of an answer: milliseconds for /api/tags, minutes for a cold load of a large model
TTFB_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HOLDER_KINDS = ("ollama", "pending", "process")  # always exported per GPU (0 when none), so sums work
_log = get_logger("vramgate.metrics")


class Metrics:
    """The instruments of one proxy. All methods are cheap enough to call per request."""

    def __init__(self, status: StatusSnapshot | None = None) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._decisions = Counter("vramgate_decisions", "Gate decisions, by outcome, reason, route and user",
                                  ("outcome", "reason", "route", "user"), registry=reg)
        self._decision_seconds = Histogram("vramgate_decision_seconds", "Time the gate took to decide",
                                           buckets=DECISION_BUCKETS, registry=reg)
        self._queue_wait = Histogram("vramgate_queue_wait_seconds", "Time a load waited in the queue",
                                     buckets=QUEUE_BUCKETS, registry=reg)
        self._upstream_errors = Counter("vramgate_upstream_errors", "Failed exchanges with Ollama, by kind",
                                        ("kind",), registry=reg)
        self._ttfb = Histogram("vramgate_upstream_ttfb_seconds", "Time to Ollama's first response byte",
                               buckets=TTFB_BUCKETS, registry=reg)
        self._streams = Gauge("vramgate_open_streams", "Responses being streamed to clients now", registry=reg)
        self._decision_children: dict[tuple[str, str, str, str], Any] = {}
        self._error_children: dict[str, Any] = {}
        reg.register(StatusCollector(status or (lambda: None)))

    # --- events -----------------------------------------------------------------------------
    def decision(self, outcome: str, reason: str | None, route: str, user: str | None) -> None:
        """Count one decision. ``route`` is the API path (a bounded set); ``user`` "" when unknown."""
        key = (outcome, reason or "", route, user or "")
        child = self._decision_children.get(key)
        if child is None:
            child = self._decision_children[key] = self._decisions.labels(*key)
        child.inc()

    def decision_latency(self, seconds: float) -> None:
        self._decision_seconds.observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._queue_wait.observe(seconds)

    def upstream_error(self, kind: str) -> None:
        """Count a failed exchange with Ollama (e.g. unreachable, timeout, truncated)."""
        child = self._error_children.get(kind)
        if child is None:
            child = self._error_children[kind] = self._upstream_errors.labels(kind)
        child.inc()

    def ttfb(self, seconds: float) -> None:
        self._ttfb.observe(seconds)

    def stream_opened(self) -> None:
        self._streams.inc()

    def stream_closed(self) -> None:
        self._streams.dec()

    # --- exposition ---------------------------------------------------------------------------
    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class StatusCollector(Collector):
    """Gauges read from the status snapshot at scrape time; null fields are left out, not zeroed."""

    def __init__(self, status: StatusSnapshot) -> None:
        self._status = status

    def describe(self) -> Iterator[Metric]:
        """The families without samples: lets the registry check names once, at registration."""
        return iter(_families().values())

    def collect(self) -> Iterator[Metric]:
        try:
            status = self._status()
        except Exception as exc:  # a scrape must still return the live counters
            _log.warning("metrics.status_failed", error=repr(exc))
            status = None
        families = _families()
        if status is not None:
            _fill(families, status)
        return iter(families.values())


def _families() -> dict[str, GaugeMetricFamily]:
    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=labels)

    return {
        "info": gauge("vramgate_info", "vramgate and its Ollama's versions (always 1)",
                      ("version", "ollama_version")),
        "total": gauge("vramgate_gpu_total_bytes", "GPU memory in all", ("gpu", "name")),
        "free": gauge("vramgate_gpu_free_bytes", "GPU memory free, as the driver reports it", ("gpu",)),
        "reserve": gauge("vramgate_gpu_reserve_bytes", "GPU memory vramgate keeps back", ("gpu",)),
        "budget": gauge("vramgate_gpu_budget_bytes", "GPU memory a new load may use now", ("gpu",)),
        "held": gauge("vramgate_gpu_held_bytes", "GPU memory held, by kind of holder", ("gpu", "kind")),
        "predicted": gauge("vramgate_model_predicted_bytes", "A resident model's size as vramgate predicted it",
                           ("model",)),
        "observed": gauge("vramgate_model_observed_bytes", "A resident model's GPU memory as Ollama reports it",
                          ("model",)),
        "queue": gauge("vramgate_queue_length", "Loads waiting for room"),
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _fill(families: dict[str, GaugeMetricFamily], status: Mapping[str, Any]) -> None:
    families["info"].add_metric([str(status.get("vramgate_version") or ""), str(status.get("ollama_version") or "")],
                                1.0)
    for gpu in status.get("gpus") or ():
        index = str(gpu.get("index"))
        total = _number(gpu.get("total_bytes"))
        if total is not None:
            families["total"].add_metric([index, str(gpu.get("name") or "")], total)
        for key in ("free", "reserve", "budget"):
            value = _number(gpu.get(f"{key}_bytes"))
            if value is not None:
                families[key].add_metric([index], value)
        held = dict.fromkeys(HOLDER_KINDS, 0.0)
        for holder in gpu.get("holders") or ():
            kind = str(holder.get("kind") or "process")
            held[kind] = held.get(kind, 0.0) + (_number(holder.get("bytes")) or 0.0)
        for kind, value in held.items():
            families["held"].add_metric([index, kind], value)
    predicted: dict[str, float] = {}
    observed: dict[str, float] = {}
    for model in status.get("models") or ():  # keyed by name: one sample per label set, even if listed twice
        name = str(model.get("name") or "")
        for target, key in ((predicted, "predicted_bytes"), (observed, "size_vram_bytes")):
            value = _number(model.get(key))
            if value is not None:
                target[name] = value
    for name, value in predicted.items():
        families["predicted"].add_metric([name], value)
    for name, value in observed.items():
        families["observed"].add_metric([name], value)
    queue = status.get("queue")
    if isinstance(queue, list):
        families["queue"].add_metric([], float(len(queue)))
