"""A real worker: POST /predict has its own metrics, PSI waits for the window, lag drains to 0."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from kafka_helpers import consume_all
from stack_helpers import WorkerStack

from stream_worker.devtools import replay as tools
from stream_worker.devtools.processes import ManagedProcess
from trainer.model.columns import FEATURE_COLUMNS

pytestmark = pytest.mark.integration

MIN_RECORDS = 500


def _post(worker: ManagedProcess, body: bytes) -> tuple[int, dict[str, Any]]:
    assert worker.ready_url is not None
    url = worker.ready_url.replace("/health", "/predict")
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of ``name`` (labels as exported, "" for none)."""
    pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return {m.group(1) or "": float(m.group(2)) for m in pattern.finditer(text)}


def _wait_for(
    stack: WorkerStack, worker: ManagedProcess, check: Callable[[str], bool], timeout: float = 30
) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text: str = stack.metrics(worker)
        if check(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_predict_metrics_drift_window_and_lag_on_a_real_worker(worker_stack: WorkerStack) -> None:
    worker = worker_stack.start_worker(
        SCORER_DRIFT_WINDOW="1000", SCORER_DRIFT_MIN_RECORDS=str(MIN_RECORDS)
    )
    records = tools.test_records()[: 2 * MIN_RECORDS]

    # 1. Requests: answered, counted as requests, and nowhere in the stream's figures.
    for body in (b"{not json", b"[1]", b'{"applicant_id": "x"}'):
        status, answer = _post(worker, body)
        assert status == 400, answer
    for record in records[:5]:
        status, answer = _post(worker, json.dumps(record).encode())
        assert status == 200, answer
        assert answer["applicant_id"] == record["applicant_id"]
    text = worker_stack.metrics(worker)
    http = _samples(text, "scorer_http_predict_requests_total")
    assert http['{result="ok"}'] == 5
    assert http['{result="invalid"}'] == 3
    assert _samples(text, "scorer_http_predict_seconds_count") == {"": 8}
    assert set(_samples(text, "scorer_dead_letters_total").values()) == {0.0}
    assert set(_samples(text, "scorer_records_total").values()) == {0.0}
    assert _samples(text, "scorer_event_latency_seconds_count") == {"": 0}
    assert _samples(text, "scorer_drift_window_records") == {"": 0}

    # 2. Fewer scored records than the minimum: the window counts them, no PSI yet.
    first = MIN_RECORDS - 100
    tools.produce(worker_stack.bootstrap, worker_stack.input_topic, records[:first])
    assert len(consume_all(worker_stack.bootstrap, worker_stack.output_topic, first, 60)) == first
    text = _wait_for(
        worker_stack,
        worker,
        lambda t: _samples(t, "scorer_records_total").get('{outcome="scored"}') == first,
    )
    assert _samples(text, "scorer_drift_window_records") == {"": first}
    assert _samples(text, "scorer_feature_drift_psi") == {}
    assert _samples(text, "scorer_prediction_drift_psi") == {}

    # 3. Everything scored and acknowledged: the lag of every partition comes down to 0.
    text = _wait_for(
        worker_stack,
        worker,
        lambda t: (
            len(lag := _samples(t, "scorer_consumer_lag")) == 6 and set(lag.values()) == {0.0}
        ),
    )
    assert set(_samples(text, "scorer_consumer_lag").values()) == {0.0}, text

    # 4. Past the minimum: PSI for every feature and for the score.
    tools.produce(worker_stack.bootstrap, worker_stack.input_topic, records[first:])
    expected = len(records)
    text = _wait_for(
        worker_stack,
        worker,
        lambda t: _samples(t, "scorer_records_total").get('{outcome="scored"}') == expected,
        timeout=60,
    )
    assert _samples(text, "scorer_drift_window_records") == {"": 1000}
    assert len(_samples(text, "scorer_feature_drift_psi")) == len(FEATURE_COLUMNS)
    assert len(_samples(text, "scorer_prediction_drift_psi")) == 1
