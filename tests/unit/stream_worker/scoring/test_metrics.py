"""Worker metrics: batch observation equals per-value observation; every series exists at 0."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from stream_worker.scoring.metrics import (
    DLQ_REASONS,
    HTTP_PREDICT_RESULTS,
    LATENCY_BUCKETS,
    OUTCOMES,
    RELOAD_RESULTS,
    SCORE_BUCKETS,
    ScorerMetrics,
    observe_many,
)
from trainer.model.columns import FEATURE_COLUMNS


def _twin(buckets: tuple[float, ...]) -> tuple[Histogram, CollectorRegistry]:
    registry = CollectorRegistry()
    return Histogram("twin_seconds", "a twin", buckets=buckets, registry=registry), registry


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _values(name: str) -> np.ndarray:
    rng = np.random.default_rng(7)
    if name == "latency":
        # ms-scale latencies, exact bucket bounds, zero and beyond the last bound
        return np.concatenate(
            [rng.exponential(0.02, 500), np.asarray(LATENCY_BUCKETS), [0.0, 11.0, 1e6]]
        )
    if name == "scores":
        return np.concatenate([rng.random(500), np.asarray(SCORE_BUCKETS), [0.0, 1.0]])
    return np.asarray([], dtype=np.float64)


@pytest.mark.parametrize(
    ("buckets", "values"),
    [
        (LATENCY_BUCKETS, "latency"),
        (SCORE_BUCKETS, "scores"),
        (LATENCY_BUCKETS, "empty"),
    ],
)
def test_observe_many_matches_per_value_observe(buckets: tuple[float, ...], values: str) -> None:
    batch, batch_registry = _twin(buckets)
    single, single_registry = _twin(buckets)
    data = _values(values)
    # in two calls, to check observations accumulate
    observe_many(batch, data[: len(data) // 2])
    observe_many(batch, data[len(data) // 2 :])
    for v in data.tolist():
        single.observe(v)
    got, want = _samples(batch_registry), _samples(single_registry)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert got[("twin_seconds_count", ())] == len(data)
    exposition = generate_latest(batch_registry).decode().splitlines()
    bucket_lines = [ln for ln in exposition if ln.startswith("twin_seconds_bucket{")]
    assert len(bucket_lines) == len(buckets) + 1  # every bound plus +Inf


def test_observe_many_puts_a_value_on_a_bound_in_that_bucket() -> None:
    hist, registry = _twin((1.0, 2.0))
    observe_many(hist, [1.0, 2.0, 2.0000001])
    samples = _samples(registry)
    assert samples[("twin_seconds_bucket", (("le", "1.0"),))] == 1
    assert samples[("twin_seconds_bucket", (("le", "2.0"),))] == 2
    assert samples[("twin_seconds_bucket", (("le", "+Inf"),))] == 3
    assert samples[("twin_seconds_sum", ())] == pytest.approx(5.0000001)


def test_observe_many_with_nan_matches_observe() -> None:
    """``observe(nan)`` adds NaN to the sum and to no bucket; observe_many must not raise
    (searchsorted puts NaN past +Inf, an index with no bucket) nor half-update the histogram."""
    batch, batch_registry = _twin((1.0,))
    single, single_registry = _twin((1.0,))
    data = [0.5, float("nan"), 2.0]
    observe_many(batch, data)
    for v in data:
        single.observe(v)
    got, want = _samples(batch_registry), _samples(single_registry)
    for key in want:
        if key[0].endswith("_sum"):
            assert np.isnan(got[key])
        else:
            assert got[key] == want[key], key


@pytest.fixture
def metrics() -> ScorerMetrics:
    return ScorerMetrics(CollectorRegistry())


def _scrape(metrics: ScorerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_every_labelled_series_exists_at_zero(metrics: ScorerMetrics) -> None:
    text = _scrape(metrics)
    lines = set(text.splitlines())
    assert 'scorer_dead_letters_total{reason="schema"} 0.0' in lines
    for reason in DLQ_REASONS:
        assert f'scorer_dead_letters_total{{reason="{reason}"}} 0.0' in lines
    for outcome in OUTCOMES:
        assert f'scorer_records_total{{outcome="{outcome}"}} 0.0' in lines
    for label in (">50K", "<=50K"):
        assert f'scorer_predictions_total{{label="{label}"}} 0.0' in lines
    for result in RELOAD_RESULTS:
        assert f'scorer_model_reloads_total{{result="{result}"}} 0.0' in lines
    for result in HTTP_PREDICT_RESULTS:
        assert f'scorer_http_predict_requests_total{{result="{result}"}} 0.0' in lines
    assert "scorer_http_predict_seconds_count 0.0" in lines
    assert "scorer_model_loaded 0.0" in lines
    assert "scorer_event_latency_seconds_count 0.0" in lines
    assert "scorer_model_info{" not in text  # no model yet


def test_psi_series_are_absent_until_set_and_again_once_cleared(metrics: ScorerMetrics) -> None:
    """No PSI is known before the drift window holds enough records: absent, not 0."""

    def psi_lines() -> list[str]:
        return [ln for ln in _scrape(metrics).splitlines() if "_drift_psi" in ln and ln[0] != "#"]

    assert psi_lines() == []
    assert "scorer_drift_window_records 0.0" in _scrape(metrics).splitlines()
    metrics.set_drift({f: 0.01 for f in FEATURE_COLUMNS}, 0.02)
    metrics.set_drift_window(1200)
    assert len(psi_lines()) == len(FEATURE_COLUMNS) + 1
    assert metrics.prediction_psi.value == 0.02
    metrics.clear_drift()
    assert psi_lines() == []
    assert metrics.prediction_psi.value is None
    assert "scorer_drift_window_records 1200.0" in _scrape(metrics).splitlines()
    # the families stay declared, so a scrape still says what they are
    assert "# TYPE scorer_prediction_drift_psi gauge" in _scrape(metrics)


@pytest.mark.parametrize(
    "name",
    ["scorer_event_latency_seconds", "scorer_inference_seconds", "scorer_http_predict_seconds"],
)
def test_latency_histograms_have_millisecond_buckets(metrics: ScorerMetrics, name: str) -> None:
    text = _scrape(metrics)
    assert f'{name}_bucket{{le="0.001"}} 0.0' in text
    assert f'{name}_bucket{{le="0.005"}} 0.0' in text


def test_set_model_keeps_exactly_one_model_info_series(metrics: ScorerMetrics) -> None:
    metrics.set_model("adult-income", "1")
    metrics.set_model("adult-income", "2")
    metrics.set_model("adult-income", "3")
    text = _scrape(metrics)
    info = [ln for ln in text.splitlines() if ln.startswith("scorer_model_info{")]
    assert info == ['scorer_model_info{model_name="adult-income",model_version="3"} 1.0']
    assert "scorer_model_loaded 1.0" in text.splitlines()


def test_count_dead_letters_tallies_by_reason(metrics: ScorerMetrics) -> None:
    metrics.count_dead_letters(["schema", "not_json", "schema", "too_large", "schema"])
    lines = set(_scrape(metrics).splitlines())
    assert 'scorer_dead_letters_total{reason="schema"} 3.0' in lines
    assert 'scorer_dead_letters_total{reason="not_json"} 1.0' in lines
    assert 'scorer_dead_letters_total{reason="too_large"} 1.0' in lines
    assert 'scorer_dead_letters_total{reason="invalid_utf8"} 0.0' in lines


def test_set_drift_sets_the_gauges(metrics: ScorerMetrics) -> None:
    metrics.set_drift({"age": 0.31, "sex": 0.0}, 0.12)
    lines = set(_scrape(metrics).splitlines())
    assert 'scorer_feature_drift_psi{feature="age"} 0.31' in lines
    assert "scorer_prediction_drift_psi 0.12" in lines


def test_metrics_touch_only_the_registry_passed_in() -> None:
    """Nothing lands on prometheus_client's process-wide registry (tests, bench, two apps)."""
    from prometheus_client import REGISTRY

    def scorer_names() -> set[str]:
        return {f.name for f in REGISTRY.collect() if f.name.startswith("scorer_")}

    before = scorer_names()
    metrics = ScorerMetrics(CollectorRegistry())
    metrics.set_model("adult-income", "1")
    metrics.records.labels(outcome="scored").inc(5)
    assert scorer_names() == before == set()
    assert 'scorer_records_total{outcome="scored"} 5.0' in _scrape(metrics)
