"""The capture process against a real broker, a real worker and real Parquet files."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from capture_helpers import CaptureStack, metric, wait_until
from kafka_helpers import consume_all

from stream_worker.capture.store import CaptureReader, labelled_applicants
from stream_worker.devtools import replay as tools
from stream_worker.devtools.processes import console_script

pytestmark = pytest.mark.integration

ARCHIVE_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def test_split() -> list[dict[str, Any]]:
    return tools.test_records()


def _complete(stack: CaptureStack) -> tuple[int, int, int]:
    """Unique predictions, unique outcomes and unique applicants in the capture."""
    con, counts = stack.counts()
    try:
        (apps,) = con.sql("SELECT count(*) FROM latest_applicants").fetchall()[0]
        return counts.unique_predictions, counts.unique_outcomes, int(apps)
    finally:
        con.close()


def _wait_archived(stack: CaptureStack, n: int) -> tuple[int, int, int]:
    return wait_until(lambda: _complete(stack), lambda c: c == (n, n, n), ARCHIVE_TIMEOUT)


def _produce_with_outcomes(stack: CaptureStack, records: list[dict[str, Any]], **kw: Any) -> Any:
    plan = tools.OutcomePlan(stack.outcomes_topic, delay=1.0)
    return tools.produce(
        stack.stack.bootstrap, stack.stack.input_topic, records, outcomes=plan, **kw
    )


def test_every_scored_id_is_archived_with_its_outcome(
    capture_stack: CaptureStack, test_split: list[dict[str, Any]]
) -> None:
    records = test_split[:3000]
    capture = capture_stack.start_capture(wait=False)  # joins while the worker loads its model
    capture_stack.stack.start_worker()
    capture.wait_ready(60)
    stats = _produce_with_outcomes(capture_stack, records)
    assert (stats.sent, stats.outcomes) == (len(records), len(records))

    n = len(records)
    assert _wait_archived(capture_stack, n) == (n, n, n)

    con, counts = capture_stack.counts()
    truth = {r["applicant_id"]: r["_label"] for r in records}
    scored = dict(con.sql("SELECT applicant_id, outcome FROM scored").fetchall())
    assert scored == truth  # every id scored, each with its true label
    # A clean run (no crash) archives each record exactly once.
    assert (counts.predictions, counts.outcomes, counts.unmatched_outcomes) == (n, n, 0)
    assert counts.skipped == {}
    versions = con.sql("SELECT DISTINCT model_name, model_version FROM served").fetchall()
    assert len(versions) == 1
    assert versions[0][0] == "adult-income"

    labelled, _ = labelled_applicants(CaptureReader.from_uri(capture_stack.uri))
    assert labelled.num_rows == n
    sample = labelled.slice(0, 50).to_pylist()
    for row in sample:  # the record exactly as the worker received it
        assert orjson.loads(row["value"])["applicant_id"] == row["applicant_id"]
        assert row["label"] == truth[row["applicant_id"]]

    for kind in ("applicants", "predictions", "outcomes"):
        assert metric(capture, "capture_rows_total", f'kind="{kind}"') == n
    assert metric(capture, "capture_outcomes_total", 'result="valid"') == n


def test_kill_9_mid_stream_and_restart_loses_nothing(
    capture_stack: CaptureStack, test_split: list[dict[str, Any]]
) -> None:
    # No worker here: the archiver's own guarantee, on applicants and outcomes.
    records = test_split[3000:6000]
    n = len(records)
    first = capture_stack.start_capture()
    producer = threading.Thread(
        target=_produce_with_outcomes, args=(capture_stack, records), kwargs={"rate": 1500.0}
    )
    producer.start()
    try:
        archived = wait_until(
            lambda: metric(first, "capture_rows_total", 'kind="applicants"'),
            lambda rows: rows >= 300,
            30,
        )
        first.kill()  # SIGKILL: no flush, no commit of what is buffered
    finally:
        producer.join(timeout=60)
    assert 300 <= archived < n, "the kill did not land mid-stream"

    capture_stack.start_capture()

    def unique() -> tuple[int, int]:
        _, counts = capture_stack.counts()
        return counts.unique_outcomes, _count(capture_stack, "latest_applicants")

    assert wait_until(unique, lambda c: c == (n, n), ARCHIVE_TIMEOUT) == (n, n)
    con, counts = capture_stack.counts()
    truth = {r["applicant_id"]: r["_label"] for r in records}
    assert dict(con.sql("SELECT applicant_id, label FROM truth").fetchall()) == truth
    # Re-read after the kill: duplicates allowed, dropped at read time.
    (applicant_rows,) = con.sql("SELECT count(*) FROM applicants").fetchall()[0]
    assert applicant_rows >= n
    assert counts.outcomes >= n


def _count(stack: CaptureStack, view: str) -> int:
    con, _ = stack.counts()
    try:
        return int(con.sql(f"SELECT count(*) FROM {view}").fetchall()[0][0])
    finally:
        con.close()


def _bad_outcomes() -> list[tuple[bytes, str]]:
    """One outcome of each kind the contract refuses, with the error class it must get."""
    return [
        (b"{not json", "JSONDecodeError"),
        (b'["a-1", ">50K"]', "NotAnObject"),
        (b'{"applicant_id": "\xff\xfe", "label": ">50K"}', "InvalidUtf8"),
        (b'{"applicant_id": "b-1", "label": ">50K", "observed_at": "2026-12-01T10:00:00"}',
         "ValidationError"),
        (b'{"applicant_id": "b-2", "observed_at": "2026-12-01T10:00:00Z"}', "ValidationError"),
        (b'{"applicant_id": "b-3", "label": "rich", "observed_at": "2026-12-01T10:00:00Z"}',
         "ValidationError"),
        (b'{"pad": "' + b"x" * 70_000 + b'"}', "RecordTooLarge"),
    ]  # fmt: skip


def test_malformed_outcomes_go_to_the_outcomes_dlq_and_the_stream_goes_on(
    capture_stack: CaptureStack, kafka_producer: Any
) -> None:
    capture = capture_stack.start_capture()
    topic = capture_stack.outcomes_topic
    bad = _bad_outcomes()
    sent: list[bytes] = []
    for i in range(20):  # good outcomes around the bad ones, all in partition 0
        good = tools.outcome_value(f"g-{i}", ">50K" if i % 2 else "<=50K")
        kafka_producer.send(topic, key=f"g-{i}".encode(), value=good, partition=0)
        sent.append(good)
        if i % 3 == 0 and i // 3 < len(bad):
            value, _ = bad[i // 3]
            kafka_producer.send(topic, key=f"bad-{i}".encode(), value=value, partition=0)
            sent.append(value)
    kafka_producer.flush()

    letters = consume_all(capture_stack.stack.bootstrap, capture_stack.outcomes_dlq_topic,
                          len(bad), timeout=30)  # fmt: skip
    letters.sort(key=lambda r: int(dict(r.headers)["source_offset"]))  # keyed: any partition
    assert [(r.value, dict(r.headers)["error_class"].decode()) for r in letters] == [
        (value, error_class) for value, error_class in bad
    ]  # the original bytes unchanged, each with its error class
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["error_reason"]
        assert headers["source_topic"].decode() == topic
        assert headers["source_partition"] == b"0"
        assert sent[int(headers["source_offset"])] == letter.value
    timezone_letter = next(r for r in letters if b"b-1" in r.value)
    assert b"timezone" in dict(timezone_letter.headers)["error_reason"]

    def outcomes() -> int:
        _, counts = capture_stack.counts()
        return counts.unique_outcomes

    assert wait_until(outcomes, lambda k: k == 20, 30) == 20  # the good ones, all of them
    assert wait_until(
        lambda: metric(capture, "capture_outcomes_total", 'result="dead_lettered"'),
        lambda k: k == len(bad),
        15,
    ) == len(bad)  # fmt: skip
    assert metric(capture, "capture_outcome_rejections_total", 'reason="schema"') == 3

    capture.stop()  # SIGTERM: flush, commit, exit 0
    assert capture.process is not None
    assert capture.process.returncode == 0


def test_failing_writes_answer_503_commit_nothing_and_recover(
    capture_stack: CaptureStack, test_split: list[dict[str, Any]]
) -> None:
    capture = capture_stack.start_capture()
    bootstrap, topic = capture_stack.stack.bootstrap, capture_stack.stack.input_topic
    tools.produce(bootstrap, topic, test_split[:100])
    rows = "capture_rows_total"
    applicants = 'kind="applicants"'
    assert wait_until(lambda: metric(capture, rows, applicants), lambda k: k == 100, 30) == 100
    commits = metric(capture, "capture_commits_total", 'result="success"')

    kind_dir = Path(capture_stack.uri) / "applicants"
    shutil.move(kind_dir, kind_dir.with_name("moved-aside"))
    kind_dir.write_text("a file where the folder should be: every write fails")
    tools.produce(bootstrap, topic, test_split[100:150])

    def health() -> tuple[int, dict[str, Any]]:
        assert capture.ready_url is not None
        try:
            with urllib.request.urlopen(capture.ready_url, timeout=5) as resp:
                return resp.status, orjson.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, orjson.loads(err.read())

    status, body = wait_until(health, lambda h: h[0] == 503, 30)
    assert status == 503
    assert body["status"] == "failing"
    assert "capture writes failing since" in body["reason"]
    assert metric(capture, "capture_commits_total", 'result="success"') == commits
    assert metric(capture, rows, applicants) == 100

    kind_dir.unlink()
    shutil.move(kind_dir.with_name("moved-aside"), kind_dir)
    assert wait_until(health, lambda h: h[0] == 200, 60)[0] == 200
    assert wait_until(lambda: metric(capture, rows, applicants), lambda k: k == 150, 30) == 150
    assert metric(capture, "capture_commits_total", 'result="success"') > commits


def test_an_unwritable_capture_location_exits_with_one_line(
    capture_stack: CaptureStack, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {**capture_stack.env, "SCORER_CAPTURE_URI": str(blocker / "capture")}
    proc = subprocess.run(
        [console_script("stream-worker"), "capture"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"stream-worker: capture location {blocker / 'capture'} is not")
    assert "NotADirectoryError" in lines[0]
    assert not (blocker.parent / "capture").exists()
