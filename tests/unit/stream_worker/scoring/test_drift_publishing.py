"""PSI is published only from a drift window with enough records; its size is a gauge.

The window starts empty on every model version (and on a worker start), so a promotion at low
traffic would otherwise publish PSI from a handful of records and fire ``FeatureDrift``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel
from stream_worker.settings import WorkerSettings
from trainer.model.bundle import ModelBundle
from trainer.model.columns import FEATURE_COLUMNS

WINDOW, MIN_RECORDS = 100, 40


def _loaded(bundle: ModelBundle, version: str) -> LoadedModel:
    return LoadedModel(bundle, "adult-income", version, f"run-{version}", "2024-01-01T00:00:00")


def _records(applicants: list[dict[str, Any]]) -> list[InputRecord]:
    now = time.time()
    return [
        InputRecord(a["applicant_id"].encode(), json.dumps(a).encode(), now, "applicants", 0, i)
        for i, a in enumerate(applicants)
    ]


class Scrape:
    def __init__(self, metrics: ScorerMetrics) -> None:
        self.get = metrics.registry.get_sample_value

    def feature_psi(self) -> dict[str, float | None]:
        return {f: self.get("scorer_feature_drift_psi", {"feature": f}) for f in FEATURE_COLUMNS}

    def prediction_psi(self) -> float | None:
        return self.get("scorer_prediction_drift_psi")

    def window(self) -> float | None:
        return self.get("scorer_drift_window_records")


@pytest.fixture
def metrics() -> ScorerMetrics:
    return ScorerMetrics(CollectorRegistry())


@pytest.fixture
def scorer(metrics: ScorerMetrics) -> BatchScorer:
    return BatchScorer(metrics, 65536, WINDOW, drift_min_records=MIN_RECORDS)


def test_psi_appears_once_the_window_holds_the_minimum(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
) -> None:
    scrape, v1 = Scrape(metrics), _loaded(tiny_bundle, "1")
    assert scrape.window() == 0
    assert set(scrape.feature_psi().values()) == {None}  # before any record: nothing known
    assert scrape.prediction_psi() is None
    scorer.process(v1, _records(sample_applicants[: MIN_RECORDS - 1]))
    assert scrape.window() == MIN_RECORDS - 1
    assert set(scrape.feature_psi().values()) == {None}
    assert scrape.prediction_psi() is None
    scorer.process(v1, _records(sample_applicants[MIN_RECORDS - 1 : MIN_RECORDS]))
    assert scrape.window() == MIN_RECORDS
    drift = scorer.drift_for(v1)
    assert scrape.feature_psi() == drift.feature_psi()
    assert scrape.prediction_psi() == drift.prediction_psi()
    scorer.process(v1, _records(sample_applicants[MIN_RECORDS : 3 * WINDOW]))
    assert scrape.window() == WINDOW  # a full window stays full
    assert scrape.feature_psi() == scorer.drift_for(v1).feature_psi()


def test_a_promotion_publishes_no_psi_from_a_handful_of_records(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
) -> None:
    """Right after a swap, five 90-year-olds would read as an age PSI far above 0.2."""
    scrape = Scrape(metrics)
    scorer.process(_loaded(tiny_bundle, "1"), _records(sample_applicants[:WINDOW]))
    assert all(v is not None and v < 0.5 for v in scrape.feature_psi().values())
    v2 = _loaded(tiny_bundle, "2")
    old = [{**a, "age": 90} for a in sample_applicants[WINDOW : WINDOW + 5]]
    scorer.process(v2, _records(old))
    assert scorer.drift_for(v2).feature_psi()["age"] > 0.2  # what used to be published
    assert set(scrape.feature_psi().values()) == {None}
    assert scrape.prediction_psi() is None
    assert scrape.window() == 5
    rest = sample_applicants[WINDOW + 5 : WINDOW + MIN_RECORDS]
    scorer.process(v2, _records(rest))
    assert scrape.window() == MIN_RECORDS
    assert scrape.feature_psi() == scorer.drift_for(v2).feature_psi()  # v2's window only


def test_a_swap_without_traffic_withdraws_the_old_versions_psi(
    scorer: BatchScorer,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    sample_applicants: list[dict[str, Any]],
) -> None:
    """The PSI of v1's window does not describe v2: it goes when v2's window starts."""
    scrape = Scrape(metrics)
    scorer.process(_loaded(tiny_bundle, "1"), _records(sample_applicants[:WINDOW]))
    assert scrape.prediction_psi() is not None
    scorer.drift_for(_loaded(tiny_bundle, "2"))  # the first batch of v2 starts its window
    assert scrape.prediction_psi() is None
    assert set(scrape.feature_psi().values()) == {None}
    assert scrape.window() == 0


def test_without_a_minimum_the_window_must_be_full(
    metrics: ScorerMetrics, tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    scorer = BatchScorer(metrics, 65536, WINDOW)
    scrape, v1 = Scrape(metrics), _loaded(tiny_bundle, "1")
    scorer.process(v1, _records(sample_applicants[: WINDOW - 1]))
    assert scrape.prediction_psi() is None
    scorer.process(v1, _records(sample_applicants[WINDOW - 1 : WINDOW]))
    assert scrape.prediction_psi() == scorer.drift_for(v1).prediction_psi()


@pytest.mark.parametrize("bad", [0, WINDOW + 1])
def test_the_minimum_must_fit_the_window(metrics: ScorerMetrics, bad: int) -> None:
    with pytest.raises(ValueError, match="drift_min_records"):
        BatchScorer(metrics, 65536, WINDOW, drift_min_records=bad)


def test_the_setting_defaults_below_the_window_and_cannot_exceed_it() -> None:
    settings = WorkerSettings()
    assert 1 <= settings.drift_min_records <= settings.drift_window
    assert WorkerSettings(drift_window=800, drift_min_records=800).drift_min_records == 800
    with pytest.raises(ValidationError, match="must not exceed drift_window"):
        WorkerSettings(drift_window=800)  # the default minimum, 1000, does not fit
    with pytest.raises(ValidationError):
        WorkerSettings(drift_min_records=0)


def test_the_worker_scores_with_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stream_worker.runtime import app

    # no registry here: the worker is built, not started
    monkeypatch.setattr(app, "MlflowModelSource", lambda *args: SimpleNamespace())
    settings = WorkerSettings(data_dir=str(tmp_path / "faust"), drift_min_records=321)
    assert app.build_worker(settings).batch_scorer.drift_min_records == 321
