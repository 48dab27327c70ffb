"""The ``trainer`` console script as a user runs it: bad input ends in one readable line.

Every test runs the installed script in a subprocess with a private environment: a fresh
SQLite MLflow store and Prefect home in ``tmp_path``, quick training settings, no telemetry.
These cases get past argument parsing, so the whole of stderr includes what the trainer's own
logging setup and Prefect print: only a process of its own shows it. One test runs the real
Prefect flow end to end (Prefect starts its own server on 127.0.0.1). Usage errors, which end
before any of that, are checked in-process in tests/unit/trainer/test_cli.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainer import dataset

pytestmark = pytest.mark.integration

TRAINER = Path(sys.executable).with_name("trainer")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRAINER_", "MLFLOW_", "PREFECT_")) and k != "DO_NOT_TRACK"
    }
    env.update(
        {
            "PREFECT_HOME": str(tmp_path / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            "TRAINER_TRIALS": "1",
            "TRAINER_MAX_ROUNDS": "60",
            "TRAINER_EARLY_STOPPING_ROUNDS": "20",
            "TRAINER_N_JOBS": "1",
        }
    )
    env.update(extra)
    return env


def _trainer(
    tmp_path: Path, *args: str, timeout: float = 180, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TRAINER), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(tmp_path, **env),
        cwd=tmp_path,
        check=False,
    )


def _one_line(stderr: str) -> str:
    """The whole of stderr, which must be exactly one line and no traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _registered_versions(uri: str) -> list[str]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return [v.version for v in client.search_model_versions("name='adult-income'")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_tracking_server_is_one_line_and_trains_nothing(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"
    out = _trainer(tmp_path, "run", "--no-flow", "--tracking-uri", uri, timeout=120)
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert line.startswith(f"trainer: MLflow tracking server {uri} is unreachable")
    assert out.stdout == ""


def test_unreachable_tracking_server_through_the_flow_ends_in_one_line(tmp_path: Path) -> None:
    """The default path (Prefect): its task logs may precede, but no traceback, one last line."""
    uri = f"http://127.0.0.1:{_free_port()}"
    out = _trainer(tmp_path, "run", "--tracking-uri", uri, timeout=240)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"trainer: MLflow tracking server {uri} is unreachable")
    assert out.stdout == ""


def _data_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "adult"
    shutil.copytree(dataset.bundled_dir(), folder)
    return folder


def _rewrite_sums(folder: Path) -> None:
    lines = [
        f"{hashlib.sha256((folder / name).read_bytes()).hexdigest()}  {name}"
        for name in dataset.DATA_FILES
    ]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def _append_row(folder: Path) -> str:
    with (folder / "adult.data").open("a") as fh:
        fh.write("39, Private, 1, Bachelors, 13, Never-married, Sales, Own-child, White, ")
        fh.write("Male, 0, 0, 40, United-States, <=50K\n")
    return "checksum mismatch for "


def _empty_test_file(folder: Path) -> str:
    (folder / "adult.test").write_text("")
    _rewrite_sums(folder)
    return "adult.test is empty"


def _truncate_mid_row(folder: Path) -> str:
    path = folder / "adult.data"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2].rsplit(b",", 3)[0] + b"\n")  # cut inside a row
    _rewrite_sums(folder)
    return "adult.data looks truncated"


@pytest.mark.parametrize("damage", [_append_row, _empty_test_file, _truncate_mid_row])
def test_damaged_data_is_one_line_and_nothing_is_registered(
    tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    folder = _data_copy(tmp_path)
    expected = damage(folder)
    uri = _store(tmp_path)
    out = _trainer(
        tmp_path, "run", "--no-flow", "--tracking-uri", uri, TRAINER_DATA_DIR=str(folder)
    )
    assert out.returncode == 1
    line = _one_line(out.stderr)
    assert line.startswith("trainer: ")
    assert expected in line
    assert _registered_versions(uri) == []


def test_real_flow_trains_registers_and_promotes(tmp_path: Path) -> None:
    """``trainer run`` runs the Prefect flow (tasks, retries, a temporary Prefect server)."""
    uri = _store(tmp_path)
    out = _trainer(
        tmp_path, "run", "--tracking-uri", uri, timeout=300, TRAINER_GATE_MIN_ROC_AUC="0.85"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["version"] == "1"
    assert result["promoted"] is True
    assert result["metrics"]["test_roc_auc"] > 0.85
    assert 0.0 < result["metrics"]["threshold"] < 1.0
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("adult-income", "champion").version) == "1"
    run = client.get_run(result["run_id"])
    assert run.data.params["trials_requested"] == "1"
    # artifacts sit beside the store, not in the working directory
    assert (tmp_path / "mlartifacts").is_dir()
    assert not (tmp_path / "mlruns").exists()
    # the flow ran under Prefect: the flow run and its six tasks are recorded as completed
    prefect_db = tmp_path / "prefect" / "prefect.db"
    with sqlite3.connect(prefect_db) as db:
        flow_runs = db.execute("SELECT state_type FROM flow_run").fetchall()
        task_runs = db.execute("SELECT state_type FROM task_run").fetchall()
    assert flow_runs == [("COMPLETED",)]
    assert task_runs == [("COMPLETED",)] * 6
