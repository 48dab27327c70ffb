"""The secured path run for real, then every output searched for the password: the log lines
of the worker, the capture and the tools, /metrics, /health, /model_info, exception texts,
settings dumps and the MLflow runs' params and tags."""

from __future__ import annotations

import logging
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka_helpers import consume_all
from pydantic import SecretStr, ValidationError
from security_helpers import PASSWORD, WRONG_PASSWORD
from stack_helpers import ModelStore, WorkerStack

from stream_worker.devtools import replay as tools
from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import capture_process, console_script
from stream_worker.devtools.secured_broker import SecuredBroker
from stream_worker.exceptions import KafkaSecurityError
from stream_worker.kafka_security import KafkaSecurity, check_security
from stream_worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

RECORDS = 300


def _text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [console_script("stream-worker"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return f"{done.returncode}\n{done.stdout}\n{done.stderr}"


def _mlflow_records(store: ModelStore) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    texts = []
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            texts.append(repr(run.data.params))
            texts.append(repr(run.data.tags))
    for model in client.search_registered_models():
        texts.append(repr(model.tags))
        for version in client.search_model_versions(f"name='{model.name}'"):
            texts.append(repr(version.tags))
    assert texts, "the store has no MLflow run to search"
    return "\n".join(texts)


def test_no_password_in_logs_views_metrics_exceptions_or_mlflow(
    scram_stack: tuple[WorkerStack, KafkaSecurity],
    scram_broker: SecuredBroker,
    model_store: ModelStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stack, security = scram_stack
    assert isinstance(security, KafkaSecurity)
    assert security.sasl_password is not None
    assert security.sasl_password.get_secret_value() == PASSWORD
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []

    worker = stack.start_worker(SCORER_LOG_LEVEL="debug")
    capture_env = {
        **stack.env,
        "SCORER_CAPTURE_GROUP": f"capture-{tmp_path.name}",
        "SCORER_CAPTURE_URI": str(tmp_path / "capture"),
        "SCORER_CAPTURE_FLUSH_SECONDS": "1",
    }
    capture = capture_process(capture_env, free_port(), tmp_path / "capture.log")
    capture.start(timeout=90)
    try:
        outputs.append(_cli(stack.env, "produce", "--limit", str(RECORDS)))
        outputs.append(_cli(stack.env, "consume", "--limit", str(RECORDS), "--quiet"))
        assert f"{RECORDS} predictions" in outputs[-1], outputs[-1]
        tools.produce(
            stack.bootstrap, stack.input_topic, tools.test_records()[:10], security=security
        )
        got = consume_all(stack.bootstrap, stack.output_topic, RECORDS + 10, 60, security=security)
        assert len(got) >= RECORDS + 10
        assert worker.ready_url is not None
        base = worker.ready_url.removesuffix("/health")
        for path in ("/health", "/model_info", "/metrics", "/example_request"):
            outputs.append(_text(base + path))
        assert capture.ready_url is not None
        outputs.append(_text(capture.ready_url))
        outputs.append(_text(capture.ready_url.replace("/health", "/metrics")))
    finally:
        capture.stop()
        worker.stop()
    outputs.append(worker.log_path.read_text())
    outputs.append(capture.log_path.read_text())

    # Exception texts: a refusal, a settings error that holds the password, the dumps.
    try:
        check_security(stack.bootstrap, scram_broker.security(password=WRONG_PASSWORD))
    except KafkaSecurityError as exc:
        outputs += [str(exc), repr(exc)]
    else:
        pytest.fail("a wrong password was accepted")
    try:
        KafkaSecurity(security_protocol="PLAINTEXT", sasl_password=SecretStr(PASSWORD))
    except ValidationError as exc:
        outputs += [str(exc), repr(exc), repr(exc.errors())]
    else:
        pytest.fail("a password without SASL was accepted")
    settings = WorkerSettings(kafka_security=security)
    outputs += [repr(settings), str(settings), settings.model_dump_json(), repr(security)]
    outputs.append(_mlflow_records(model_store))
    outputs.append(caplog.text)
    outputs.append(scram_broker.broker.output_tail() if scram_broker.broker else "")

    everything = "\n".join(outputs)
    assert "adult-income" in everything  # the views were really read
    assert PASSWORD not in everything
    assert WRONG_PASSWORD not in everything
