"""A wrong password, an unknown CA and a wrong mechanism: the tools end with one readable line
and a non-zero exit; the worker answers /health 503, logs one line and does not retry."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from security_helpers import USER, WRONG_PASSWORD
from stack_helpers import ModelStore

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import LOOPBACK, console_script, worker_process
from stream_worker.devtools.secured_broker import SecuredBroker
from stream_worker.kafka_security import KafkaSecurity

pytestmark = pytest.mark.integration

#: case -> (client settings on the SCRAM-SHA-512 broker, what the one line must say)
Case = Callable[[SecuredBroker], KafkaSecurity]
CASES: dict[str, tuple[Case, str]] = {
    "wrong-password": (
        lambda b: b.security(password=WRONG_PASSWORD),
        f"refused the credentials of user {USER!r} with SCRAM-SHA-512",
    ),
    "unknown-ca": (
        lambda b: b.security(cafile=b.pki.other_ca_cert if b.pki else None),
        "certificate is not trusted (unable to get local issuer certificate)",
    ),
    "wrong-mechanism": (
        lambda b: b.security(mechanism="SCRAM-SHA-256"),
        "does not offer SASL mechanism SCRAM-SHA-256",
    ),
}


def _tool(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run(
        [console_script("stream-worker"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize(
    "command",
    [("produce", "--limit", "5"), ("consume", "--timeout", "2")],
    ids=["produce", "consume"],
)
def test_tool_refused_ends_with_one_line_and_non_zero_exit(
    scram_broker: SecuredBroker, case: str, command: tuple[str, ...]
) -> None:
    make, expected = CASES[case]
    assert scram_broker.front is not None
    failed_before = scram_broker.front.authentications["failed"]

    done, seconds = _tool(scram_broker.env(make(scram_broker)), *command)

    assert done.returncode == 1, done
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("stream-worker: ")
    assert expected in lines[0]
    assert WRONG_PASSWORD not in done.stderr + done.stdout
    # Refused once, not retried until a timeout: one attempt, in seconds.
    assert scram_broker.front.authentications["failed"] - failed_before <= 1
    assert seconds < 30


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


@pytest.mark.parametrize("case", sorted(CASES))
def test_worker_refused_health_503_one_log_line_no_retry_storm(
    scram_broker: SecuredBroker, model_store: ModelStore, tmp_path: Path, case: str
) -> None:
    make, expected = CASES[case]
    assert scram_broker.front is not None
    port = free_port()
    env = {
        **scram_broker.env(make(scram_broker)),
        "MLFLOW_TRACKING_URI": model_store.uri,
        "SCORER_DATA_DIR": str(tmp_path / "faust"),
    }
    worker = worker_process(env, port, tmp_path / "worker.log")
    health, worker.ready_url = worker.ready_url, None  # it never becomes ready
    assert health is not None
    failed_before = scram_broker.front.authentications["failed"]
    worker.start()
    try:
        deadline = time.monotonic() + 60
        status, body = _get(health)
        while status != 503 and time.monotonic() < deadline:
            assert worker.running, worker.tail()
            time.sleep(0.25)
            status, body = _get(health)
        assert status == 503, worker.tail()
        assert json.loads(body)["status"] == "kafka_refused"
        assert expected in json.loads(body)["reason"]
        after_refusal = scram_broker.front.authentications["failed"]
        time.sleep(3)
        assert _get(f"http://{LOOPBACK}:{port}/model_info")[0] == 503
        # No retry storm: one refused attempt, and none while it waits.
        assert after_refusal - failed_before <= 1
        assert scram_broker.front.authentications["failed"] == after_refusal
        assert worker.running
    finally:
        worker.stop()
    assert worker.process is not None
    assert worker.process.returncode != 0
    log = worker.log_path.read_text()
    refusals = [line for line in log.splitlines() if "Kafka refused this worker" in line]
    assert len(refusals) == 1, log
    assert expected in refusals[0]
    assert WRONG_PASSWORD not in log
