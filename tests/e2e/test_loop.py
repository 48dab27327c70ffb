"""The loop, driven as a user would: outcomes come back, live performance, retrain, swap.

Two workers score the replayed test split with outcomes (one is killed mid-stream), the
capture archives applicants, predictions and outcomes, the monitor joins them; then the
trainer retrains on the labelled capture, the gate scores both models on the same rows, the
surviving worker swaps to the new version and the monitor shows live figures for both.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from capture_helpers import CaptureStack, wait_until
from stack_helpers import ModelStore

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import ManagedProcess, monitor_process
from trainer.registry import Registry, connect

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

BIN = Path(sys.executable).parent
TEST_ROWS = 16281


def _scrape(proc: ManagedProcess) -> dict[tuple[str, str], float]:
    """{(metric name, label text): value} of a process's /metrics."""
    assert proc.ready_url is not None
    url = proc.ready_url.replace("/health", "/metrics")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+)(\{[^}]*\})? ([-0-9.e+naNinf]+)$", line)
        if match:
            found[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return found


def _live(proc: ManagedProcess, name: str, version: str, extra: str = "") -> float | None:
    for (metric, labels), value in _scrape(proc).items():
        if metric == name and f'model_version="{version}"' in labels and extra in labels:
            return value
    return None


def _model_version(worker: ManagedProcess) -> str | None:
    assert worker.ready_url is not None
    try:
        url = worker.ready_url.replace("/health", "/model_info")
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(orjson.loads(resp.read()).get("version"))
    except OSError:
        return None


def _run(argv: list[str], env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(
        argv, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc.stdout


def _wait_labelled(monitor: ManagedProcess, version: str, expected: int) -> float | None:
    return wait_until(
        lambda: _live(monitor, "scorer_live_labelled_records", version),
        lambda n: n is not None and n >= expected,
        timeout=180,
    )


def test_outcomes_live_performance_retrain_and_swap(
    capture_stack: CaptureStack, tmp_path: Path
) -> None:
    stack = capture_stack.stack
    # A model trained as production trains (early stopping, no round cap worth the name), so
    # its probabilities are calibrated enough for the label-free estimate to mean something.
    store = ModelStore(tmp_path / "mlflow")
    v1 = store.register(max_rounds=2000, early_stopping_rounds=50)
    registry = Registry(connect(store.uri), "adult-income", "champion")
    offline = registry.metrics(v1)
    stack.env.update(MLFLOW_TRACKING_URI=store.uri, SCORER_MONITOR_INTERVAL_SECONDS="1")

    capture = capture_stack.start_capture(wait=False)
    workers = [stack.start_worker(), stack.start_worker()]
    assert capture.ready_url is not None
    capture.wait_ready(90)
    monitor = monitor_process(stack.env, free_port(), tmp_path / "monitor.log")
    monitor.start(timeout=90)
    try:
        # 1. Replay the whole test split with its outcomes; kill -9 one worker mid-stream.
        produce = [str(BIN / "stream-worker"), "produce", "--outcomes", "--outcome-delay", "2"]
        replay = subprocess.Popen(
            [*produce, "--rate", "3000"],
            env={**os.environ, **stack.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(3)
        workers[0].kill()
        out, _ = replay.communicate(timeout=180)
        assert replay.returncode == 0, out
        assert f"sent {TEST_ROWS} records" in out, out
        assert f"{TEST_ROWS} outcomes" in out, out

        # 2. Every applicant is labelled exactly once in the live figures, kill or not, and
        #    they agree with the offline test metrics of the same version on the same rows.
        assert _wait_labelled(monitor, v1, TEST_ROWS) == TEST_ROWS
        live_auc = _live(monitor, "scorer_live_roc_auc", v1)
        live_acc = _live(monitor, "scorer_live_accuracy", v1)
        estimate = _live(monitor, "scorer_live_estimated_accuracy", v1, 'population="labelled"')
        assert live_auc is not None
        assert live_acc is not None
        assert estimate is not None
        assert abs(live_auc - offline["test_roc_auc"]) <= 0.002, (live_auc, offline)
        assert abs(live_acc - offline["test_accuracy"]) <= 0.005, (live_acc, offline)
        assert abs(estimate - live_acc) <= 0.02, (estimate, live_acc)
        con, counts = capture_stack.counts()
        unique = con.sql("SELECT count(*) FROM scored WHERE outcome IS NOT NULL").fetchall()
        assert unique[0][0] == TEST_ROWS
        assert counts.unique_predictions == TEST_ROWS

        # 3. Retrain on the capture: the gate scores champion and candidate on the same rows.
        result_file = tmp_path / "retrain.json"
        trainer_env = {
            **stack.env,
            "TRAINER_TRIALS": "1",
            "TRAINER_TIMEOUT_SECONDS": "60",
            "TRAINER_GATE_TOLERANCE": "0.05",  # this test is about the loop, not the margin
            "PREFECT_HOME": str(tmp_path / "prefect"),
        }
        _run(
            [str(BIN / "trainer"), "run", "--no-flow", "--capture-uri", capture_stack.uri,
             "--tracking-uri", store.uri, "--result-json", str(result_file)],
            trainer_env,
        )  # fmt: skip
        outcome: dict[str, Any] = orjson.loads(result_file.read_bytes())
        v2 = str(outcome["version"])
        assert outcome["promoted"], outcome["reason"]
        assert "same" in outcome["reason"]
        assert f"version {v1}" in outcome["reason"]
        run = registry.client.get_run(outcome["run_id"])
        contexts = {
            tag.value
            for d in run.inputs.dataset_inputs
            for tag in d.tags
            if tag.key == "mlflow.data.context"
        }
        assert {"training", "evaluation"} <= contexts, contexts

        # 4. The surviving worker follows the alias; fresh applicants get the new version.
        survivor = workers[1]
        assert wait_until(lambda: _model_version(survivor), lambda v: v == v2, 60) == v2
        fresh = 3000
        out = _run(
            [*produce, "--start", str(TEST_ROWS), "--limit", str(fresh)], stack.env, timeout=120
        )
        assert f"sent {fresh} records" in out, out
        assert _wait_labelled(monitor, v2, fresh) == fresh
        assert _live(monitor, "scorer_live_labelled_records", v1) == TEST_ROWS
        assert (_live(monitor, "scorer_live_roc_auc", v2) or 0) > 0.85
    finally:
        monitor.stop()
