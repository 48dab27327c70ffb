"""The monitor's exposition: what each version shows, and the HTTP views, on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from capture_files import MODEL, CaptureWriter, Outcome, Prediction
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from stream_worker.capture.layout import OUTCOMES
from stream_worker.capture.store import CaptureReader
from stream_worker.monitor.exporter import MonitorMetrics, serve_http
from stream_worker.monitor.live import LiveSnapshot, LiveWindow, compute_snapshot

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def samples(registry: CollectorRegistry) -> list[Sample]:
    text = generate_latest(registry).decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def values(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value for s in samples(registry) if s.name == name}


def of(version: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model_name": MODEL, "model_version": version, **extra}.items()))


@pytest.fixture
def two_versions(tmp_path: Path) -> LiveSnapshot:
    """v1: 4 labelled records (both classes) of 6 scored; v2: 3 scored, no labels yet."""
    capture = CaptureWriter(tmp_path / "capture")
    probs = [0.9, 0.8, 0.3, 0.1, 0.6, 0.2]
    capture.predictions(
        [Prediction(f"a-{i}", p, "1", NOW - 2 * HOUR, threshold=0.5) for i, p in enumerate(probs)]
    )
    capture.predictions([Prediction(f"b-{i}", 0.7, "2", NOW - HOUR) for i in range(3)], 1)
    arrived = NOW - 2 * HOUR + timedelta(seconds=30)
    truth = [True, False, False, False]
    outcomes = [Outcome(f"a-{i}", t, NOW - HOUR, arrived) for i, t in enumerate(truth)]
    capture.outcomes(outcomes)
    capture.outcomes(outcomes[:1], partition=1)  # archived twice
    capture.outcomes([Outcome("ghost", True, NOW - HOUR)], partition=2)  # unmatched
    capture.corrupt_file(OUTCOMES, NOW)
    return compute_snapshot(CaptureReader.from_uri(capture.uri), LiveWindow(1000, 24), now=NOW)


@pytest.fixture
def metrics() -> MonitorMetrics:
    return MonitorMetrics(CollectorRegistry())


def test_nothing_per_version_before_the_first_computation(metrics: MonitorMetrics) -> None:
    names = {s.name for s in samples(metrics.registry)}
    assert not {n for n in names if n.startswith(("scorer_live_", "scorer_capture_"))}
    assert values(metrics.registry, "scorer_monitor_runs_total") == {
        (("result", "success"),): 0.0,
        (("result", "failure"),): 0.0,
    }


def test_a_labelled_version_shows_every_live_figure(
    metrics: MonitorMetrics, two_versions: LiveSnapshot
) -> None:
    metrics.succeeded(two_versions, {(MODEL, "1"): {"roc_auc": 0.931, "accuracy": 0.871}})
    registry = metrics.registry
    v1 = two_versions.version("1")
    assert v1.performance is not None
    # 4 labelled: a-0 (0.9, positive) ranks above the three negatives.
    assert values(registry, "scorer_live_roc_auc") == {of("1"): 1.0}
    assert values(registry, "scorer_live_accuracy") == {of("1"): 0.75}  # a-1 at 0.8 is wrong
    assert values(registry, "scorer_live_labelled_records") == {of("1"): 4.0}
    assert values(registry, "scorer_live_scored_records") == {of("1"): 6.0, of("2"): 3.0}
    assert values(registry, "scorer_live_label_coverage") == {of("1"): pytest.approx(4 / 6)}
    for name, expected in (
        ("scorer_live_log_loss", v1.performance.log_loss),
        ("scorer_live_brier", v1.performance.brier),
        ("scorer_live_calibration_error", v1.performance.calibration_error),
    ):
        assert values(registry, name) == {of("1"): pytest.approx(expected)}
    assert values(registry, "scorer_live_estimated_accuracy") == {
        of("1", population="scored"): pytest.approx(v1.estimated_accuracy),
        of("1", population="labelled"): pytest.approx((0.9 + 0.8 + 0.7 + 0.9) / 4),
        of("2", population="scored"): pytest.approx(0.7),
    }
    assert values(registry, "scorer_live_last_label_timestamp_seconds") == {
        of("1"): pytest.approx((NOW - 2 * HOUR + timedelta(seconds=30)).timestamp())
    }
    assert values(registry, "scorer_offline_roc_auc") == {of("1"): 0.931}
    assert values(registry, "scorer_offline_accuracy") == {of("1"): 0.871}


def test_a_version_without_labels_shows_its_estimate_and_count_only(
    metrics: MonitorMetrics, two_versions: LiveSnapshot
) -> None:
    metrics.succeeded(two_versions, {})
    shown = {s.name for s in samples(metrics.registry) if s.labels.get("model_version") == "2"}
    assert shown == {"scorer_live_scored_records", "scorer_live_estimated_accuracy"}


def test_the_label_delay_is_a_histogram_of_the_window(
    metrics: MonitorMetrics, two_versions: LiveSnapshot
) -> None:
    metrics.succeeded(two_versions, {})
    buckets = values(metrics.registry, "scorer_live_label_delay_seconds_bucket")
    # Four outcomes arrived 30 s after their predictions were scored.
    assert buckets[of("1", le="15.0")] == 0.0
    assert buckets[of("1", le="60.0")] == 4.0
    assert buckets[of("1", le="+Inf")] == 4.0
    assert values(metrics.registry, "scorer_live_label_delay_seconds_count") == {of("1"): 4.0}
    assert values(metrics.registry, "scorer_live_label_delay_seconds_sum") == {of("1"): 120.0}


def test_undefined_figures_are_absent_not_nan(metrics: MonitorMetrics, tmp_path: Path) -> None:
    capture = CaptureWriter(tmp_path / "capture")
    capture.predictions([Prediction(f"a-{i}", 0.8, "1", NOW - HOUR) for i in range(3)])
    capture.outcomes([Outcome(f"a-{i}", True, NOW - HOUR) for i in range(3)])  # one class
    snap = compute_snapshot(CaptureReader.from_uri(capture.uri), LiveWindow(100, 24), now=NOW)
    metrics.succeeded(snap, {})
    assert values(metrics.registry, "scorer_live_roc_auc") == {}
    assert values(metrics.registry, "scorer_live_accuracy") == {of("1"): 1.0}


def test_capture_health_and_runs(metrics: MonitorMetrics, two_versions: LiveSnapshot) -> None:
    metrics.failed()
    metrics.succeeded(two_versions, {})
    registry = metrics.registry
    assert values(registry, "scorer_capture_duplicate_outcomes") == {(): 1.0}
    assert values(registry, "scorer_capture_unmatched_outcomes") == {(): 1.0}
    assert values(registry, "scorer_capture_unreadable_files_total") == {(): 1.0}
    assert values(registry, "scorer_monitor_runs_total") == {
        (("result", "success"),): 1.0,
        (("result", "failure"),): 1.0,
    }
    assert values(registry, "scorer_monitor_last_success_timestamp_seconds") == {
        (): NOW.timestamp()
    }


def test_a_version_that_leaves_the_capture_leaves_the_exposition(
    metrics: MonitorMetrics, two_versions: LiveSnapshot, tmp_path: Path
) -> None:
    metrics.succeeded(two_versions, {})
    empty = compute_snapshot(
        CaptureReader.from_uri(str(tmp_path / "nothing")), LiveWindow(100, 24), now=NOW
    )
    metrics.succeeded(empty, {})
    assert values(metrics.registry, "scorer_live_scored_records") == {}


# ------------------------------------------------------------------------------ HTTP


@pytest.fixture
def server(metrics: MonitorMetrics) -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"ok": False, "body": {"status": "starting", "reason": "not yet"}}
    http = serve_http(metrics.registry, lambda: (state["ok"], state["body"]), "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{http.server_address[1]}", state
    finally:
        http.shutdown()
        http.server_close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_health_answers_503_with_the_reason_then_200(
    server: tuple[str, dict[str, Any]],
) -> None:
    base, state = server
    status, kind, body = get(f"{base}/health")
    assert (status, kind) == (503, "application/json")
    assert json.loads(body)["reason"] == "not yet"
    state.update(ok=True, body={"status": "ok"})
    status, _, body = get(f"{base}/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})


def test_metrics_are_served_and_other_paths_are_404(
    server: tuple[str, dict[str, Any]], metrics: MonitorMetrics, two_versions: LiveSnapshot
) -> None:
    base, _ = server
    metrics.succeeded(two_versions, {})
    status, kind, body = get(f"{base}/metrics")
    assert status == 200
    assert kind.startswith("text/plain")
    assert 'scorer_live_roc_auc{model_name="adult-income",model_version="1"} 1.0' in body
    assert get(f"{base}/nope")[0] == 404
