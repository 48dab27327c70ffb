"""BatchScorer.process: predictions, dead letters, metrics and drift for one micro-batch."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
import numpy as np
import pytest
import xgboost as xgb
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ScoringSystemError
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import (
    BatchScorer,
    DeadLetter,
    InputRecord,
    LoadedModel,
    OutputRecord,
)
from trainer.model.bundle import ModelBundle, records_to_columns
from trainer.model.columns import CATEGORICAL_COLUMNS, FEATURE_COLUMNS

TOPIC = "applicants"
PARTITION = 3
DLQ_HEADERS = ["error_class", "error_reason", "source_topic", "source_partition", "source_offset"]


@pytest.fixture
def metrics() -> ScorerMetrics:
    return ScorerMetrics(CollectorRegistry())


@pytest.fixture
def scorer(metrics: ScorerMetrics) -> BatchScorer:
    return BatchScorer(metrics, max_record_bytes=65536, drift_window=100, drift_min_records=50)


def _loaded(bundle: ModelBundle, version: str = "1") -> LoadedModel:
    return LoadedModel(
        bundle, "adult-income", version, f"run-{version}", "2024-01-01T00:00:00+00:00"
    )


@pytest.fixture
def model(tiny_bundle: ModelBundle) -> LoadedModel:
    return _loaded(tiny_bundle)


def _inputs(
    values: Sequence[bytes | None], timestamp: float, keys: Sequence[bytes | None] | None = None
) -> list[InputRecord]:
    keys = keys or [f"key-{i}".encode() for i in range(len(values))]
    return [
        InputRecord(k, v, timestamp, TOPIC, PARTITION, 1000 + i)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]


def _valid(applicants: list[dict[str, Any]]) -> list[InputRecord]:
    return _inputs(
        [json.dumps(a).encode() for a in applicants],
        time.time() - 0.25,
        keys=[a["applicant_id"].encode() for a in applicants],
    )


def _sample(metrics: ScorerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def _headers(record: OutputRecord | DeadLetter) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers}


def test_one_prediction_per_valid_record_with_the_contract_fields(
    scorer: BatchScorer, model: LoadedModel, sample_applicants: list[dict[str, Any]]
) -> None:
    applicants = sample_applicants[:50]
    before = time.time()
    result = scorer.process(model, _valid(applicants))
    after = time.time()
    assert result.dead_letters == []
    assert len(result.predictions) == len(applicants)
    for applicant, out in zip(applicants, result.predictions, strict=True):
        pred = json.loads(out.value)
        assert set(pred) == {
            "applicant_id",
            "probability",
            "label",
            "threshold",
            "model_name",
            "model_version",
            "scored_at",
            "latency_ms",
        }
        assert out.key == applicant["applicant_id"].encode()
        assert pred["applicant_id"] == applicant["applicant_id"]
        assert 0.0 <= pred["probability"] <= 1.0
        assert pred["threshold"] == 0.5
        assert pred["label"] == (">50K" if pred["probability"] >= 0.5 else "<=50K")
        assert pred["model_name"] == "adult-income"
        assert pred["model_version"] == "1"
        scored_at = datetime.fromisoformat(pred["scored_at"])
        assert scored_at.utcoffset() == timedelta(0)  # UTC, and says so
        assert before - 0.001 <= scored_at.timestamp() <= after + 0.001
        # the records were stamped 250 ms before processing started
        assert 250.0 <= pred["latency_ms"] <= 250.0 + (after - before) * 1000.0 + 1.0
    labels = {json.loads(p.value)["label"] for p in result.predictions}
    assert labels == {">50K", "<=50K"}  # the tiny model is not constant


def test_batch_probabilities_equal_the_offline_bundle_predict(
    scorer: BatchScorer, model: LoadedModel, sample_applicants: list[dict[str, Any]]
) -> None:
    result = scorer.process(model, _valid(sample_applicants))
    offline = model.bundle.predict(records_to_columns(sample_applicants))
    streamed = np.asarray([json.loads(p.value)["probability"] for p in result.predictions])
    np.testing.assert_array_equal(result.probabilities, offline)
    np.testing.assert_array_equal(streamed, offline)  # JSON round trip loses nothing


def test_uci_aliases_score_the_same_as_snake_case(
    scorer: BatchScorer, model: LoadedModel, sample_applicants: list[dict[str, Any]]
) -> None:
    snake = sample_applicants[:20]
    uci = [
        {k.replace("_", "-") if k != "applicant_id" else k: v for k, v in a.items()} for a in snake
    ]
    got = scorer.process(model, _valid(uci)).probabilities
    np.testing.assert_array_equal(got, model.bundle.predict(records_to_columns(snake)))


def test_question_mark_null_and_unseen_categories_score_alike_and_are_counted(
    scorer: BatchScorer, metrics: ScorerMetrics, model: LoadedModel
) -> None:
    base = {
        "applicant_id": "x",
        "age": 45,
        "fnlwgt": 200000,
        "education_num": 13,
        "capital_gain": 0,
        "capital_loss": 0,
        "hours_per_week": 50,
    }
    values = [
        {**base, **{c: "?" for c in CATEGORICAL_COLUMNS}},
        {**base, **{c: None for c in CATEGORICAL_COLUMNS}},
        {**base, **{c: "never-seen" for c in CATEGORICAL_COLUMNS}},
        base,
    ]
    result = scorer.process(model, _valid(values))
    assert len(result.predictions) == 4
    assert np.ptp(result.probabilities) == 0.0
    for col in CATEGORICAL_COLUMNS:
        assert _sample(metrics, "scorer_unknown_categories_total", feature=col) == 4


def test_dead_letters_keep_bytes_key_and_carry_reason_headers(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    model: LoadedModel,
    sample_applicants: list[dict[str, Any]],
) -> None:
    good = [json.dumps(a).encode() for a in sample_applicants[:3]]
    bad_age = json.dumps({**sample_applicants[3], "age": "35"}).encode()
    values: list[bytes | None] = [b"{oops", good[0], b"[1, 2]", good[1], bad_age, None, good[2]]
    keys: list[bytes | None] = [b"k0", b"k1", None, b"k3", b"k4", b"k5", b"k6"]
    result = scorer.process(model, _inputs(values, time.time(), keys))

    assert [p.key for p in result.predictions] == [
        a["applicant_id"].encode() for a in sample_applicants[:3]
    ]
    assert [d.value for d in result.dead_letters] == [b"{oops", b"[1, 2]", bad_age, None]
    assert [d.key for d in result.dead_letters] == [b"k0", None, b"k4", b"k5"]
    headers = [_headers(d) for d in result.dead_letters]
    for h in headers:
        assert list(h) == DLQ_HEADERS
        assert h["source_topic"] == TOPIC
        assert h["source_partition"] == str(PARTITION)
        assert h["error_reason"]
    assert [h["source_offset"] for h in headers] == ["1000", "1002", "1004", "1005"]
    assert [h["error_class"] for h in headers] == [
        "JSONDecodeError",
        "NotAnObject",
        "ValidationError",
        "EmptyValue",
    ]
    assert "age" in headers[2]["error_reason"]
    assert [r.reason for r in result.rejections] == ["not_json", "not_object", "schema", "not_json"]


def test_metrics_move_by_the_right_amounts(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    model: LoadedModel,
    sample_applicants: list[dict[str, Any]],
) -> None:
    applicants = sample_applicants[:40]
    values = [json.dumps(a).encode() for a in applicants] + [b"nope", b"7", b"x" * 70_000]
    for _ in range(2):
        result = scorer.process(model, _inputs(values, time.time()))
    positives = int((result.probabilities >= 0.5).sum())
    assert 0 < positives < 40
    assert _sample(metrics, "scorer_records_total", outcome="scored") == 80
    assert _sample(metrics, "scorer_records_total", outcome="invalid") == 6
    assert _sample(metrics, "scorer_records_total", outcome="error") == 0
    assert _sample(metrics, "scorer_predictions_total", label=">50K") == 2 * positives
    assert _sample(metrics, "scorer_predictions_total", label="<=50K") == 2 * (40 - positives)
    assert _sample(metrics, "scorer_dead_letters_total", reason="not_json") == 2
    assert _sample(metrics, "scorer_dead_letters_total", reason="not_object") == 2
    assert _sample(metrics, "scorer_dead_letters_total", reason="too_large") == 2
    assert _sample(metrics, "scorer_dead_letters_total", reason="schema") == 0
    assert _sample(metrics, "scorer_score_count") == 80
    assert _sample(metrics, "scorer_score_sum") == pytest.approx(2 * result.probabilities.sum())
    assert _sample(metrics, "scorer_event_latency_seconds_count") == 80
    assert _sample(metrics, "scorer_inference_seconds_count") == 2
    psi = scorer.drift_for(model).feature_psi()
    assert _sample(metrics, "scorer_feature_drift_psi", feature="age") == psi["age"]
    assert (
        _sample(metrics, "scorer_prediction_drift_psi") == scorer.drift_for(model).prediction_psi()
    )


def test_a_batch_of_only_bad_records_runs_no_inference(
    scorer: BatchScorer, metrics: ScorerMetrics, model: LoadedModel
) -> None:
    result = scorer.process(model, _inputs([b"", b"[]"], time.time()))
    assert result.predictions == []
    assert len(result.dead_letters) == 2
    assert result.probabilities.size == 0
    assert _sample(metrics, "scorer_inference_seconds_count") == 0
    assert _sample(metrics, "scorer_records_total", outcome="invalid") == 2


def test_an_empty_batch_changes_nothing(
    scorer: BatchScorer, metrics: ScorerMetrics, model: LoadedModel
) -> None:
    result = scorer.process(model, [])
    assert result.predictions == []
    assert result.dead_letters == []
    for outcome in ("scored", "invalid", "error"):
        assert _sample(metrics, "scorer_records_total", outcome=outcome) == 0


def _boom(batch: Any) -> Any:
    raise RuntimeError("booster exploded")


def _counts(metrics: ScorerMetrics) -> dict[str, float]:
    names = [("scorer_records_total", {"outcome": o}) for o in ("scored", "invalid", "error")]
    names += [("scorer_dead_letters_total", {"reason": r}) for r in ("not_json", "scoring_error")]
    names += [("scorer_score_count", {}), ("scorer_inference_seconds_count", {})]
    return {f"{n}{labels}": _sample(metrics, n, **labels) for n, labels in names}


def test_a_failing_booster_dead_letters_nothing_and_raises(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A system fault is not the records' fault: no dead letter, nothing counted, and an
    exception the loop lets through, so the batch is neither acknowledged nor committed."""
    broken = dataclasses.replace(tiny_bundle)
    monkeypatch.setattr(broken, "predict_encoded", _boom)
    good = [json.dumps(a).encode() for a in sample_applicants[:5]]
    values: list[bytes | None] = [good[0], b"not json", *good[1:]]
    before = _counts(metrics)
    with pytest.raises(ScoringSystemError, match="booster exploded") as raised:
        scorer.process(_loaded(broken, "2"), _inputs(values, time.time()))
    assert "version 2" in str(raised.value)
    assert isinstance(raised.value.__cause__, RuntimeError)
    assert _counts(metrics) == before  # the invalid record is not counted either: it comes back


def test_a_booster_with_the_wrong_feature_count_is_a_system_fault(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
) -> None:
    rng = np.random.default_rng(0)
    wrong = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(rng.random((50, 3)), label=rng.integers(0, 2, 50)),
        num_boost_round=2,
    )
    broken = dataclasses.replace(tiny_bundle, booster=wrong)
    with pytest.raises(ScoringSystemError, match="shape mismatch"):
        scorer.process(_loaded(broken, "9"), _valid(sample_applicants[:4]))
    assert _sample(metrics, "scorer_dead_letters_total", reason="scoring_error") == 0
    # the same scorer keeps working once a healthy model is back
    healthy = scorer.process(_loaded(tiny_bundle, "1"), _valid(sample_applicants[:4]))
    assert len(healthy.predictions) == 4


def test_a_new_model_version_resets_the_drift_window(
    scorer: BatchScorer, tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    v1 = _loaded(tiny_bundle, "1")
    scorer.process(v1, _valid(sample_applicants[:30]))
    first = scorer.drift_for(v1)
    scorer.process(_loaded(tiny_bundle, "1"), _valid(sample_applicants[30:50]))
    assert scorer.drift_for(v1) is first  # same version, new LoadedModel: same window
    assert first.observed == 50

    v2 = _loaded(tiny_bundle, "2")
    scorer.process(v2, _valid(sample_applicants[50:60]))
    second = scorer.drift_for(v2)
    assert second is not first
    assert second.observed == 10


def test_predictions_round_trip_through_msgspec(
    scorer: BatchScorer, model: LoadedModel, sample_applicants: list[dict[str, Any]]
) -> None:
    """Consumers may decode with any JSON library; the value is a plain JSON object."""
    out = scorer.process(model, _valid(sample_applicants[:1])).predictions[0]
    decoded = msgspec.json.decode(out.value)
    assert isinstance(decoded, dict)
    assert decoded["applicant_id"] == sample_applicants[0]["applicant_id"]
    assert set(FEATURE_COLUMNS).isdisjoint(decoded)


def test_invalid_utf8_inside_a_string_does_not_stop_the_batch(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    model: LoadedModel,
    sample_applicants: list[dict[str, Any]],
) -> None:
    """The issue's poison-record list includes invalid UTF-8: it must reach the DLQ."""
    poison = json.dumps({**sample_applicants[1], "occupation": "PLACEHOLDER"}).encode()
    poison = poison.replace(b"PLACEHOLDER", b"\xff\xfe")
    values = [
        json.dumps(sample_applicants[0]).encode(),
        poison,
        json.dumps(sample_applicants[2]).encode(),
    ]
    result = scorer.process(model, _inputs(values, time.time()))
    assert len(result.predictions) == 2
    assert [d.value for d in result.dead_letters] == [poison]
    assert _sample(metrics, "scorer_dead_letters_total", reason="invalid_utf8") == 1
