"""Every Prometheus metric of the monitor, on a registry the caller passes in, and its HTTP views.

The per-version figures are rendered from the latest snapshot by a custom collector at scrape
time, so a version that leaves the capture leaves the exposition too (no stale gauges), and a
figure that is undefined (no labels yet, one class only) is absent rather than NaN. The label
delay is a histogram *of the current window*: its buckets can go down between scrapes, so read
it with ``histogram_quantile`` on the buckets themselves, never through ``rate()``.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from stream_worker.monitor.live import LiveSnapshot

log = logging.getLogger(__name__)

VERSION_LABELS = ("model_name", "model_version")
RUN_RESULTS = ("success", "failure")
#: ``scorer_live_estimated_accuracy{population}``: every record of the scored window, or
#: exactly the labelled window's records (to compare with ``scorer_live_accuracy``).
POPULATIONS = ("scored", "labelled")
#: Offline figure -> the trainer's MLflow metric it is read from (trainer/pipeline.py logs
#: ``test_*`` from trainer/evaluate.py; ``test_accuracy`` is at the version's threshold, as
#: the live accuracy is).
OFFLINE_METRICS = {"roc_auc": "test_roc_auc", "accuracy": "test_accuracy"}

VersionKey = tuple[str, str]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


class LiveCollector(Collector):
    """Renders the latest snapshot and the known offline metrics at each scrape."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot: LiveSnapshot | None = None
        self._offline: dict[VersionKey, dict[str, float]] = {}

    def update(
        self, snapshot: LiveSnapshot, offline: Mapping[VersionKey, Mapping[str, float]]
    ) -> None:
        with self._lock:
            self._snapshot = snapshot
            self._offline = {key: dict(values) for key, values in offline.items()}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # families depend on the snapshot; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snapshot, offline = self._snapshot, self._offline
        if snapshot is None:
            return
        yield from self._live(snapshot)
        yield from self._offline_families(snapshot, offline)
        yield from self._health(snapshot)

    def _live(self, snapshot: LiveSnapshot) -> Iterator[Metric]:
        labels = list(VERSION_LABELS)

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=[*labels, *extra])

        window = f"newest {snapshot.window.records} labelled in {snapshot.window.hours:g} h"
        roc = gauge("scorer_live_roc_auc", f"ROC-AUC over the labelled window ({window})")
        logloss = gauge("scorer_live_log_loss", "Log loss over the labelled window")
        brier = gauge("scorer_live_brier", "Brier score over the labelled window")
        accuracy = gauge(
            "scorer_live_accuracy", "Accuracy at the version's threshold, labelled window"
        )
        ece = gauge(
            "scorer_live_calibration_error",
            "Expected calibration error (10 equal-width bins), labelled window",
        )
        labelled = gauge("scorer_live_labelled_records", "Records in the labelled window")
        scored = gauge("scorer_live_scored_records", "Predictions in the scored window")
        coverage = gauge(
            "scorer_live_label_coverage", "Share of the scored window's records labelled by now"
        )
        estimated = gauge(
            "scorer_live_estimated_accuracy",
            "Confidence-based accuracy estimate (CBPE): population=scored is every record of "
            "the scored window, population=labelled the labelled window's records",
            ("population",),
        )
        delay = HistogramMetricFamily(
            "scorer_live_label_delay_seconds",
            "Outcome arrival minus scored_at over the labelled window (a window, not a "
            "running total: use histogram_quantile without rate)",
            labels=labels,
        )
        last_label = gauge(
            "scorer_live_last_label_timestamp_seconds",
            "Arrival time of the version's newest outcome in the capture",
        )
        for v in snapshot.versions:
            key = [v.model_name, v.model_version]
            scored.add_metric(key, v.scored)
            if _finite(v.estimated_accuracy):
                estimated.add_metric([*key, "scored"], v.estimated_accuracy)
            perf = v.performance
            if perf is None:  # never labelled: estimated accuracy and scored count only
                continue
            labelled.add_metric(key, perf.records)
            if v.scored:
                coverage.add_metric(key, v.label_coverage)
            for family, value in (
                (roc, perf.roc_auc),
                (logloss, perf.log_loss),
                (brier, perf.brier),
                (accuracy, perf.accuracy),
                (ece, perf.calibration_error),
            ):
                if _finite(value):
                    family.add_metric(key, value)
            if _finite(perf.estimated_accuracy):
                estimated.add_metric([*key, "labelled"], perf.estimated_accuracy)
            if v.label_delay is not None:
                hist = v.label_delay
                buckets = [
                    (floatToGoString(b), float(c))
                    for b, c in zip(hist.bounds, hist.cumulative, strict=True)
                ]
                buckets.append(("+Inf", float(hist.count)))
                delay.add_metric(key, buckets, sum_value=hist.total_seconds)
            if v.last_label_at is not None:
                last_label.add_metric(key, v.last_label_at)
        yield from (roc, logloss, brier, accuracy, ece, labelled, scored, coverage, estimated)
        yield from (delay, last_label)

    def _offline_families(
        self, snapshot: LiveSnapshot, offline: Mapping[VersionKey, Mapping[str, float]]
    ) -> Iterator[Metric]:
        families = {
            figure: GaugeMetricFamily(
                f"scorer_offline_{figure}",
                f"{source} of the version on the official test split (MLflow)",
                labels=list(VERSION_LABELS),
            )
            for figure, source in OFFLINE_METRICS.items()
        }
        for v in snapshot.versions:
            known = offline.get((v.model_name, v.model_version), {})
            for figure, family in families.items():
                value = known.get(figure)
                if value is not None and math.isfinite(value):
                    family.add_metric([v.model_name, v.model_version], value)
        yield from families.values()

    def _health(self, snapshot: LiveSnapshot) -> Iterator[Metric]:
        health = snapshot.health
        yield GaugeMetricFamily(
            "scorer_capture_duplicate_outcomes",
            "Outcome records superseded by a later one for the same applicant",
            value=health.duplicate_outcomes,
        )
        yield GaugeMetricFamily(
            "scorer_capture_unmatched_outcomes",
            "Outcomes whose prediction is not in the capture (yet)",
            value=health.unmatched_outcomes,
        )
        yield CounterMetricFamily(
            "scorer_capture_unreadable_files",
            "Capture files skipped as unreadable (corrupt, truncated)",
            value=len(health.unreadable_files),
        )


class MonitorMetrics:
    """The monitor's metric contract on ``registry``; ``collector`` holds the snapshot."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.collector = LiveCollector()
        registry.register(self.collector)
        self.runs = Counter(
            "scorer_monitor_runs", "Recomputations by result", ["result"], registry=registry
        )
        for result in RUN_RESULTS:
            self.runs.labels(result=result)
        self.last_success = Gauge(
            "scorer_monitor_last_success_timestamp_seconds",
            "When a recomputation last succeeded",
            registry=registry,
        )
        self.last_duration = Gauge(
            "scorer_monitor_last_duration_seconds",
            "How long the last successful recomputation took",
            registry=registry,
        )

    def succeeded(
        self, snapshot: LiveSnapshot, offline: Mapping[VersionKey, Mapping[str, float]]
    ) -> None:
        self.collector.update(snapshot, offline)
        self.runs.labels(result="success").inc()
        self.last_success.set(snapshot.computed_at.timestamp())
        self.last_duration.set(snapshot.seconds)

    def failed(self) -> None:
        self.runs.labels(result="failure").inc()


HealthCheck = Callable[[], tuple[bool, dict[str, Any]]]


def serve_http(
    registry: CollectorRegistry, health: HealthCheck, host: str, port: int
) -> ThreadingHTTPServer:
    """``GET /metrics`` and ``GET /health`` (200 or 503 with the reason) on ``host:port``.

    The server runs in a daemon thread; ``shutdown()`` stops it.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
            elif path == "/health":
                ok, body = health()
                self._send(200 if ok else 503, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", self.address_string(), format % args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="monitor-http", daemon=True).start()
    return server
