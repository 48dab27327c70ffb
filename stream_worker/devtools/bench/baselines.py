"""In-process figures on the champion: (d) a naive one-record scorer, and where
``BatchScorer.process`` spends its time (the cost share of its steps)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from stream_worker.exceptions import ScorerError

if TYPE_CHECKING:
    from stream_worker.scoring.metrics import ScorerMetrics
    from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel
    from stream_worker.settings import WorkerSettings
    from trainer.model.bundle import ModelBundle

#: Rounds timed but not counted: the first calls warm caches up.
WARMUP_ROUNDS = 3
#: The parts of ``process`` the cost share reports, in the order of the table.
COST_PARTS = ("decode", "encode_predict", "drift", "metrics", "emit_other")


# --- (d) naive baseline --------------------------------------------------------------------


def naive_baseline(bundle: ModelBundle, values: Sequence[bytes]) -> tuple[float, float]:
    """Records/s of a one-at-a-time scorer, and its largest difference from the batch path.

    The per-record path of a typical scikit-learn style service: ``json.loads`` → a one-row
    DataFrame → the encoding → ``xgboost.DMatrix`` → ``Booster.predict`` (what
    ``predict_proba`` does underneath), with the same bundle and one thread like the worker.
    """
    from trainer.model.bundle import records_to_columns

    score_one = _one_record_scorer(bundle)
    for value in values[:5]:  # warm-up: first calls pay for lazy imports and allocations
        score_one(value)
    started = time.perf_counter()
    probabilities = [score_one(v) for v in values]
    elapsed = time.perf_counter() - started
    batch = bundle.predict(records_to_columns([json.loads(v) for v in values]))
    diff = float(np.max(np.abs(np.asarray(probabilities) - batch))) if len(values) else 0.0
    return round(len(values) / elapsed, 1), diff


def _one_record_scorer(bundle: ModelBundle) -> Callable[[bytes], float]:
    import pandas as pd
    import xgboost as xgb

    from trainer.model.features import frame_columns

    booster, encoder = bundle.booster, bundle.encoder
    names = booster.feature_names
    offset = bundle.log_class_weight

    def score_one(value: bytes) -> float:
        frame = pd.DataFrame([json.loads(value)])
        matrix = xgb.DMatrix(encoder.encode(frame_columns(frame)), feature_names=names)
        margin = float(booster.predict(matrix, output_margin=True)[0])
        return 1.0 / (1.0 + float(np.exp(-(margin - offset))))

    return score_one


# --- cost share of BatchScorer.process -----------------------------------------------------


class NoOpMetrics:
    """Stands in for ``ScorerMetrics``: every attribute and every call is itself, doing nothing."""

    def __getattr__(self, name: str) -> NoOpMetrics:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> NoOpMetrics:
        return self


class NoOpDriftMonitor:
    """Stands in for ``DriftMonitor``: no window, no PSI."""

    observed = 0

    def update(self, *args: Any) -> None:
        pass

    def feature_psi(self) -> dict[str, float]:
        return {}

    def prediction_psi(self) -> float:
        return 0.0


class ProfileWithoutBinning:
    """Stands in for the ``ReferenceProfile``: the real one, except that binning costs nothing."""

    def __init__(self, profile: Any) -> None:
        self._profile = profile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._profile, name)

    def feature_bins(self, *args: Any) -> dict[str, Any]:
        return {}

    def score_bins(self, scores: Any) -> Any:
        return np.empty(0, dtype=np.intp)


@contextlib.contextmanager
def _without_histogram_batches() -> Iterator[None]:
    """Make ``observe_many`` a no-op inside ``stream_worker.scoring.scorer`` (bench only)."""
    from stream_worker.scoring import scorer as scoring

    # setattr, not assignment: mypy rightly says the module does not export the name.
    original = getattr(scoring, "observe_many", None)
    if original is not None:
        setattr(scoring, "observe_many", lambda *args, **kwargs: None)  # noqa: B010
    try:
        yield
    finally:
        if original is not None:
            setattr(scoring, "observe_many", original)  # noqa: B010


def cost_share(
    bundle: ModelBundle, settings: WorkerSettings, values: Sequence[bytes], repeats: int = 80
) -> tuple[float, dict[str, float]]:
    """Records/s of ``BatchScorer.process`` alone, and the share of each part of its time.

    ``decode`` and ``encode_predict`` time the calls ``process`` makes, on their own. ``drift``
    and ``metrics`` are differences: ``process`` as shipped minus ``process`` with the drift
    window (binning, window update, PSI) or every Prometheus update replaced by no-ops, so
    they follow whatever ``process`` does today. ``emit_other`` is the rest: building the
    prediction records, latencies, bookkeeping. Fastest of interleaved repeats.
    """
    fastest = fastest_times(_cost_cases(bundle, settings, values), repeats)
    return round(len(values) / fastest["full"], 1), cost_shares(fastest)


def _cost_cases(
    bundle: ModelBundle, settings: WorkerSettings, values: Sequence[bytes]
) -> dict[str, Callable[[], object]]:
    """The calls to time: ``process`` as shipped, without drift, without metrics, two steps."""
    from prometheus_client import CollectorRegistry

    from stream_worker.scoring.metrics import ScorerMetrics
    from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel

    class NoDriftScorer(BatchScorer):
        def drift_for(self, model: LoadedModel) -> Any:
            return NoOpDriftMonitor()

    def scorer(cls: type[BatchScorer], metrics: ScorerMetrics) -> BatchScorer:
        return cls(metrics, settings.max_record_bytes, settings.drift_window)

    model = LoadedModel(bundle, settings.model_name, "bench", "", "")
    unbinned = cast(Any, ProfileWithoutBinning(bundle.profile))
    no_drift_model = dataclasses.replace(
        model, bundle=dataclasses.replace(bundle, profile=unbinned)
    )
    now = time.time()
    records = [InputRecord(None, v, now, "bench", 0, i) for i, v in enumerate(values)]
    full = scorer(BatchScorer, ScorerMetrics(CollectorRegistry()))
    no_drift = scorer(NoDriftScorer, ScorerMetrics(CollectorRegistry()))
    no_metrics = scorer(BatchScorer, cast(ScorerMetrics, NoOpMetrics()))
    _check_all_scored(full, model, records)
    decoded = full.decoder.decode_batch(values)

    def no_metrics_process() -> object:
        with _without_histogram_batches():
            return no_metrics.process(model, records)

    return {
        "full": lambda: full.process(model, records),
        "no_drift": lambda: no_drift.process(no_drift_model, records),
        "no_metrics": no_metrics_process,
        "decode": lambda: full.decoder.decode_batch(values),
        "encode_predict": lambda: bundle.predict_encoded(bundle.encoder.codes(decoded.columns())),
    }


def _check_all_scored(
    scorer: BatchScorer, model: LoadedModel, records: Sequence[InputRecord]
) -> None:
    check = scorer.process(model, records)
    if len(check.predictions) != len(records):
        raise ScorerError(f"cost share: {len(check.dead_letters)} records dead-lettered")


def fastest_times(
    cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = WARMUP_ROUNDS
) -> dict[str, float]:
    """The fastest of ``repeats`` timings of each case, the cases interleaved.

    The order rotates every round so that a change in the machine's load spreads over every
    case; the fastest, because on a shared machine the noise only ever adds time.
    """
    timings: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for i in range(repeats + warmup):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            started = time.perf_counter()
            cases[name]()
            if i >= warmup:
                timings[name].append(time.perf_counter() - started)
    return {name: min(times) for name, times in timings.items()}


def cost_shares(fastest: Mapping[str, float]) -> dict[str, float]:
    """Shares of ``fastest["full"]`` (rounded to 0.001) from the fastest time of each case.

    ``drift`` and ``metrics`` are what ``full`` saves without them (never below zero);
    ``emit_other`` is what none of the four explains (never below zero either, so when the
    parts overlap the shares add up to more than 1).
    """
    total = fastest["full"]
    shares = {
        "decode": fastest["decode"] / total,
        "encode_predict": fastest["encode_predict"] / total,
        "drift": max(0.0, total - fastest["no_drift"]) / total,
        "metrics": max(0.0, total - fastest["no_metrics"]) / total,
    }
    shares["emit_other"] = max(0.0, 1.0 - sum(shares.values()))
    return {k: round(v, 3) for k, v in shares.items()}
