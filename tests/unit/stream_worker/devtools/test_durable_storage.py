"""The argv and environment of a durable local broker and its S3 server (nothing is started)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from stream_worker.cli import main
from stream_worker.devtools.broker import (
    STORAGE_ENGINE,
    DurableStorage,
    LocalBroker,
    broker_command,
    child_environment,
    moto_command,
    moto_environment,
)
from stream_worker.exceptions import BrokerError

#: What a developer's shell may hold: real AWS settings, proxies, Tansu's and moto's own.
CALLER = {
    "PATH": "/usr/bin",
    "HOME": "/home/dev",
    "AWS_PROFILE": "production",
    "AWS_ACCESS_KEY_ID": "AKIAREALKEY",
    "AWS_SECRET_ACCESS_KEY": "real-secret",
    "AWS_SESSION_TOKEN": "real-token",
    "AWS_ENDPOINT": "https://s3.eu-west-1.amazonaws.com",
    "AWS_CA_BUNDLE": "/etc/ssl/corp.pem",
    "aws_region": "eu-west-1",
    "https_proxy": "http://proxy.corp:3128",
    "HTTP_PROXY": "http://proxy.corp:3128",
    "NO_PROXY": "localhost",
    "LISTENER_URL": "tcp://0.0.0.0:9092",
    "STORAGE_ENGINE": "postgres://db",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
    "MOTO_S3_CUSTOM_ENDPOINTS": "http://elsewhere",
}


@pytest.fixture
def caller_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in CALLER.items():
        monkeypatch.setenv(key, value)


@pytest.mark.usefixtures("caller_env")
def test_a_durable_broker_runs_tansu_on_s3_with_only_the_loopback_endpoint() -> None:
    broker = LocalBroker(port=19092, storage=DurableStorage(port=14566, bucket="chaos"))

    assert broker._command("/opt/tansu") == [
        "/opt/tansu", "broker",
        "--listener-url", "tcp://127.0.0.1:19092",
        "--advertised-listener-url", "tcp://127.0.0.1:19092",
        "--storage-engine", "s3://chaos/",
    ]  # fmt: skip
    env = broker._environment()
    assert {k: v for k, v in env.items() if k.upper().startswith("AWS_")} == {
        "AWS_ENDPOINT": "http://127.0.0.1:14566",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "tansu-local",
        "AWS_SECRET_ACCESS_KEY": "tansu-local-not-a-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    assert not {"LISTENER_URL", "STORAGE_ENGINE", "OTEL_EXPORTER_OTLP_ENDPOINT"} & env.keys()
    assert not [k for k in env if "proxy" in k.lower()]
    assert env["PATH"] == "/usr/bin"
    assert env["NO_COLOR"] == "1"


@pytest.mark.usefixtures("caller_env")
def test_a_memory_broker_gets_no_aws_settings_at_all() -> None:
    broker = LocalBroker(port=19092)

    assert broker._command("/opt/tansu")[-2:] == ["--storage-engine", STORAGE_ENGINE]
    assert not [k for k in broker._environment() if k.upper().startswith("AWS_")]


def test_broker_command_listens_and_advertises_loopback_only() -> None:
    argv = broker_command("tansu", 9999, "s3://tansu/")
    assert argv[argv.index("--listener-url") + 1] == "tcp://127.0.0.1:9999"
    assert argv[argv.index("--advertised-listener-url") + 1] == "tcp://127.0.0.1:9999"


def test_child_environment_drops_case_insensitively_and_adds_extra() -> None:
    env = child_environment(CALLER, {"AWS_ENDPOINT": "http://127.0.0.1:1"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/home/dev",
        "MOTO_S3_CUSTOM_ENDPOINTS": "http://elsewhere",  # moto_environment drops these
        "AWS_ENDPOINT": "http://127.0.0.1:1",
    }


def test_moto_runs_on_loopback_from_this_interpreter() -> None:
    assert moto_command(14566) == [
        sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "14566",
    ]  # fmt: skip
    assert moto_command(1, python="/usr/bin/python3")[0] == "/usr/bin/python3"


def test_moto_records_requests_only_with_a_data_dir(tmp_path: Path) -> None:
    assert moto_environment(CALLER, None) == {"PATH": "/usr/bin", "HOME": "/home/dev"}

    recording = DurableStorage(tmp_path).recording
    assert recording == tmp_path / "s3-requests.jsonl"
    env = moto_environment(CALLER, recording)
    assert env["MOTO_ENABLE_RECORDING"] == "true"
    assert env["MOTO_RECORDER_FILEPATH"] == str(recording)
    assert "MOTO_S3_CUSTOM_ENDPOINTS" not in env
    assert DurableStorage().recording is None


def test_durable_storage_names_its_engine_and_needs_a_port_for_its_endpoint() -> None:
    storage = DurableStorage(bucket="my.bucket-1")
    assert storage.bucket == "my.bucket-1"
    assert storage.storage_engine == "s3://my.bucket-1/"
    assert not storage.running
    assert storage.pid is None
    with pytest.raises(BrokerError, match=r"call start\(\) first"):
        _ = storage.endpoint
    assert DurableStorage(port=4566).broker_env()["AWS_ENDPOINT"] == "http://127.0.0.1:4566"


@pytest.mark.parametrize("bucket", ["", "ab", "Upper", "-dash", "under_score", "a" * 64])
def test_durable_storage_refuses_a_bucket_s3_would(bucket: str) -> None:
    with pytest.raises(BrokerError, match="invalid S3 bucket name"):
        DurableStorage(bucket=bucket)


def test_restart_of_a_broker_that_never_started_is_an_error() -> None:
    with pytest.raises(BrokerError, match=r"not running: call start\(\) first"):
        LocalBroker(storage=DurableStorage()).restart()


def test_the_cli_refuses_a_data_dir_without_durable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["broker", "--data-dir", str(tmp_path)]) == 2
    assert "--data-dir needs --durable" in capsys.readouterr().err
