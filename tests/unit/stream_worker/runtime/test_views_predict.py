"""POST /predict scores like the stream but never moves the stream's metrics or drift window.

The views are registered on a stand-in app that keeps them by path, and called the way the
web server calls them: ``View(app, web).post(request)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from prometheus_client import CollectorRegistry

from stream_worker.runtime import views
from stream_worker.runtime.context import WorkerContext
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel
from stream_worker.settings import WorkerSettings
from trainer.model.bundle import ModelBundle

#: Every series of the stream's contract that a scored or rejected record moves.
STREAM_SERIES: list[tuple[str, dict[str, str]]] = [
    ("scorer_records_total", {"outcome": "scored"}),
    ("scorer_records_total", {"outcome": "invalid"}),
    ("scorer_records_total", {"outcome": "error"}),
    ("scorer_predictions_total", {"label": ">50K"}),
    ("scorer_predictions_total", {"label": "<=50K"}),
    ("scorer_event_latency_seconds_count", {}),
    ("scorer_inference_seconds_count", {}),
    ("scorer_score_count", {}),
    *[
        ("scorer_dead_letters_total", {"reason": r})
        for r in ("not_json", "not_object", "invalid_utf8", "too_large", "schema", "scoring_error")
    ],
]


class StandInApp:
    """Keeps the views ``app.page`` registers, by path."""

    def __init__(self) -> None:
        self.pages: dict[str, type[Any]] = {}

    def page(self, path: str) -> Callable[[type[Any]], type[Any]]:
        def register(view: type[Any]) -> type[Any]:
            self.pages[path] = view
            return view

        return register


class StandInWeb:
    def json(self, value: Any, *, status: int = 200, **_: Any) -> tuple[Any, int]:
        return json.loads(json.dumps(value)), status


@dataclasses.dataclass
class StandInWatcher:
    current: LoadedModel | None


@dataclasses.dataclass
class Request:
    body: bytes

    async def read(self) -> bytes:
        return self.body


@dataclasses.dataclass
class Worker:
    ctx: WorkerContext
    app: StandInApp

    def post(self, body: bytes) -> tuple[dict[str, Any], int]:
        view = self.app.pages["/predict"](self.app, StandInWeb())
        answer: tuple[dict[str, Any], int] = asyncio.run(view.post(Request(body)))
        return answer

    def sample(self, name: str, **labels: str) -> float:
        value = self.ctx.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def stream_figures(self) -> dict[str, float]:
        return {f"{n}{sorted(lb.items())}": self.sample(n, **lb) for n, lb in STREAM_SERIES}


def _loaded(bundle: ModelBundle, version: str = "1") -> LoadedModel:
    return LoadedModel(bundle, "adult-income", version, f"run-{version}", "2024-01-01T00:00:00")


@pytest.fixture
def worker(tmp_path: Path, tiny_bundle: ModelBundle) -> Worker:
    settings = WorkerSettings(data_dir=str(tmp_path), drift_window=100, drift_min_records=10)
    metrics = ScorerMetrics(CollectorRegistry())
    app = StandInApp()
    ctx = WorkerContext(
        settings=settings,
        app=app,  # type: ignore[arg-type]
        metrics=metrics,
        watcher=StandInWatcher(_loaded(tiny_bundle)),  # type: ignore[arg-type]
        batch_scorer=BatchScorer(metrics, settings.max_record_bytes, settings.drift_window),
    )
    views.register(ctx)
    return Worker(ctx, app)


def test_a_good_request_is_scored_but_stays_out_of_the_stream_figures(
    worker: Worker, sample_applicants: list[dict[str, Any]]
) -> None:
    before = worker.stream_figures()
    for applicant in sample_applicants[:30]:
        answer, status = worker.post(json.dumps(applicant).encode())
        assert status == 200, answer
        assert answer["applicant_id"] == applicant["applicant_id"]
    assert worker.stream_figures() == before  # all zero: no record, latency or score sample
    # the drift window of the stream is the stream's: no request lands in it
    get = worker.ctx.metrics.registry.get_sample_value
    assert get("scorer_feature_drift_psi", {"feature": "age"}) is None
    assert get("scorer_prediction_drift_psi") is None
    assert get("scorer_drift_window_records") == 0
    model = worker.ctx.watcher.current
    assert model is not None
    assert worker.ctx.batch_scorer.drift_for(model).observed == 0
    assert worker.sample("scorer_http_predict_requests_total", result="ok") == 30
    assert worker.sample("scorer_http_predict_seconds_count") == 30
    assert 0 < worker.sample("scorer_http_predict_seconds_sum") < 30 * 5.0


def test_bad_requests_are_answered_400_and_never_counted_as_dead_letters(
    worker: Worker, sample_applicants: list[dict[str, Any]]
) -> None:
    no_age = {k: v for k, v in sample_applicants[0].items() if k != "age"}
    bodies = [b"not json", b"[1, 2]", json.dumps(no_age).encode(), b"\xff\xfe", b"x" * 70_000]
    for body in bodies:
        answer, status = worker.post(body)
        assert status == 400, answer
        assert answer["reason"] in {"not_json", "not_object", "schema", "invalid_utf8", "too_large"}
    assert set(worker.stream_figures().values()) == {0.0}
    assert worker.sample("scorer_http_predict_requests_total", result="invalid") == len(bodies)
    assert worker.sample("scorer_http_predict_requests_total", result="ok") == 0
    assert worker.sample("scorer_http_predict_seconds_count") == len(bodies)


def test_predict_answers_what_the_stream_emits_for_the_same_record(
    worker: Worker, tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    """The same decode, encode, predict and output code: the same prediction fields."""
    stream = BatchScorer(ScorerMetrics(CollectorRegistry()), 65536, 100)
    for applicant in sample_applicants[:10]:
        body = json.dumps(applicant).encode()
        answer, status = worker.post(body)
        record = InputRecord(applicant["applicant_id"].encode(), body, time.time())
        emitted = json.loads(stream.process(_loaded(tiny_bundle), [record]).predictions[0].value)
        assert status == 200
        for field in ("applicant_id", "probability", "label", "threshold", "model_version"):
            assert answer[field] == emitted[field], field
        assert set(answer) == set(emitted)


def test_no_model_yet_is_503_unavailable(worker: Worker) -> None:
    worker.ctx.watcher.current = None
    answer, status = worker.post(b"{}")
    assert status == 503
    assert answer == {"error": "no model loaded yet"}
    assert worker.sample("scorer_http_predict_requests_total", result="unavailable") == 1
    assert worker.sample("scorer_http_predict_seconds_count") == 1


def test_a_model_that_cannot_score_is_a_500_error_and_no_dead_letter(
    worker: Worker, tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    rng = np.random.default_rng(0)
    wrong = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(rng.random((50, 3)), label=rng.integers(0, 2, 50)),
        num_boost_round=2,
    )
    worker.ctx.watcher.current = _loaded(dataclasses.replace(tiny_bundle, booster=wrong), "9")
    answer, status = worker.post(json.dumps(sample_applicants[0]).encode())
    assert status == 500
    assert answer["error"] == "scoring failed"
    assert set(worker.stream_figures().values()) == {0.0}
    assert worker.sample("scorer_http_predict_requests_total", result="error") == 1
