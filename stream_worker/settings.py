"""Every setting of the worker and its tools, and the only place their env names live."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from stream_worker.kafka_security import KafkaSecurity
from stream_worker.runtime.tuning import FETCH_MAX_WAIT_MS, PRODUCER_MAX_REQUEST_BYTES


def _standard(name: str, default: str) -> Any:
    """A setting read from its standard env name, or from ``SCORER_<name>``."""
    return Field(default=default, validation_alias=AliasChoices(name, f"SCORER_{name}"))


class WorkerSettings(BaseSettings):
    """Settings of the scorer; env prefix ``SCORER_`` (plus the standard Kafka/MLflow names)."""

    model_config = SettingsConfigDict(env_prefix="SCORER_", frozen=True, extra="ignore")

    kafka_bootstrap_servers: str = _standard("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    # TLS and SASL of every Kafka client, from the KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and
    # KAFKA_SSL_* variables (stream_worker.kafka_security); the password is a SecretStr.
    kafka_security: KafkaSecurity = Field(default_factory=KafkaSecurity)
    mlflow_tracking_uri: str = _standard("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    app_id: str = "income-scorer"
    input_topic: str = "applicants"
    output_topic: str = "predictions"
    dlq_topic: str = "applicants.dlq"
    outcomes_topic: str = "outcomes"
    outcomes_dlq_topic: str = "outcomes.dlq"
    topic_partitions: int = Field(default=6, ge=1)
    model_name: str = "adult-income"
    model_alias: str = "champion"
    batch_max: int = Field(default=2000, ge=1)
    # 20 ms: at 2,000 records/s a 5 ms window (or none) sends four times the produce requests,
    # and on Tansu that raised the p99 from ~104 to 124-177 ms (docs/benchmark.md). Under
    # load batches fill to batch_max before the window ends, so throughput does not change.
    batch_window_seconds: float = Field(default=0.02, gt=0)
    # How long a fetch may wait for records: short for latency. Tansu's S3 storage
    # (`broker --durable`) answers fetches this short empty; give it 500.
    fetch_max_wait_ms: int = Field(default=FETCH_MAX_WAIT_MS, ge=1, le=10_000)
    reload_interval_seconds: float = Field(default=10.0, gt=0)
    drift_window: int = Field(default=5000, ge=100)
    # PSI is published only once the drift window holds this many scored records: a fresh
    # window (worker start, new model version) says nothing yet. At most drift_window.
    drift_min_records: int = Field(default=1000, ge=1)
    max_record_bytes: int = Field(default=65536, ge=1024)
    # A dead letter's value is cut above this (its headers then carry the original size and
    # SHA-256); key and headers are capped too, and 8 KiB is left for them and the framing,
    # so a dead letter always fits the producer's request limit and its send cannot fail.
    dlq_max_value_bytes: int = Field(
        default=1_000_000, ge=1024, le=PRODUCER_MAX_REQUEST_BYTES - 8 * 1024
    )
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    data_dir: str = "/tmp/income-scorer"
    session_timeout_seconds: float = Field(default=8.0, gt=0)
    heartbeat_interval_seconds: float = Field(default=2.0, gt=0)
    log_level: str = "info"
    # The capture (stream-worker capture): Parquet per topic at a local folder or fsspec URI.
    capture_uri: str = "capture"
    capture_group: str = "income-scorer-capture"
    capture_flush_records: int = Field(default=20000, ge=1)
    capture_flush_seconds: float = Field(default=5.0, gt=0)
    capture_port: int = Field(default=6069, ge=1, le=65535)
    capture_host: str = "127.0.0.1"  # a container sets 0.0.0.0 so Prometheus can scrape it
    # Added to the capture's CPU niceness: on a shared host the scoring hot path comes first.
    capture_nice: int = Field(default=10, ge=0, le=19)
    # Live performance (stream-worker monitor): per model version, over the last N labelled
    # records observed in the last T hours, recomputed from the capture every interval.
    monitor_interval_seconds: float = Field(default=60.0, gt=0)
    monitor_window_records: int = Field(default=50000, ge=10)
    monitor_window_hours: float = Field(default=24.0, gt=0)
    monitor_port: int = Field(default=6068, ge=1, le=65535)
    # Loopback by default; a container sets 0.0.0.0 so Prometheus can scrape it.
    monitor_host: str = "127.0.0.1"

    def topics(self) -> list[str]:
        """Every topic the system uses, created together up front (Tansu would auto-create a
        missing one with 4 partitions)."""
        return [
            self.input_topic,
            self.output_topic,
            self.dlq_topic,
            self.outcomes_topic,
            self.outcomes_dlq_topic,
        ]

    @model_validator(mode="after")
    def _drift_min_records_fit_the_window(self) -> WorkerSettings:
        if self.drift_min_records > self.drift_window:
            raise ValueError(
                f"drift_min_records ({self.drift_min_records}) must not exceed drift_window "
                f"({self.drift_window}): the window could never hold enough records"
            )
        return self
