"""``trainer schedule`` fires for real: a scheduled run registers a version, the gate decides,
and a running worker serves the version it promoted.

The console script runs as a user starts it, with no PREFECT_API_URL: it starts its own Prefect
server on 127.0.0.1 and must stop it again on SIGTERM. Argument errors are checked in-process in
tests/unit/trainer/test_schedule.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from stack_helpers import ModelStore, WorkerStack

from stream_worker.devtools.processes import ManagedProcess

pytestmark = pytest.mark.integration

TRAINER = Path(sys.executable).with_name("trainer")
MODEL = "adult-income"
# Short enough for a quick test, long enough that the run does not fire before serve is up.
INTERVAL_SECONDS = 15
T = TypeVar("T")


def _wait_for(what: str, probe: Callable[[], T | None], timeout: float, log: ManagedProcess) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(1)
    raise AssertionError(f"{what} not within {timeout:.0f} s; {log.name} log: {log.tail(8)}")


def _model_info(worker: ManagedProcess) -> dict[str, Any]:
    assert worker.ready_url is not None
    url = worker.ready_url.replace("/health", "/model_info")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
    except urllib.error.HTTPError as err:
        return dict(json.loads(err.read()))


def _server_pid(scheduler: ManagedProcess) -> int | None:
    """The local server's pid, from the line ``trainer schedule`` logs when it is ready."""
    text = scheduler.log_path.read_text(errors="replace")
    found = re.search(r"local Prefect server \(pid (\d+)\) ready at http://127\.0\.0\.1:", text)
    return int(found.group(1)) if found else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(300)
def test_the_schedule_fires_and_the_worker_serves_the_promoted_version(
    worker_stack: WorkerStack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path / "store")
    champion = store.register()
    client = MlflowClient(tracking_uri=store.uri, registry_uri=store.uri)
    worker = worker_stack.start_worker(MLFLOW_TRACKING_URI=store.uri)
    assert str(_model_info(worker)["version"]) == str(champion)

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the local server, not the caller's
    scheduler = ManagedProcess(
        "trainer schedule",
        [str(TRAINER), "schedule", "--interval", str(INTERVAL_SECONDS), "--trials", "1"],
        None,
        tmp_path / "schedule.log",
        env={
            "MLFLOW_TRACKING_URI": store.uri,
            "PREFECT_HOME": str(tmp_path / "prefect-client"),
            "TRAINER_PREFECT_HOME": str(tmp_path / "prefect-server"),
            # The quick settings of ModelStore.settings, and a gate that promotes the new version.
            "TRAINER_MAX_ROUNDS": "120",
            "TRAINER_EARLY_STOPPING_ROUNDS": "10",
            "TRAINER_TIMEOUT_SECONDS": "60",
            "TRAINER_GATE_MIN_ROC_AUC": "0.5",
            "TRAINER_GATE_TOLERANCE": "1.0",
        },
        cwd=tmp_path,
    )
    scheduler.start()
    try:

        def gated_version() -> dict[str, str] | None:
            try:
                tags = client.get_model_version(MODEL, str(int(champion) + 1)).tags
            except MlflowException:
                return None
            return dict(tags) if "gate" in tags else None

        # Server start (about 20 s on 2 cores), the interval, a quick training run.
        tags = _wait_for("a scheduled version with a gate decision", gated_version, 200, scheduler)
        assert tags["gate"] == "passed", tags
    finally:
        scheduler.stop(grace=60)
        server_pid = _server_pid(scheduler)
        outlived = server_pid is not None and _alive(server_pid)
        if outlived and server_pid is not None:  # never left behind, whatever failed
            os.killpg(server_pid, signal.SIGKILL)
    assert server_pid is not None, scheduler.tail(8)
    assert not outlived, f"the local Prefect server (pid {server_pid}) outlived trainer schedule"
    assert scheduler.process is not None
    assert scheduler.process.returncode == 0, scheduler.tail(8)  # a graceful stop on SIGTERM
    assert "local Prefect server stopped" in scheduler.log_path.read_text(errors="replace")

    # Another run may have fired and been promoted meanwhile: the worker follows the alias.
    promoted = str(client.get_model_version_by_alias(MODEL, "champion").version)
    assert int(promoted) > int(champion)
    assert client.get_model_version(MODEL, promoted).tags["gate"] == "passed"

    deadline = time.monotonic() + 30  # the worker polls the alias every second
    while True:
        served = _model_info(worker).get("version")
        if str(served) == promoted or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert str(served) == promoted, f"the worker serves {served!r}: {worker.tail(8)}"
