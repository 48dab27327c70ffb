"""``stream-worker monitor``: recompute live performance from the capture every interval.

One loop in the main thread: read the capture, compute the snapshot, fetch offline metrics
of versions not seen before, publish. A failed computation (capture unreachable, anything
unexpected) is counted and reported by ``/health``; the last good snapshot keeps being served
and the next interval tries again. Nothing is kept between computations but caches of
immutable things (capture files already read, offline metrics of a version), so the process
can be restarted, or run beside any number of scoring workers, without double counting.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry

from stream_worker.capture.store import CaptureReader
from stream_worker.exceptions import ConfigError, one_line
from stream_worker.monitor.exporter import MonitorMetrics, serve_http
from stream_worker.monitor.live import LiveSnapshot, LiveWindow, compute_snapshot
from stream_worker.monitor.offline import MlflowOfflineSource, OfflineMetrics
from stream_worker.settings import WorkerSettings

log = logging.getLogger(__name__)

#: /health turns 503 when the last success is older than this many intervals.
STALE_AFTER_INTERVALS = 3


def redacted(uri: str) -> str:
    """``uri`` without the user-info part (``scheme://user:secret@host/...``), for logs."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


class MonitorService:
    def __init__(
        self,
        reader: CaptureReader,
        window: LiveWindow,
        interval_seconds: float,
        metrics: MonitorMetrics,
        offline: OfflineMetrics,
    ) -> None:
        self.reader = reader
        self.window = window
        self.interval_seconds = interval_seconds
        self.metrics = metrics
        self.offline = offline
        self.last: LiveSnapshot | None = None
        self.last_error: str | None = None
        self._last_success_monotonic: float | None = None
        self._versions: tuple[tuple[str, str], ...] = ()
        self._unreadable = 0

    def run_once(self, now: datetime | None = None) -> LiveSnapshot | None:
        """One computation; never raises. The snapshot, or None if it failed."""
        try:
            snapshot = compute_snapshot(self.reader, self.window, now)
        except Exception as exc:  # the capture unreachable, a bug: report, retry next time
            self.last_error = one_line(exc)
            self.metrics.failed()
            log.warning("live performance computation failed: %s", self.last_error)
            return None
        keys = tuple((v.model_name, v.model_version) for v in snapshot.versions)
        self.offline.refresh(keys)
        self.metrics.succeeded(snapshot, self.offline.known)
        self.last, self.last_error = snapshot, None
        self._last_success_monotonic = time.monotonic()
        self._log_changes(snapshot, keys)
        return snapshot

    def _log_changes(self, snapshot: LiveSnapshot, keys: tuple[tuple[str, str], ...]) -> None:
        if keys != self._versions:
            log.info(
                "live performance over %d records: versions %s (%.2fs)",
                snapshot.records,
                ", ".join(f"{n} v{v}" for n, v in keys) or "none yet",
                snapshot.seconds,
            )
            self._versions = keys
        unreadable = len(snapshot.health.unreadable_files)
        if unreadable != self._unreadable:
            log.warning("%d unreadable capture files are skipped", unreadable)
            self._unreadable = unreadable
        log.debug("recomputed in %.3fs", snapshot.seconds)

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(healthy, details): healthy once a computation succeeded, and recently."""
        body: dict[str, Any] = {"interval_seconds": self.interval_seconds}
        if self.offline.outage is not None:
            body["registry"] = f"unavailable: {self.offline.outage}"
        if self.last is None or self._last_success_monotonic is None:
            body["status"] = "starting"
            body["reason"] = self.last_error or "no computation has finished yet"
            return False, body
        body |= {
            "last_success": self.last.computed_at.isoformat(),
            "seconds": round(self.last.seconds, 3),
            "records": self.last.records,
            "versions": [f"{v.model_name} v{v.model_version}" for v in self.last.versions],
            "unreadable_files": len(self.last.health.unreadable_files),
        }
        age = time.monotonic() - self._last_success_monotonic
        stale_after = STALE_AFTER_INTERVALS * self.interval_seconds + self.last.seconds
        if age > stale_after:
            body["status"] = "stale"
            body["reason"] = (
                f"no successful computation for {age:.0f}s: {self.last_error or 'still running'}"
            )
            return False, body
        body["status"] = "ok"
        if self.last_error is not None:
            body["last_error"] = self.last_error
        return True, body

    def run(self, stop: threading.Event) -> None:
        """Recompute every interval until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            self.run_once()
            stop.wait(max(0.0, self.interval_seconds - (time.monotonic() - started)))


def build_service(settings: WorkerSettings, registry: CollectorRegistry) -> MonitorService:
    source = MlflowOfflineSource(settings.mlflow_tracking_uri, settings.model_alias)
    return MonitorService(
        reader=CaptureReader.from_uri(settings.capture_uri),
        window=LiveWindow(settings.monitor_window_records, settings.monitor_window_hours),
        interval_seconds=settings.monitor_interval_seconds,
        metrics=MonitorMetrics(registry),
        offline=OfflineMetrics(source),
    )


def run_monitor(settings: WorkerSettings) -> None:
    """Serve metrics on ``monitor_host:monitor_port`` and recompute until SIGINT/SIGTERM."""
    from trainer.registry import configure_http_client

    # Offline metrics are a nicety: an unreachable tracking server must not hold a run up.
    configure_http_client(timeout_seconds=5, retries=0)
    registry = CollectorRegistry()
    service = build_service(settings, registry)
    try:
        server = serve_http(registry, service.health, settings.monitor_host, settings.monitor_port)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {settings.monitor_host}:{settings.monitor_port}: {one_line(exc)}"
        ) from exc
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "monitor on http://%s:%d/metrics: capture %s, every %gs, newest %d labelled in %g h",
        settings.monitor_host,
        settings.monitor_port,
        redacted(settings.capture_uri),
        settings.monitor_interval_seconds,
        settings.monitor_window_records,
        settings.monitor_window_hours,
    )
    try:
        service.run(stop)
    finally:
        server.shutdown()
        server.server_close()
        log.info("monitor stopped at %s", datetime.now(UTC).isoformat())
