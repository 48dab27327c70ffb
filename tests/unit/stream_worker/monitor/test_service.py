"""The monitor loop: failures counted and reported, health, offline metrics cached per version."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from capture_files import MODEL, CaptureWriter, Outcome, Prediction
from prometheus_client import CollectorRegistry

from stream_worker.capture.store import CaptureReader
from stream_worker.cli import main
from stream_worker.devtools.broker import free_port
from stream_worker.monitor.exporter import MonitorMetrics
from stream_worker.monitor.live import LiveWindow
from stream_worker.monitor.offline import (
    MlflowOfflineSource,
    OfflineMetrics,
    RegistryUnavailableError,
    UnknownVersionError,
)
from stream_worker.monitor.service import MonitorService, redacted

NOW = datetime.now(UTC)


class FakeRegistry:
    """Answers from a dict; ``down`` makes every call fail as an unreachable server would."""

    def __init__(self, runs: dict[str, dict[str, float]]) -> None:
        self.runs = runs
        self.down = False
        self.calls: list[str] = []

    def metrics(self, model_name: str, model_version: str) -> dict[str, float]:
        self.calls.append(model_version)
        if self.down:
            raise RegistryUnavailableError("connection refused")
        if model_version not in self.runs:
            raise UnknownVersionError(f"no version {model_version}")
        return self.runs[model_version]


class BrokenReader(CaptureReader):
    """A capture whose storage fails, until ``fixed``."""

    fixed = False

    def connect(self, since: Any = None) -> Any:
        if not self.fixed:
            raise OSError("capture bucket unreachable")
        return super().connect(since)


@pytest.fixture
def capture(tmp_path: Path) -> CaptureWriter:
    writer = CaptureWriter(tmp_path / "capture")
    writer.predictions([Prediction(f"a-{i}", 0.8, "1", NOW - timedelta(hours=1)) for i in range(5)])
    writer.outcomes([Outcome(f"a-{i}", i < 4, NOW - timedelta(minutes=5)) for i in range(5)])
    return writer


def service(
    reader: CaptureReader, registry: FakeRegistry | None = None, interval: float = 60.0
) -> MonitorService:
    return MonitorService(
        reader=reader,
        window=LiveWindow(1000, 24),
        interval_seconds=interval,
        metrics=MonitorMetrics(CollectorRegistry()),
        offline=OfflineMetrics(registry),
    )


def runs(svc: MonitorService, result: str) -> float:
    value = svc.metrics.registry.get_sample_value("scorer_monitor_runs_total", {"result": result})
    assert value is not None
    return value


def test_health_is_503_until_a_computation_succeeded(capture: CaptureWriter) -> None:
    svc = service(CaptureReader.from_uri(capture.uri))
    ok, body = svc.health()
    assert not ok
    assert body["status"] == "starting"
    assert svc.run_once() is not None
    ok, body = svc.health()
    assert ok
    assert body["status"] == "ok"
    assert body["versions"] == [f"{MODEL} v1"]
    assert body["records"] == 5


def test_a_failed_computation_is_counted_reported_and_retried(capture: CaptureWriter) -> None:
    reader = BrokenReader(CaptureReader.from_uri(capture.uri).location)
    svc = service(reader)
    assert svc.run_once() is None
    assert runs(svc, "failure") == 1
    ok, body = svc.health()
    assert not ok
    assert "capture bucket unreachable" in body["reason"]

    reader.fixed = True
    assert svc.run_once() is not None
    assert runs(svc, "success") == 1
    assert svc.health()[0]


def test_health_goes_stale_when_successes_stop(capture: CaptureWriter) -> None:
    reader = BrokenReader(CaptureReader.from_uri(capture.uri).location)
    reader.fixed = True
    svc = service(reader, interval=0.02)
    svc.run_once()
    reader.fixed = False
    svc.run_once()
    assert svc.health()[0]  # one failure right after a success: still fresh
    assert svc.last is not None
    time.sleep(3 * svc.interval_seconds + svc.last.seconds + 0.1)  # past STALE_AFTER_INTERVALS
    ok, body = svc.health()
    assert not ok
    assert body["status"] == "stale"
    assert "capture bucket unreachable" in body["reason"]
    # The last good figures keep being served meanwhile.
    labelled = svc.metrics.registry.get_sample_value(
        "scorer_live_labelled_records", {"model_name": MODEL, "model_version": "1"}
    )
    assert labelled == 5


def test_offline_metrics_are_fetched_once_per_version(capture: CaptureWriter) -> None:
    registry = FakeRegistry({"1": {"test_roc_auc": 0.93, "test_accuracy": 0.87, "threshold": 0.4}})
    svc = service(CaptureReader.from_uri(capture.uri), registry)
    svc.run_once()
    svc.run_once()
    assert registry.calls == ["1"]
    assert svc.offline.known == {(MODEL, "1"): {"roc_auc": 0.93, "accuracy": 0.87}}
    got = svc.metrics.registry.get_sample_value(
        "scorer_offline_roc_auc", {"model_name": MODEL, "model_version": "1"}
    )
    assert got == 0.93


def test_registry_down_keeps_what_is_known_and_logs_once(
    capture: CaptureWriter, caplog: pytest.LogCaptureFixture
) -> None:
    registry = FakeRegistry(
        {"1": {"test_roc_auc": 0.93, "test_accuracy": 0.87}, "2": {"test_roc_auc": 0.94}}
    )
    svc = service(CaptureReader.from_uri(capture.uri), registry)
    svc.run_once()
    registry.down = True
    capture.predictions([Prediction("b-1", 0.3, "2", NOW - timedelta(minutes=1))], partition=1)
    with caplog.at_level(logging.INFO, logger="stream_worker.monitor.offline"):
        for _ in range(3):
            assert svc.run_once() is not None  # the live figures do not wait for the registry
        assert svc.offline.known == {(MODEL, "1"): {"roc_auc": 0.93, "accuracy": 0.87}}
        assert svc.health()[1]["registry"] == "unavailable: connection refused"
        registry.down = False
        svc.run_once()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("registry unavailable" in m for m in messages) == 1
    assert sum("registry answers again" in m for m in messages) == 1
    assert svc.offline.known[(MODEL, "2")] == {"roc_auc": 0.94}
    assert "registry" not in svc.health()[1]


def test_a_version_the_registry_does_not_know_is_asked_once(capture: CaptureWriter) -> None:
    registry = FakeRegistry({})
    svc = service(CaptureReader.from_uri(capture.uri), registry)
    svc.run_once()
    svc.run_once()
    assert registry.calls == ["1"]
    assert svc.offline.known == {(MODEL, "1"): {}}


def test_an_unreachable_tracking_server_is_an_outage_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    source = MlflowOfflineSource(f"http://127.0.0.1:{free_port()}", "champion")
    with pytest.raises(RegistryUnavailableError, match="unreachable"):
        source.metrics(MODEL, "1")
    offline = OfflineMetrics(source)
    offline.refresh([(MODEL, "1")])
    assert offline.known == {}
    assert offline.outage is not None


def test_the_loop_recomputes_every_interval_until_stopped(capture: CaptureWriter) -> None:
    svc = service(CaptureReader.from_uri(capture.uri), interval=0.05)
    stop = threading.Event()
    loop = threading.Thread(target=svc.run, args=(stop,))
    loop.start()
    time.sleep(0.6)
    stop.set()
    loop.join(timeout=5)
    assert not loop.is_alive()
    assert runs(svc, "success") >= 3


# ------------------------------------------------------------------------------- CLI


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_monitor_rejects_a_zero_interval(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--interval", "0"]) == 2
    assert "--interval" in _one_line(capsys.readouterr().err)


def test_monitor_on_a_busy_port_ends_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import socket

    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(name, "1")  # restored afterwards: run_monitor sets defaults
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["monitor", "--port", str(port), "--capture-uri", str(tmp_path)])
    assert code == 1
    line = _one_line(capsys.readouterr().err)
    assert f"cannot listen on 127.0.0.1:{port}" in line


def test_a_capture_uri_is_logged_without_its_credentials() -> None:
    assert redacted("ftp://user:s3cret@host:21/capture") == "ftp://***@host:21/capture"
    assert redacted("s3://bucket/capture") == "s3://bucket/capture"
    assert redacted("/var/lib/capture") == "/var/lib/capture"
