"""Every Prometheus metric of the capture process, created on a registry the caller passes in."""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stream_worker.capture.layout import KINDS
from stream_worker.scoring.metrics import LATENCY_BUCKETS

#: ``capture_outcomes_total{result}``: decoded fine, refused, refused and dead-lettered (acked).
OUTCOME_RESULTS = ("valid", "invalid", "dead_lettered")
OUTCOME_REASONS = ("not_json", "not_object", "invalid_utf8", "too_large", "schema")


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        counter = functools.partial(Counter, registry=registry)
        gauge = functools.partial(Gauge, registry=registry)
        self.rows = counter("capture_rows", "Rows written to capture files, by kind", ["kind"])
        self.files = counter("capture_files", "Capture files written, by kind", ["kind"])
        self.flush_seconds = Histogram(
            "capture_flush_seconds",
            "Time to write the files of one flush",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.write_failures = counter(
            "capture_write_failures", "Files that could not be written (retried with backoff)"
        )
        self.outcomes = counter("capture_outcomes", "Outcome records by result", ["result"])
        self.outcome_rejections = counter(
            "capture_outcome_rejections", "Outcome records refused, by reason", ["reason"]
        )
        self.skipped_predictions = counter(
            "capture_skipped_predictions", "Prediction records that did not decode (skipped)"
        )
        self.commits = counter("capture_commits", "Offset commits by result", ["result"])
        self.buffered = gauge("capture_buffered_rows", "Rows buffered, not yet written")
        self.lag = gauge(
            "capture_lag",
            "Records not yet archived: fetch high watermark minus the first offset not in a file",
            ["topic", "partition"],
        )
        self.healthy = gauge("capture_healthy", "1 while writes succeed, 0 while they fail")
        for kind in KINDS:
            self.rows.labels(kind=kind)
            self.files.labels(kind=kind)
        for result in OUTCOME_RESULTS:
            self.outcomes.labels(result=result)
        for reason in OUTCOME_REASONS:
            self.outcome_rejections.labels(reason=reason)
        for result in ("success", "failure"):
            self.commits.labels(result=result)
        self.healthy.set(1)
