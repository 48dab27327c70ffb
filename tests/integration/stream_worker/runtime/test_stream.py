"""The worker against a real broker and a real MLflow store, run as real processes."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from kafka_helpers import consume_all
from stack_helpers import ModelStore, WorkerStack

from stream_worker.devtools import replay as tools
from stream_worker.model_watcher import MlflowModelSource
from trainer.model.bundle import ModelBundle, records_to_columns
from trainer.model.columns import NUMERIC_COLUMNS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def test_split() -> list[dict[str, Any]]:
    return tools.test_records()


def _produce(stack: WorkerStack, records: list[dict[str, Any]], **kw: Any) -> None:
    tools.produce(stack.bootstrap, stack.input_topic, records, **kw)


def _predictions(stack: WorkerStack, expected: int, timeout: float = 90) -> list[dict[str, Any]]:
    return [
        orjson.loads(r.value)
        for r in consume_all(stack.bootstrap, stack.output_topic, expected, timeout)
    ]


def _champion_bundle(store: ModelStore, tmp_path: Path, version: str) -> ModelBundle:
    source = MlflowModelSource(store.uri, "adult-income", "champion")
    return ModelBundle.load(source.download(version, tmp_path / f"v{version}"))


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" ([0-9.e+-]+)"
    match = re.search(pattern, text)
    assert match, f"{name}{{{labels}}} not exported"
    return float(match.group(1))


def test_whole_test_split_scored_once_with_offline_probabilities(
    worker_stack: WorkerStack,
    model_store: ModelStore,
    test_split: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    worker = worker_stack.start_worker()
    _produce(worker_stack, test_split)
    preds = _predictions(worker_stack, len(test_split))

    ids = [p["applicant_id"] for p in preds]
    assert len(ids) == len(test_split)
    assert set(ids) == {r["applicant_id"] for r in test_split}
    version = preds[0]["model_version"]
    assert {p["model_version"] for p in preds} == {version}
    assert {p["model_name"] for p in preds} == {"adult-income"}

    bundle = _champion_bundle(model_store, tmp_path, version)
    offline = bundle.predict(records_to_columns(test_split))
    streamed = {p["applicant_id"]: p["probability"] for p in preds}
    got = np.array([streamed[r["applicant_id"]] for r in test_split])
    np.testing.assert_allclose(got, offline, rtol=0, atol=1e-12)
    labels = {p["applicant_id"]: p["label"] for p in preds}
    assert all(
        labels[r["applicant_id"]] == (">50K" if p >= bundle.threshold else "<=50K")
        for r, p in zip(test_split, offline, strict=True)
    )

    text = worker_stack.metrics(worker)
    assert _metric(text, "scorer_records_total", 'outcome="scored"') == len(test_split)
    assert _metric(text, "scorer_event_latency_seconds_count") == len(test_split)
    assert (
        _metric(text, "scorer_model_info", f'model_name="adult-income",model_version="{version}"')
        == 1
    )


def _poison(valid: dict[str, Any]) -> list[tuple[bytes, str]]:
    """One record of each kind DESIGN.md calls bad, with the DLQ reason it must get."""
    numeric = {k: valid[k] for k in NUMERIC_COLUMNS}
    return [
        (b"{not json", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (orjson.dumps(numeric), "schema"),  # no applicant_id
        (orjson.dumps({**numeric, "applicant_id": "bad-age", "age": "35"}), "schema"),
        (orjson.dumps({**numeric, "applicant_id": "bad-hours", "hours_per_week": -5}), "schema"),
        (b'{"applicant_id": "big", "pad": "' + b"x" * 900_000 + b'"}', "too_large"),
        (b'{"applicant_id": "\xff\xfe"}', "invalid_utf8"),
    ]  # fmt: skip


def test_poison_records_go_to_dlq_and_neighbours_are_scored(
    worker_stack: WorkerStack, kafka_producer: Any, test_split: list[dict[str, Any]]
) -> None:
    worker = worker_stack.start_worker()
    poison = _poison(test_split[0])
    good = test_split[:40]
    for i, rec in enumerate(good):
        kafka_producer.send(
            worker_stack.input_topic,
            key=rec["applicant_id"].encode(),
            value=tools.wire_value(rec),
            partition=0,
        )
        if i % 5 == 0 and i // 5 < len(poison):
            value, _ = poison[i // 5]
            kafka_producer.send(
                worker_stack.input_topic, key=f"poison-{i}".encode(), value=value, partition=0
            )
    kafka_producer.flush()

    preds = _predictions(worker_stack, len(good))
    assert sorted(p["applicant_id"] for p in preds) == sorted(r["applicant_id"] for r in good)

    dead = consume_all(worker_stack.bootstrap, worker_stack.dlq_topic, len(poison), 60)
    assert len(dead) == len(poison)
    by_key = {d.key: d for d in dead}
    for i in range(0, 5 * len(poison), 5):
        value, reason = poison[i // 5]
        letter = by_key[f"poison-{i}".encode()]
        assert letter.value == value  # the original bytes, unchanged
        headers = {k: v.decode("utf-8", "replace") for k, v in letter.headers}
        assert headers["source_topic"] == worker_stack.input_topic
        assert headers["source_partition"] == "0"
        assert int(headers["source_offset"]) >= 0
        assert headers["error_reason"]
        assert headers["error_class"]
    text = worker_stack.metrics(worker)
    expected_reasons: dict[str, int] = {}
    for _, reason in poison:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    for reason, count in expected_reasons.items():
        assert _metric(text, "scorer_dead_letters_total", f'reason="{reason}"') == count
    assert _metric(text, "scorer_records_total", 'outcome="invalid"') == len(poison)


def test_new_version_is_picked_up_mid_stream_without_loss(
    worker_stack: WorkerStack, model_store: ModelStore, test_split: list[dict[str, Any]]
) -> None:
    worker_stack.start_worker()
    first, second = test_split[:2000], test_split[2000:5000]
    _produce(worker_stack, first)
    old_version = _predictions(worker_stack, len(first))[0]["model_version"]
    new_version = model_store.register_unpromoted()  # the alias moves only when we say
    assert new_version != old_version

    # The alias moves 1.5 s into 6 s of traffic (reload interval 1 s): a swap mid-stream.
    swap = threading.Timer(1.5, model_store.promote, args=(new_version,))
    swap.start()
    _produce(worker_stack, second, rate=500)
    swap.join()
    records = consume_all(
        worker_stack.bootstrap, worker_stack.output_topic, len(first) + len(second), 90
    )

    preds = [orjson.loads(r.value) for r in records]
    ids = [p["applicant_id"] for p in preds]
    assert len(ids) == len(set(ids)) == len(first) + len(second)
    second_ids = {r["applicant_id"] for r in second}
    by_partition: dict[int, list[tuple[int, str]]] = {}
    for rec, pred in zip(records, preds, strict=True):
        if pred["applicant_id"] in second_ids:
            by_partition.setdefault(rec.partition, []).append((rec.offset, pred["model_version"]))
    for partition, scored in by_partition.items():
        versions = [v for _, v in sorted(scored)]
        # in offset order: the old version, then the new one, never back
        switched = versions.index(new_version) if new_version in versions else len(versions)
        assert set(versions[:switched]) <= {old_version}, partition
        assert set(versions[switched:]) == {new_version}, partition
    in_second = [v for scored in by_partition.values() for _, v in scored]
    assert old_version in in_second  # the swap did not happen before the traffic
    assert in_second.count(new_version) > len(second) // 3  # nor after it


def test_kill_9_mid_stream_then_restart_answers_everyone(
    worker_stack: WorkerStack, test_split: list[dict[str, Any]]
) -> None:
    worker = worker_stack.start_worker()
    records = test_split[:8000]
    producer = threading.Thread(
        target=_produce, args=(worker_stack, records), kwargs={"rate": 2000}
    )
    producer.start()
    time.sleep(2.0)
    worker.kill()  # SIGKILL mid-stream: no shutdown, no final commit
    answered_before_restart = len(_predictions(worker_stack, len(records), timeout=3))
    producer.join()
    assert answered_before_restart < len(records)  # it really died mid-stream
    worker_stack.start_worker()
    want = {r["applicant_id"] for r in records}
    deadline = time.monotonic() + 90
    ids: set[str] = set()
    while ids != want and time.monotonic() < deadline:
        ids = {p["applicant_id"] for p in _predictions(worker_stack, len(records) * 2, timeout=5)}
    assert want - ids == set()  # duplicates allowed, losses not


def test_two_workers_split_the_partitions(
    worker_stack: WorkerStack, test_split: list[dict[str, Any]]
) -> None:
    a = worker_stack.start_worker()
    b = worker_stack.start_worker()
    time.sleep(6)  # let the group settle with both members
    records = test_split[:6000]
    _produce(worker_stack, records)
    preds = _predictions(worker_stack, len(records))
    assert {p["applicant_id"] for p in preds} == {r["applicant_id"] for r in records}
    scored_a = _metric(worker_stack.metrics(a), "scorer_records_total", 'outcome="scored"')
    scored_b = _metric(worker_stack.metrics(b), "scorer_records_total", 'outcome="scored"')
    assert scored_a > 0
    assert scored_b > 0
    assert scored_a + scored_b >= len(records)
