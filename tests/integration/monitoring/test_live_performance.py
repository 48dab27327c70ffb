"""The live-performance dashboard on a real Prometheus scraping a real ``stream-worker monitor``.

The capture is real Parquet (written with CaptureLocation.write, as the archiver does) for two
versions of a real MLflow store: the champion with calibrated probabilities, and a second
version whose probabilities are blurred (its live ROC-AUC is below the gate floor). Every
panel of the performance dashboard must return data, the figures must be the ones computed
from the same records, LivePerformanceDrop must go pending for the weak version only, and the
monitor must pick up new outcomes and survive a restart without double counting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from capture_files import MODEL, CaptureWriter, Outcome, Prediction, calibrated_traffic
from sklearn.metrics import roc_auc_score
from stack_helpers import ModelStore, dashboard_exprs, prometheus_alerts, prometheus_query

from stream_worker.capture.layout import PREDICTIONS
from stream_worker.devtools.broker import free_port
from stream_worker.devtools.monitoring_files import (
    MONITOR_JOB,
    local_prometheus_config,
    monitoring_dir,
)
from stream_worker.devtools.processes import ManagedProcess, monitor_process, prometheus_server
from trainer.registry import Registry, connect

pytestmark = pytest.mark.integration

DASHBOARD = monitoring_dir() / "grafana" / "dashboards" / "scorer-model-performance.json"
RECORDS = 7000  # per version: above LivePerformanceDrop's 5,000 labelled records
LABELLED = 0.85
T = TypeVar("T")


@dataclass
class VersionTraffic:
    version: str
    predictions: list[Prediction]
    labels: np.ndarray
    labelled: int  # how many of them got an outcome

    def probabilities(self) -> np.ndarray:
        return np.array([p.probability for p in self.predictions[: self.labelled]])


def wait_for(probe: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    value = probe()
    while not done(value):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached after {timeout:.0f}s: last {value!r}")
        time.sleep(0.5)
        value = probe()
    return value


def by_version(result: list[dict[str, Any]]) -> dict[str, float]:
    return {str(r["metric"]["model_version"]): float(r["value"][1]) for r in result}


def write_traffic(
    capture: CaptureWriter, version: str, threshold: float, seed: int, noise: float, now: datetime
) -> VersionTraffic:
    """RECORDS predictions over the last five hours, three partitions; outcomes for most."""
    predictions, labels = calibrated_traffic(
        RECORDS,
        seed=seed,
        version=version,
        start=now - timedelta(hours=5),
        spacing=timedelta(hours=5) / RECORDS,
        threshold=threshold,
        noise=noise,
    )
    for part in range(3):
        capture.predictions(predictions[part::3], partition=part)
    labelled = int(RECORDS * LABELLED)
    rng = np.random.default_rng(seed + 100)
    delays = rng.uniform(5, 3600, labelled)
    outcomes = [
        Outcome(
            p.applicant_id,
            bool(y),
            observed_at=min(now, p.scored_at + timedelta(seconds=float(d))),
        )
        for p, y, d in zip(predictions[:labelled], labels[:labelled], delays, strict=True)
    ]
    capture.outcomes(outcomes[: labelled // 2])
    capture.outcomes(outcomes[labelled // 2 :], partition=1)
    return VersionTraffic(version, predictions, labels, labelled)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[ManagedProcess, Path]]:
    config = tmp_path / "prometheus.yml"
    proc = prometheus_server(config, tmp_path / "prom", free_port())
    try:
        yield proc, config
    finally:
        proc.stop()


def test_monitor_metrics_fill_every_panel_and_drive_the_alert(
    model_store: ModelStore, prometheus: tuple[ManagedProcess, Path], tmp_path: Path
) -> None:
    registry = Registry(connect(model_store.uri), MODEL, "champion")
    champion = registry.champion_version()
    assert champion is not None
    weak = model_store.register_unpromoted()
    offline = {v: registry.metrics(v) for v in (champion, weak)}

    now = datetime.now(UTC)
    capture = CaptureWriter(tmp_path / "capture")
    good = write_traffic(capture, champion, offline[champion]["threshold"], 1, 0.0, now)
    bad = write_traffic(capture, weak, offline[weak]["threshold"], 2, 2.5, now)
    # Capture health: an outcome archived twice, one for an applicant never scored, a bad file.
    first = good.predictions[0]
    capture.outcomes(
        [
            Outcome(first.applicant_id, bool(good.labels[0]), now - timedelta(hours=4)),
            Outcome("never-scored", True, now - timedelta(minutes=1)),
        ],
        partition=2,
    )
    capture.corrupt_file(PREDICTIONS, now)
    # A version the registry has never heard of (scored elsewhere, say): no offline figures.
    stranger = [Prediction(f"x-{i}", 0.2, "999", now - timedelta(minutes=i)) for i in range(5)]
    capture.predictions(stranger, partition=4)

    port = free_port()
    env = {
        "SCORER_CAPTURE_URI": capture.uri,
        "MLFLOW_TRACKING_URI": model_store.uri,
        "SCORER_MONITOR_INTERVAL_SECONDS": "1",
    }
    monitor = monitor_process(env, port, tmp_path / "monitor.log")
    prom_proc, config = prometheus
    try:
        monitor.start(timeout=90)
        local_prometheus_config(config, [], interval="1s", monitor_targets=[f"127.0.0.1:{port}"])
        prom_proc.start(timeout=60)
        assert prom_proc.ready_url is not None
        prom = prom_proc.ready_url.removesuffix("/-/ready")

        def query(expr: str) -> list[dict[str, Any]]:
            return prometheus_query(prom, expr)

        # 1. Every panel of the dashboard has data (rate windows need a few scrapes).
        exprs = dashboard_exprs(DASHBOARD)
        assert len(exprs) >= 20

        def empty_panels() -> list[tuple[str, str]]:
            return [(title, expr) for title, expr in exprs if not query(expr)]

        wait_for(empty_panels, lambda empty: not empty, 60, "data in every panel")
        assert query(f'up{{job="{MONITOR_JOB}"}} == 1')

        # 2. The figures are the ones computed from the same records, per version.
        live_auc = by_version(query("scorer_live_roc_auc"))
        labelled = by_version(query("scorer_live_labelled_records"))
        for traffic in (good, bad):
            expected = roc_auc_score(traffic.labels[: traffic.labelled], traffic.probabilities())
            assert live_auc[traffic.version] == pytest.approx(expected, abs=1e-9)
            assert labelled[traffic.version] == traffic.labelled
        assert live_auc[good.version] > 0.92 > live_auc[bad.version]
        assert by_version(query("scorer_live_scored_records")) == {
            good.version: RECORDS,
            bad.version: RECORDS,
            "999": len(stranger),
        }
        assert "999" not in labelled  # no label yet: estimate and count only
        assert "999" in by_version(query("scorer_live_estimated_accuracy"))
        coverage = by_version(query("scorer_live_label_coverage"))
        assert coverage[good.version] == pytest.approx(good.labelled / RECORDS)
        offline_auc = by_version(query("scorer_offline_roc_auc"))
        offline_acc = by_version(query("scorer_offline_accuracy"))
        assert set(offline_auc) == set(offline_acc) == {champion, weak}
        for version in (champion, weak):
            assert offline_auc[version] == pytest.approx(offline[version]["test_roc_auc"])
            assert offline_acc[version] == pytest.approx(offline[version]["test_accuracy"])
        # Calibrated probabilities: the estimate on the labelled records matches reality.
        estimated = by_version(query('scorer_live_estimated_accuracy{population="labelled"}'))
        realised = by_version(query("scorer_live_accuracy"))
        assert abs(estimated[good.version] - realised[good.version]) < 0.02
        assert float(query("scorer_capture_unreadable_files_total")[0]["value"][1]) == 1
        assert float(query("scorer_capture_duplicate_outcomes")[0]["value"][1]) == 1
        assert float(query("scorer_capture_unmatched_outcomes")[0]["value"][1]) == 1
        p90 = by_version(
            query(
                "histogram_quantile(0.9, max by (model_name, model_version, le) "
                "(scorer_live_label_delay_seconds_bucket))"
            )
        )
        assert 900 < p90[good.version] <= 3600  # delays are uniform in 5 s .. 1 h

        # 3. The weak version puts LivePerformanceDrop into pending (its `for` is 10 minutes).
        def drop_alerts() -> dict[str, str]:
            return {
                a["labels"]["model_version"]: a["state"]
                for a in prometheus_alerts(prom)
                if a["labels"]["alertname"] == "LivePerformanceDrop"
            }

        states = wait_for(drop_alerts, lambda s: weak in s, 30, "LivePerformanceDrop pending")
        assert states == {weak: "pending"}

        # 4. New outcomes are picked up at the next interval; a restart counts nothing twice.
        late = [
            Outcome(p.applicant_id, bool(y), datetime.now(UTC))
            for p, y in zip(
                good.predictions[good.labelled :], good.labels[good.labelled :], strict=True
            )
        ]
        capture.outcomes(late, partition=3)
        full = f'scorer_live_labelled_records{{model_version="{good.version}"}}'
        wait_for(
            lambda: by_version(query(full)).get(good.version),
            lambda n: n == RECORDS,
            30,
            "the late outcomes counted",
        )
        monitor.stop()
        stopped_at = time.time()
        monitor = monitor_process(env, port, tmp_path / "monitor-restarted.log")
        monitor.start(timeout=90)
        wait_for(
            lambda: query("scorer_monitor_last_success_timestamp_seconds"),
            lambda r: bool(r) and float(r[0]["value"][1]) > stopped_at,
            30,
            "a scrape of the restarted monitor",
        )
        assert by_version(query("scorer_live_labelled_records")) == {
            good.version: RECORDS,
            bad.version: bad.labelled,
        }
    finally:
        monitor.stop()


def test_live_figures_of_the_real_model_on_adult_test_equal_its_offline_ones(
    model_store: ModelStore, tmp_path: Path
) -> None:
    """The champion's own probabilities for adult.test, captured with the true outcomes.

    The monitor's live figures on these records must equal what the trainer logged for the
    version from the same predictions with scikit-learn (DESIGN: within 0.002 on a replay of
    adult.test; here the records are identical, so the match is to rounding).
    """
    from stream_worker.capture.store import CaptureReader
    from stream_worker.model_watcher import MlflowModelSource
    from stream_worker.monitor.live import LiveWindow, compute_snapshot
    from trainer.dataset import labels, load_bundled
    from trainer.model.bundle import ModelBundle
    from trainer.model.features import frame_columns

    registry = Registry(connect(model_store.uri), MODEL, "champion")
    version = registry.champion_version()
    assert version is not None
    offline = registry.metrics(version)
    source = MlflowModelSource(model_store.uri, MODEL, "champion")
    bundle = ModelBundle.load(source.download(version, tmp_path / "bundle"))
    test = load_bundled().test
    probabilities = bundle.predict(frame_columns(test))
    truth = labels(test).astype(bool)

    now = datetime.now(UTC)
    capture = CaptureWriter(tmp_path / "capture")
    n = len(test)
    scored = [
        Prediction(f"t-{i}", float(p), version, now - timedelta(seconds=n - i), bundle.threshold)
        for i, p in enumerate(probabilities)
    ]
    for part in range(6):
        capture.predictions(scored[part::6], partition=part)
    capture.outcomes(
        [Outcome(p.applicant_id, bool(y), now) for p, y in zip(scored, truth, strict=True)]
    )

    snap = compute_snapshot(CaptureReader.from_uri(capture.uri), LiveWindow(50_000, 24))
    live = snap.version(version)
    assert live.performance is not None
    assert live.performance.records == n == 16_281
    perf = live.performance
    for figure, logged in (
        (perf.roc_auc, "test_roc_auc"),
        (perf.accuracy, "test_accuracy"),
        (perf.log_loss, "test_log_loss"),
        (perf.brier, "test_brier"),
        (perf.calibration_error, "test_ece"),
    ):
        assert figure == pytest.approx(offline[logged], abs=1e-9), logged
