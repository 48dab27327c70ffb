"""System faults versus record faults: a failing model or drift step never blames the records.

The model failing on valid records: the batch is scored again by the model the fallback names
(the version the failed one replaced), or ScoringSystemError stops the worker; a failing drift
update: the predictions go out and drift is skipped for the batch. Records that fail
validation stay record faults: dead-lettered as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ScoringSystemError
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel
from trainer.model.bundle import ModelBundle, records_to_columns
from trainer.model.profile import ReferenceProfile


class FakeFallback:
    """Stands in for the model watcher: hands out ``replacement`` and records each call."""

    def __init__(self, replacement: LoadedModel | None) -> None:
        self.replacement = replacement
        self.calls: list[tuple[str, str]] = []

    def fall_back(self, failed: LoadedModel, reason: str) -> LoadedModel | None:
        self.calls.append((failed.version, reason))
        return self.replacement


@pytest.fixture
def metrics() -> ScorerMetrics:
    return ScorerMetrics(CollectorRegistry())


@pytest.fixture
def scorer(metrics: ScorerMetrics) -> BatchScorer:
    return BatchScorer(metrics, max_record_bytes=65536, drift_window=100)


def _model(bundle: ModelBundle, version: str, fallback: Any = None) -> LoadedModel:
    model = LoadedModel(bundle, "adult-income", version, f"run-{version}", "")
    return model if fallback is None else dataclasses.replace(model, fallback=fallback)


def _raising(bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch) -> ModelBundle:
    broken = dataclasses.replace(bundle)

    def boom(batch: Any) -> Any:
        raise RuntimeError("booster exploded")

    monkeypatch.setattr(broken, "predict_encoded", boom)
    return broken


def _records(
    applicants: list[dict[str, Any]], poison: bytes | None = b"not json"
) -> list[InputRecord]:
    values = [json.dumps(a).encode() for a in applicants]
    if poison is not None:
        values.insert(1, poison)
    now = time.time()
    return [InputRecord(b"k", v, now, "applicants", 0, 100 + i) for i, v in enumerate(values)]


def _sample(metrics: ScorerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_failing_model_falls_back_and_the_batch_is_scored_again(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    applicants = sample_applicants[:6]
    previous = _model(tiny_bundle, "1")
    fallback = FakeFallback(previous)
    failed = _model(_raising(tiny_bundle, monkeypatch), "2", fallback)
    result = scorer.process(failed, _records(applicants))

    assert fallback.calls == [("2", "RuntimeError: booster exploded")]
    preds = [json.loads(p.value) for p in result.predictions]
    assert [p["applicant_id"] for p in preds] == [a["applicant_id"] for a in applicants]
    assert {p["model_version"] for p in preds} == {"1"}
    np.testing.assert_array_equal(
        [p["probability"] for p in preds], tiny_bundle.predict(records_to_columns(applicants))
    )
    # the record fault stays a record fault; no valid record reaches the DLQ
    assert [d.value for d in result.dead_letters] == [b"not json"]
    assert _sample(metrics, "scorer_records_total", outcome="scored") == 6
    assert _sample(metrics, "scorer_records_total", outcome="invalid") == 1
    assert _sample(metrics, "scorer_records_total", outcome="error") == 0
    assert _sample(metrics, "scorer_dead_letters_total", reason="scoring_error") == 0
    assert scorer.drift_for(previous).observed == 6  # the window of the version that scored


def test_without_a_fallback_model_the_fault_stops_the_batch(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fallback = FakeFallback(None)
    failed = _model(_raising(tiny_bundle, monkeypatch), "1", fallback)
    with pytest.raises(ScoringSystemError, match="no other version"):
        scorer.process(failed, _records(sample_applicants[:3]))
    assert fallback.calls == [("1", "RuntimeError: booster exploded")]
    assert _sample(metrics, "scorer_records_total", outcome="invalid") == 0
    assert _sample(metrics, "scorer_dead_letters_total", reason="not_json") == 0


def test_a_fallback_that_fails_too_stops_the_batch(
    scorer: BatchScorer,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = _raising(tiny_bundle, monkeypatch)
    also_broken = _model(broken, "1", None)
    fallback = FakeFallback(also_broken)
    with pytest.raises(ScoringSystemError, match="version 1"):
        scorer.process(_model(broken, "2", fallback), _records(sample_applicants[:3]))
    assert fallback.calls == [("2", "RuntimeError: booster exploded")]


def test_a_fallback_that_hands_back_the_failed_model_does_not_loop(
    scorer: BatchScorer,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fallback = FakeFallback(None)
    failed = _model(_raising(tiny_bundle, monkeypatch), "2", fallback)
    fallback.replacement = failed
    with pytest.raises(ScoringSystemError):
        scorer.process(failed, _records(sample_applicants[:3]))
    assert len(fallback.calls) == 1


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_a_model_that_returns_non_finite_scores_has_failed(
    scorer: BatchScorer,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    bad: float,
) -> None:
    broken = dataclasses.replace(tiny_bundle)
    monkeypatch.setattr(broken, "predict_encoded", lambda batch: np.full(len(batch), bad))
    with pytest.raises(ScoringSystemError, match="not finite"):
        scorer.process(_model(broken, "2"), _records(sample_applicants[:3], poison=None))


def _misfit_profiles(profile: ReferenceProfile) -> dict[str, ReferenceProfile]:
    """Drift profiles that do not fit the encoder they ship with."""
    numeric = dict(profile.numeric_edges)
    del numeric["age"]
    categorical = dict(profile.categorical_props)
    categorical["native_country"] = categorical["native_country"][:2]
    return {
        "feature-missing": dataclasses.replace(profile, numeric_edges=numeric),
        "too-few-bins": dataclasses.replace(profile, categorical_props=categorical),
    }


@pytest.mark.parametrize("misfit", ["feature-missing", "too-few-bins"])
def test_a_drift_profile_that_does_not_fit_keeps_the_predictions(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
    misfit: str,
) -> None:
    bundle = dataclasses.replace(tiny_bundle, profile=_misfit_profiles(tiny_bundle.profile)[misfit])
    model = _model(bundle, "3")
    applicants = sample_applicants[:40]
    with caplog.at_level(logging.ERROR, logger="stream_worker.scoring.scorer"):
        result = scorer.process(model, _records(applicants))
        again = scorer.process(model, _records(applicants))

    for batch in (result, again):
        assert len(batch.predictions) == 40
        assert [d.value for d in batch.dead_letters] == [b"not json"]
        np.testing.assert_array_equal(
            batch.probabilities, tiny_bundle.predict(records_to_columns(applicants))
        )
    assert scorer.drift_failures == 2
    assert _sample(metrics, "scorer_records_total", outcome="scored") == 80
    assert _sample(metrics, "scorer_dead_letters_total", reason="scoring_error") == 0
    # logged once for the version, not once a batch
    drift_logs = [r for r in caplog.records if "drift update failed" in r.getMessage()]
    assert len(drift_logs) == 1
    assert "version 3" in drift_logs[0].getMessage()

    # a version whose profile fits gets a working drift window again
    healthy = _model(tiny_bundle, "4")
    scorer.process(healthy, _records(applicants))
    assert scorer.drift_failures == 2
    assert scorer.drift_for(healthy).observed == 40
