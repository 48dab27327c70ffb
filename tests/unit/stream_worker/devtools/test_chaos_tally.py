"""The chaos suite's counting and bounds, without services: by key, never by offset."""

from __future__ import annotations

from collections.abc import Sequence

import orjson
import pytest

from stream_worker.devtools.chaos import tally
from stream_worker.devtools.chaos.load import LoadPlan, oversize_value, planned, poison_value
from stream_worker.devtools.chaos.report import markdown
from stream_worker.devtools.chaos.tally import (
    DuplicateBound,
    Observed,
    Produced,
    count,
    first_version_after,
    recovery_seconds,
)
from stream_worker.scoring.schema import RecordDecoder, RecordError, example_request

BASE = {**example_request(), "applicant_id": "x"}


def _observed(predictions: Sequence[str], dead: Sequence[str] = ()) -> Observed:
    seen = Observed()
    for i, key in enumerate(predictions):
        seen.add("prediction", key, 10.0 + i * 0.01, "1")
    for key in dead:
        seen.add("dead_letter", key, 10.0)
    return seen


def _produced(valid: Sequence[str], poison: Sequence[str] = ()) -> Produced:
    return Produced({k: 10.0 for k in valid}, {k: 10.0 for k in poison})


def test_a_clean_run_passes_every_check() -> None:
    figures = count(
        "s",
        _produced(["a", "b"], ["p"]),
        _observed(["a", "b"], ["p"]),
        healthy_after=True,
        bound=DuplicateBound(),
    )
    assert figures.lost == 0
    assert figures.duplicates == 0
    assert figures.poison_dead_lettered == 1
    assert figures.passed


def test_lost_and_dead_lettered_valid_records_are_counted_by_id() -> None:
    figures = count(
        "s",
        _produced(["a", "b", "c"], ["p", "q"]),
        _observed(["a"], ["b", "p"]),
        healthy_after=True,
        bound=DuplicateBound(),
    )
    assert figures.lost == 1  # c: neither predicted nor dead-lettered
    assert figures.valid_dead_lettered == 1  # b
    assert figures.poison_missing == 1  # q
    assert not figures.checks["nothing lost"]
    assert not figures.checks["no valid record dead-lettered"]
    assert not figures.checks["every poison record dead-lettered"]
    assert not figures.passed


def test_duplicates_are_extra_outputs_per_id_and_checked_against_the_bound() -> None:
    produced, seen = _produced(["a", "b"]), _observed(["a", "a", "a", "b", "b"])
    within = count("s", produced, seen, healthy_after=True, bound=DuplicateBound(1, 0, 3.0, 0))
    over = count("s", produced, seen, healthy_after=True, bound=DuplicateBound())
    assert within.duplicates == 3
    assert within.duplicate_bound == 3
    assert within.redone == 3
    assert within.checks["worker duplicates within bound"]
    assert not over.checks["worker duplicates within bound"]


def test_keys_written_twice_to_the_input_are_reported() -> None:
    figures = count(
        "s",
        _produced(["a", "b"]),
        _observed(["a", "b", "b"]),
        input_keys=["a", "b", "b"],
        healthy_after=True,
        bound=DuplicateBound(),
    )
    assert figures.input_duplicates == 1
    assert figures.duplicates == 1
    assert figures.redone == 0  # b was in the input twice: the producer's duplicate
    assert figures.checks["worker duplicates within bound"]


def test_outputs_of_keys_never_acknowledged_are_not_duplicates() -> None:
    figures = count(
        "s",
        _produced(["a"]),
        _observed(["a", "z", "z"]),
        healthy_after=True,
        bound=DuplicateBound(),
    )
    assert figures.duplicates == 0


def test_an_unhealthy_worker_or_a_failed_extra_check_fails_the_scenario() -> None:
    args = (_produced(["a"]), _observed(["a"]))
    assert not count("s", *args, healthy_after=False, bound=DuplicateBound()).passed
    failed = count(
        "s", *args, healthy_after=True, bound=DuplicateBound(), extra_checks={"v2 refused": False}
    )
    assert not failed.passed


@pytest.mark.parametrize(
    ("crashes", "retries", "expected"),
    [(0, 0, 0), (1, 0, 400 + 2 * 200), (3, 0, 3 * 800), (1, 1, 800 + 400)],
)
def test_the_bound_is_one_commit_interval_plus_two_batches_per_crash(
    crashes: int, retries: int, expected: int
) -> None:
    assert DuplicateBound(crashes, retries, rate=400.0, batch_max=200).limit == expected


def test_recovery_runs_from_the_fault_to_the_last_record_it_held_up() -> None:
    sent = {"a": 0.0, "b": 5.0, "c": 6.0, "d": 20.0}
    out = {"a": 0.1, "b": 15.0, "c": 15.5, "d": 20.1}
    recovery, worst = recovery_seconds(sent, out, faults=[5.5])
    assert recovery == pytest.approx(10.0)  # c, sent after the fault, out at 15.5
    assert worst == pytest.approx(10.0)  # b waited 10 s
    assert recovery_seconds(sent, out, faults=[]) == (None, pytest.approx(10.0))
    assert recovery_seconds({"a": 0.0}, {"a": 0.1}, faults=[0.05])[0] == 0.0


def test_recovery_is_the_worst_over_faults_each_timed_from_its_own_moment() -> None:
    sent = {"a": 1.0, "b": 10.0, "c": 30.0}
    out = {"a": 6.0, "b": 10.1, "c": 33.0}  # a held 5 s by fault 1, c held 3 s by fault 2
    recovery, _ = recovery_seconds(sent, out, faults=[29.0, 0.5])
    assert recovery == pytest.approx(5.5)  # fault 1 at 0.5 until a came out at 6.0


def test_first_version_after_a_moment() -> None:
    timeline = [(1.0, "1"), (2.0, "1"), (3.0, "2"), (4.0, "1")]
    assert first_version_after(timeline, 2.5) == {"2": 3.0, "1": 4.0}


def test_the_plan_is_seeded_and_mixes_the_asked_share_of_poison() -> None:
    plan = LoadPlan(rate=100, seconds=20, poison_fraction=0.5, seed=3)
    first, again = list(planned(plan, [BASE])), list(planned(plan, [BASE]))
    assert first == again
    poison = [k for k, _, valid in first if not valid]
    assert 0.4 < len(poison) / len(first) < 0.6
    assert len({k for k, _, _ in first}) == len(first)  # one key per record


@pytest.mark.parametrize(
    "kind", ["not_json", "not_object", "no_id_field", "missing_numeric", "out_of_range", "type"]
)
def test_every_poison_kind_is_refused_by_the_worker_schema(kind: str) -> None:
    decoder = RecordDecoder(max_bytes=65536)
    decoder.decode_one(orjson.dumps(BASE))  # the base itself is valid
    with pytest.raises(RecordError):
        decoder.decode_one(poison_value(kind, BASE, "bad-1"))


def test_an_oversize_record_has_its_size_and_is_refused_for_it() -> None:
    value = oversize_value("big-7", 1_200_000)
    assert len(value) == 1_200_000
    assert orjson.loads(value)["applicant_id"] == "big-7"
    with pytest.raises(RecordError):
        RecordDecoder(max_bytes=65536).decode_one(value)


def test_the_markdown_has_a_row_per_scenario_and_the_verdicts() -> None:
    fig = count(
        "kill9", _produced(["a"]), _observed(["a"]), healthy_after=True, bound=DuplicateBound()
    )
    result = {
        "commit": "abc123",
        "cpu": "Xeon, 2 cores",
        "load_average_start": [1.0, 1.0, 1.0],
        "load_average_end": [2.0, 2.0, 2.0],
        "started_at": "2026-12-02T20:00:00Z",
        "rate": 400.0,
        "seconds": 40.0,
        "poison_fraction": 0.03,
        "batch_max": 200,
        "titles": {"kill9": "kill -9 of one of two workers"},
        "scenarios": [fig.to_dict()],
        "errors": {"scale": "ProcessError: worker exited early"},
    }
    text = markdown(result)
    assert "| kill -9 of one of two workers | 0 | 0 / 0 (0) |" in text
    assert "Commit `abc123`" in text
    assert "`scale`: did not run to the end" in text


def test_failed_handovers_are_read_from_the_worker_logs() -> None:
    logs = [
        "[WARNING] abandoning 2 pending batch(es) (not delivered within 5.0s): not acked\n"
        "[INFO] fine\n",
        "[ERROR] Committing raised exception: CommitFailedError('rebalancing')\n",
        "[INFO] nothing went wrong here\n",
    ]
    assert tally.handover_failures(logs) == 2
    assert tally.handover_failures(["[INFO] all handed over"]) == 0
