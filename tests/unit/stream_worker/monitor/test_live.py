"""Per-version windows over small real capture files (written with CaptureLocation.write)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from capture_files import CaptureWriter, Outcome, Prediction, calibrated_traffic
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from stream_worker.capture.layout import PREDICTIONS
from stream_worker.capture.store import CaptureReader
from stream_worker.monitor.live import DELAY_BUCKETS, LiveSnapshot, LiveWindow, compute_snapshot
from stream_worker.monitor.performance import estimated_accuracy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
WIDE = LiveWindow(records=50_000, hours=24)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)


@pytest.fixture
def capture(tmp_path: Path) -> CaptureWriter:
    return CaptureWriter(tmp_path / "capture")


def snapshot(capture: CaptureWriter, window: LiveWindow = WIDE) -> LiveSnapshot:
    return compute_snapshot(CaptureReader.from_uri(capture.uri), window, now=NOW)


def test_an_empty_capture_gives_an_empty_snapshot(capture: CaptureWriter) -> None:
    snap = snapshot(capture)
    assert snap.versions == ()
    assert snap.records == 0
    assert snap.health.unreadable_files == {}


def test_the_first_prediction_of_an_applicant_is_the_one_served(capture: CaptureWriter) -> None:
    # a-1 is scored by v1, then redelivered (archived twice), then scored again by v2 after a
    # swap: only v1's first prediction counts.
    first = Prediction("a-1", 0.9, "1", NOW - 3 * HOUR)
    capture.predictions([first, Prediction("a-2", 0.2, "1", NOW - 3 * HOUR)])
    capture.predictions([first], partition=1)
    capture.predictions([Prediction("a-1", 0.1, "2", NOW - 2 * HOUR)], partition=2)
    capture.predictions([Prediction("b-1", 0.7, "2", NOW - 1 * HOUR)], partition=2)
    capture.outcomes([Outcome("a-1", True, NOW - HOUR), Outcome("a-2", False, NOW - HOUR)])

    snap = snapshot(capture)
    v1, v2 = snap.version("1"), snap.version("2")
    assert (v1.scored, v2.scored) == (2, 1)
    assert snap.health.duplicate_predictions == 2
    assert v1.performance is not None
    assert v1.performance.records == 2
    assert v1.performance.accuracy == 1.0  # 0.9 for a positive: right; v2's 0.1 would be wrong
    assert v1.performance.roc_auc == 1.0
    assert v2.performance is None  # its only labelled-looking record was not served by it


def test_the_latest_outcome_of_an_applicant_is_the_truth(capture: CaptureWriter) -> None:
    capture.predictions(
        [Prediction("a-1", 0.8, "1", NOW - 5 * HOUR), Prediction("a-2", 0.3, "1", NOW - 5 * HOUR)]
    )
    wrong = Outcome("a-1", False, NOW - 4 * HOUR)
    capture.outcomes([wrong, Outcome("a-2", False, NOW - 4 * HOUR)])
    capture.outcomes([wrong], partition=1)  # redelivered
    capture.outcomes([Outcome("a-1", True, NOW - 2 * HOUR)])  # corrected later

    snap = snapshot(capture)
    perf = snap.version("1").performance
    assert perf is not None
    assert perf.records == 2
    assert perf.accuracy == 1.0  # a-1 positive (the correction), a-2 negative
    assert snap.health.duplicate_outcomes == 2


def test_the_labelled_window_keeps_the_newest_records_by_observation(
    capture: CaptureWriter,
) -> None:
    preds = [Prediction(f"a-{i}", 0.9, "1", NOW - 20 * HOUR + i * MIN) for i in range(30)]
    capture.predictions(preds)
    # The 10 newest outcomes (i < 10, observed most recently) are right, the 20 older wrong.
    capture.outcomes([Outcome(f"a-{i}", i < 10, NOW - (i + 1) * MIN) for i in range(30)])

    newest = snapshot(capture, LiveWindow(records=10, hours=24)).version("1").performance
    everything = snapshot(capture, LiveWindow(records=30, hours=24)).version("1").performance
    assert newest is not None
    assert everything is not None
    assert (newest.records, newest.accuracy) == (10, 1.0)
    assert everything.records == 30
    assert everything.accuracy == pytest.approx(1 / 3)


def test_the_labelled_window_keeps_outcomes_observed_in_the_last_hours(
    capture: CaptureWriter,
) -> None:
    # Scored two days ago, so only the outcomes' observation time can decide.
    capture.predictions([Prediction(f"a-{i}", 0.9, "1", NOW - 48 * HOUR) for i in range(20)])
    old = [Outcome(f"a-{i}", False, NOW - 30 * HOUR) for i in range(10)]
    recent = [Outcome(f"a-{i}", True, NOW - 1 * HOUR) for i in range(10, 20)]
    capture.outcomes(old)
    capture.outcomes(recent)

    day = snapshot(capture, LiveWindow(records=100, hours=24)).version("1")
    two_days = snapshot(capture, LiveWindow(records=100, hours=72)).version("1")
    assert day.performance is not None
    assert two_days.performance is not None
    assert (day.performance.records, day.performance.accuracy) == (10, 1.0)
    assert (two_days.performance.records, two_days.performance.accuracy) == (20, 0.5)
    # Nothing was scored in the last 24 hours: no scored window, no coverage.
    assert day.scored == 0
    assert math.isnan(day.label_coverage)
    assert math.isnan(day.estimated_accuracy)
    assert two_days.scored == 20


def test_the_scored_window_keeps_the_newest_predictions(capture: CaptureWriter) -> None:
    # 30 predictions in the last hour; the 10 newest are confident, the older ones not.
    probs = [0.99 if i >= 20 else 0.55 for i in range(30)]
    capture.predictions(
        [Prediction(f"a-{i}", probs[i], "1", NOW - HOUR + i * MIN) for i in range(30)]
    )
    capture.predictions(
        [Prediction(f"old-{i}", 0.5, "1", NOW - 25 * HOUR) for i in range(5)], partition=1
    )
    v1 = snapshot(capture, LiveWindow(records=10, hours=24)).version("1")
    assert v1.scored == 10
    assert v1.estimated_accuracy == pytest.approx(0.99)
    wide = snapshot(capture).version("1")
    assert wide.scored == 30  # the five from 25 hours ago are outside the window
    assert wide.estimated_accuracy == pytest.approx(estimated_accuracy(probs, 0.5))


def test_label_coverage_counts_labelled_records_of_the_scored_window(
    capture: CaptureWriter,
) -> None:
    capture.predictions([Prediction(f"a-{i}", 0.6, "1", NOW - 2 * HOUR) for i in range(8)])
    capture.outcomes([Outcome(f"a-{i}", True, NOW - HOUR) for i in range(5)])
    v1 = snapshot(capture).version("1")
    assert (v1.scored, v1.scored_labelled) == (8, 5)
    assert v1.label_coverage == pytest.approx(5 / 8)


def test_label_delay_histogram_and_newest_label(capture: CaptureWriter) -> None:
    scored_at = NOW - 3 * 86400 * timedelta(seconds=1)
    capture.predictions([Prediction(f"a-{i}", 0.6, "1", scored_at) for i in range(5)])
    delays = [0.5, 3.0, 100.0, 2 * 3600.0, 2 * 86400.0]
    capture.outcomes(
        [Outcome(f"a-{i}", True, scored_at + timedelta(seconds=d)) for i, d in enumerate(delays)]
    )
    v1 = snapshot(capture, LiveWindow(records=100, hours=96)).version("1")
    hist = v1.label_delay
    assert hist is not None
    assert hist.count == 5
    assert hist.total_seconds == pytest.approx(sum(delays))
    cumulative = dict(zip(hist.bounds, hist.cumulative, strict=True))
    assert cumulative[1] == 1
    assert cumulative[5] == 2
    assert cumulative[60] == 2
    assert cumulative[300] == 3
    assert cumulative[3 * 3600] == 4
    assert cumulative[86400] == 4
    assert cumulative[2 * 86400] == 5
    assert hist.bounds == DELAY_BUCKETS
    assert v1.last_label_at == pytest.approx((scored_at + timedelta(days=2)).timestamp())


def test_a_version_without_labels_has_only_its_estimate_and_count(
    capture: CaptureWriter,
) -> None:
    capture.predictions([Prediction(f"a-{i}", 0.8, "1", NOW - HOUR) for i in range(4)])
    capture.predictions([Prediction(f"b-{i}", 0.1, "2", NOW - HOUR) for i in range(3)], 1)
    capture.outcomes([Outcome(f"a-{i}", True, NOW - MIN) for i in range(4)])
    v2 = snapshot(capture).version("2")
    assert v2.scored == 3
    assert v2.estimated_accuracy == pytest.approx(0.9)
    assert v2.performance is None
    assert v2.label_delay is None
    assert v2.last_label_at is None


def test_a_version_whose_labels_left_the_window_keeps_its_newest_label_time(
    capture: CaptureWriter,
) -> None:
    capture.predictions([Prediction(f"a-{i}", 0.8, "1", NOW - 40 * HOUR) for i in range(4)])
    capture.outcomes([Outcome(f"a-{i}", True, NOW - 30 * HOUR) for i in range(4)])
    v1 = snapshot(capture).version("1")
    assert v1.performance is not None
    assert v1.performance.records == 0
    assert math.isnan(v1.performance.roc_auc)
    assert v1.last_label_at == pytest.approx((NOW - 30 * HOUR).timestamp())


def test_realised_figures_equal_sklearn_on_the_window_rows(capture: CaptureWriter) -> None:
    preds, labels = calibrated_traffic(
        800, seed=11, version="3", start=NOW - 10 * HOUR, spacing=MIN / 2, threshold=0.39
    )
    capture.predictions(preds[:400])
    capture.predictions(preds[400:], partition=1)  # two workers, two partitions
    capture.outcomes(
        [Outcome(p.applicant_id, bool(y), NOW - MIN) for p, y in zip(preds, labels, strict=True)]
    )
    perf = snapshot(capture).version("3").performance
    assert perf is not None
    p = np.array([x.probability for x in preds])
    assert perf.records == 800
    assert perf.roc_auc == pytest.approx(roc_auc_score(labels, p), abs=1e-12)
    assert perf.log_loss == pytest.approx(log_loss(labels, p), rel=1e-9)
    assert perf.accuracy == pytest.approx(accuracy_score(labels, p >= 0.39), abs=1e-12)


def test_full_scale_estimate_is_within_two_points_of_realised(capture: CaptureWriter) -> None:
    """The adult.test size through the capture: 16,281 calibrated predictions, all labelled."""
    n = 16_281
    preds, labels = calibrated_traffic(
        n, seed=5, version="7", start=NOW - 20 * HOUR, spacing=timedelta(seconds=4), threshold=0.39
    )
    for part in range(4):
        capture.predictions(preds[part::4], partition=part)
    outcomes = [
        Outcome(p.applicant_id, bool(y), p.scored_at + 10 * MIN)
        for p, y in zip(preds, labels, strict=True)
    ]
    capture.outcomes(outcomes[: n // 2])
    capture.outcomes(outcomes[n // 2 :], partition=1)

    v7 = snapshot(capture).version("7")
    assert v7.performance is not None
    assert v7.performance.records == n
    assert v7.scored == n
    realised = v7.performance.accuracy
    assert abs(v7.performance.estimated_accuracy - realised) < 0.02
    assert abs(v7.estimated_accuracy - realised) < 0.02  # all labelled: the same records


def test_an_unreadable_file_is_skipped_and_counted(capture: CaptureWriter) -> None:
    capture.predictions([Prediction("a-1", 0.8, "1", NOW - HOUR)])
    bad = capture.corrupt_file(PREDICTIONS, NOW)
    snap = snapshot(capture)
    assert snap.version("1").scored == 1
    assert list(snap.health.unreadable_files) == [str(bad)]


def test_an_outcome_without_its_prediction_is_counted_unmatched(capture: CaptureWriter) -> None:
    capture.predictions([Prediction("a-1", 0.8, "1", NOW - HOUR)])
    capture.outcomes([Outcome("a-1", True, NOW - MIN), Outcome("ghost", True, NOW - MIN)])
    snap = snapshot(capture)
    assert snap.health.unmatched_outcomes == 1
    perf = snap.version("1").performance
    assert perf is not None
    assert perf.records == 1


def test_recomputing_never_double_counts(capture: CaptureWriter) -> None:
    preds, labels = calibrated_traffic(
        300, seed=2, version="1", start=NOW - 2 * HOUR, spacing=timedelta(seconds=10)
    )
    capture.predictions(preds)
    capture.outcomes(
        [Outcome(p.applicant_id, bool(y), NOW - MIN) for p, y in zip(preds, labels, strict=True)]
    )
    reader = CaptureReader.from_uri(capture.uri)
    first = compute_snapshot(reader, WIDE, now=NOW)
    again = compute_snapshot(reader, WIDE, now=NOW)  # the same process, cached files
    restarted = compute_snapshot(CaptureReader.from_uri(capture.uri), WIDE, now=NOW)
    assert first.versions == again.versions == restarted.versions
    perf = first.version("1").performance
    assert perf is not None
    assert perf.records == 300


def test_versions_are_ordered_numerically(capture: CaptureWriter) -> None:
    for i, version in enumerate(["10", "9", "2"]):
        capture.predictions([Prediction(f"{version}-a", 0.5, version, NOW - HOUR)], i)
    assert [v.model_version for v in snapshot(capture).versions] == ["2", "9", "10"]
