"""Every Prometheus metric of the worker, created on a registry the caller passes in.

Histograms use millisecond-scale buckets (seconds-scale buckets put every sample in +Inf), and
batches are observed with one bucket count per batch instead of one call per record.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from trainer.model.columns import NEGATIVE_LABEL, POSITIVE_LABEL

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
SCORE_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))
OUTCOMES = ("scored", "invalid", "error")
DLQ_REASONS = ("not_json", "not_object", "invalid_utf8", "too_large", "schema", "scoring_error")
RELOAD_RESULTS = ("success", "failure")
# POST /predict: 200, 400 (the record would be dead-lettered), 503 (no model yet), 500.
HTTP_PREDICT_RESULTS = ("ok", "invalid", "unavailable", "error")


def observe_many(histogram: Histogram, values: npt.ArrayLike) -> None:
    """Add many observations at once: one bucket count per bucket, not one call per value.

    Relies on prometheus_client's per-bucket value objects (``_buckets``, ``_sum``), which
    have been stable for years; the result is identical to calling ``observe`` per value.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return
    upper = np.asarray(histogram._upper_bounds, dtype=np.float64)
    finite = arr[~np.isnan(arr)]  # like observe(nan): no bucket, but the sum becomes NaN
    idx = np.searchsorted(upper, finite, side="left")  # value <= bound goes in that bucket
    counts = np.bincount(idx, minlength=len(upper))
    for i in np.flatnonzero(counts):
        histogram._buckets[i].inc(float(counts[i]))
    histogram._sum.inc(float(arr.sum()))


class ScorerMetrics:
    """The metric contract of DESIGN.md, plus the model-loaded flag and consumer lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        counter = functools.partial(Counter, registry=registry)
        gauge = functools.partial(Gauge, registry=registry)
        histogram = functools.partial(Histogram, registry=registry)
        self.records = counter("scorer_records", "Input records by outcome", ["outcome"])
        self.predictions = counter("scorer_predictions", "Predictions emitted, by label", ["label"])
        self.event_latency = histogram(
            "scorer_event_latency_seconds",
            "Input record's Kafka timestamp to scoring",
            buckets=LATENCY_BUCKETS,
        )
        self.batch_size = histogram(
            "scorer_batch_size", "Records per micro-batch", buckets=BATCH_BUCKETS
        )
        self.inference = histogram(
            "scorer_inference_seconds",
            "Encode + predict time of one batch",
            buckets=LATENCY_BUCKETS,
        )
        self.score = histogram("scorer_score", "Predicted P(>50K)", buckets=SCORE_BUCKETS)
        # The PSI series are absent until the drift window holds enough records (set_drift,
        # clear_drift): an alert on them cannot fire from a handful of records.
        self.feature_psi = gauge(
            "scorer_feature_drift_psi",
            "PSI of a feature over the drift window against the training reference",
            ["feature"],
        )
        self.prediction_psi = OptionalGauge(
            "scorer_prediction_drift_psi",
            "PSI of the score distribution over the drift window against validation scores",
            registry,
        )
        self.drift_window_records = gauge(
            "scorer_drift_window_records",
            "Scored records in the drift window of the version in service",
        )
        self.model_info = gauge(
            "scorer_model_info",
            "The model version in service (value 1)",
            ["model_name", "model_version"],
        )
        self.model_loaded = gauge("scorer_model_loaded", "1 once a model serves, else 0")
        self.reloads = counter("scorer_model_reloads", "Model load attempts by result", ["result"])
        self.dead_letters = counter(
            "scorer_dead_letters", "Records sent to the DLQ, by reason", ["reason"]
        )
        self.unknown_categories = counter(
            "scorer_unknown_categories",
            "Categorical values that were missing or unseen in training (scored as missing)",
            ["feature"],
        )
        self.consumer_lag = gauge(
            "scorer_consumer_lag",
            "Fetch high watermark minus the next offset to process",
            ["topic", "partition"],
        )
        # POST /predict has its own figures: it never moves the stream's counters, latency
        # histogram or drift window.
        self.http_predict_requests = counter(
            "scorer_http_predict_requests", "POST /predict requests by result", ["result"]
        )
        self.http_predict_seconds = histogram(
            "scorer_http_predict_seconds",
            "Time to answer a POST /predict (decode, score, encode)",
            buckets=LATENCY_BUCKETS,
        )
        self._init_series()

    def _init_series(self) -> None:
        """Create every labelled series at zero so dashboards and alerts see them at once."""
        for outcome in OUTCOMES:
            self.records.labels(outcome=outcome)
        for label in (POSITIVE_LABEL, NEGATIVE_LABEL):
            self.predictions.labels(label=label)
        for reason in DLQ_REASONS:
            self.dead_letters.labels(reason=reason)
        for result in RELOAD_RESULTS:
            self.reloads.labels(result=result)
        for result in HTTP_PREDICT_RESULTS:
            self.http_predict_requests.labels(result=result)
        self.model_loaded.set(0)

    def set_model(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(model_name=name, model_version=version).set(1)
        self.model_loaded.set(1)

    def set_drift(self, feature_psi: Mapping[str, float], prediction_psi: float) -> None:
        for feature, value in feature_psi.items():
            self.feature_psi.labels(feature=feature).set(value)
        self.prediction_psi.set(prediction_psi)

    def clear_drift(self) -> None:
        """Remove every PSI series: the window holds too few records to say anything."""
        self.feature_psi.clear()
        self.prediction_psi.clear()

    def set_drift_window(self, records: int) -> None:
        self.drift_window_records.set(records)

    def count_dead_letters(self, reasons: Iterable[str]) -> None:
        tally: dict[str, int] = {}
        for reason in reasons:
            tally[reason] = tally.get(reason, 0) + 1
        for reason, n in tally.items():
            self.dead_letters.labels(reason=reason).inc(n)


class OptionalGauge(Collector):
    """A gauge without labels that has no sample until set, and none again once cleared.

    prometheus_client's ``Gauge`` without labels always exports a sample (0 before any
    ``set``); a PSI that is not known yet must be absent instead, not 0.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._value: float | None = None
        registry.register(self)

    @property
    def value(self) -> float | None:
        return self._value

    def set(self, value: float) -> None:
        self._value = float(value)

    def clear(self) -> None:
        self._value = None

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation)
        if self._value is not None:
            family.add_metric([], self._value)
        yield family
