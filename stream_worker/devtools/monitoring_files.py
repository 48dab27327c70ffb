"""The shipped ``monitoring/`` files, and a Prometheus config for workers on loopback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from stream_worker.exceptions import ConfigError

JOB = "income-scorer"
MONITOR_JOB = "income-scorer-monitor"  # `stream-worker monitor`, as in prometheus.yml


def monitoring_dir() -> Path:
    """``monitoring/`` of the source tree (the project is installed editable, as make does)."""
    folder = Path(__file__).resolve().parents[2] / "monitoring"
    if not folder.is_dir():
        raise ConfigError(f"monitoring files not found at {folder}")
    return folder


def alert_rules_path() -> Path:
    return monitoring_dir() / "prometheus" / "alerts.yml"


def dashboards() -> list[Path]:
    return sorted((monitoring_dir() / "grafana" / "dashboards").glob("*.json"))


def local_prometheus_config(
    dest: Path,
    targets: Sequence[str],
    interval: str = "2s",
    monitor_targets: Sequence[str] = (),
) -> Path:
    """A scrape config for worker ``targets`` (and ``monitor_targets``, the live-performance
    monitors) with the shipped alert rules; short intervals for demos."""
    jobs = [(JOB, targets)] + ([(MONITOR_JOB, monitor_targets)] if monitor_targets else [])
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(alert_rules_path())],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": list(job_targets)}],
            }
            for job, job_targets in jobs
        ],
    }
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest
