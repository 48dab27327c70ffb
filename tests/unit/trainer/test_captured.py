"""The labelled capture as training and evaluation rows: conversion, dedup, cutoff, the split.

Every capture here is real Parquet written through ``CaptureLocation.write`` and read back
through ``CaptureReader``; a replay of adult.test is built from the replay tool's own records.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import pyarrow as pa
import pytest

from stream_worker.capture.layout import APPLICANTS, OUTCOMES, CaptureLocation
from stream_worker.devtools import replay
from stream_worker.scoring.schema import example_request
from trainer import captured, dataset, pipeline
from trainer.dataset import RAW_COLUMNS, AdultData
from trainer.settings import TrainerSettings

T0 = datetime(2026, 11, 1, tzinfo=UTC)
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


def write_capture(
    root: Path,
    applicants: Sequence[tuple[str, bytes]],
    outcomes: Sequence[tuple[str, str, datetime]],
    *,
    partition: int = 0,
    first_offset: int = 0,
) -> None:
    """One applicants file and one outcomes file of ``partition``, as the archiver writes."""
    location = CaptureLocation.from_uri(str(root))
    if applicants:
        n = len(applicants)
        table = pa.table(
            {
                "applicant_id": [a for a, _ in applicants],
                "value": [v for _, v in applicants],
                "partition": [partition] * n,
                "offset": list(range(first_offset, first_offset + n)),
                "timestamp": [T0] * n,
            }
        )
        location.write(APPLICANTS, table, T0.date(), partition)
    if outcomes:
        n = len(outcomes)
        table = pa.table(
            {
                "applicant_id": [a for a, _, _ in outcomes],
                "label": [label for _, label, _ in outcomes],
                "observed_at": [t for _, _, t in outcomes],
                "partition": [partition] * n,
                "offset": list(range(first_offset, first_offset + n)),
                "timestamp": [max(t for _, _, t in outcomes)] * n,
            }
        )
        location.write(OUTCOMES, table, date(2026, 11, 2), partition)


def replay_capture(
    root: Path, records: Sequence[dict[str, Any]], *, start: datetime = T0, **kw: Any
) -> None:
    """Replayed applicant records, each with its true label one second after the previous."""
    write_capture(
        root,
        [(r["applicant_id"], replay.wire_value(r)) for r in records],
        [
            (r["applicant_id"], r["_label"], start + timedelta(seconds=i))
            for i, r in enumerate(records)
        ],
        **kw,
    )


def record(applicant_id: str, **fields: Any) -> bytes:
    base = {**example_request(), "applicant_id": applicant_id}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.fixture(autouse=True)
def _no_trainer_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("TRAINER_")]:
        monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def adult() -> AdultData:
    return dataset.load_bundled()


@pytest.fixture(scope="module")
def test_records() -> list[dict[str, Any]]:
    return replay.test_records()


def _digests(frame: pd.DataFrame) -> set[str]:
    return set(captured.row_digests(frame))


# --- capture -> cleaned frame ---------------------------------------------------------------


def test_a_replayed_row_becomes_exactly_its_adult_test_row(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    replay_capture(tmp_path, test_records[:500])
    capture = captured.read(str(tmp_path), FAR_FUTURE)
    rows = capture.frame[list(RAW_COLUMNS)]
    # values, missing values (None) and dtypes all as dataset.clean makes them
    pd.testing.assert_frame_equal(rows, adult.test.iloc[:500].reset_index(drop=True))
    assert capture.frame["applicant_id"].tolist() == [f"test-{i}" for i in range(500)]
    assert capture.rejected == {}
    assert rows["workclass"].isna().sum() == adult.test["workclass"].iloc[:500].isna().sum() > 0
    assert capture.uri == tmp_path.as_uri()


def test_values_are_decoded_as_the_worker_decodes_them(tmp_path: Path) -> None:
    write_capture(
        tmp_path,
        [
            ("q", record("q", workclass="?", occupation="", native_country=None)),
            ("alias", record("alias", education_num=..., **{"education-num": 9})),
            ("padded", record("padded", education=" Bachelors")),
        ],
        [(i, ">50K", T0) for i in ("q", "alias", "padded")],
    )
    frame = captured.read(str(tmp_path), FAR_FUTURE).frame.set_index("applicant_id")
    assert frame.loc["q", "workclass"] is None
    assert frame.loc["q", "occupation"] is None
    assert frame.loc["q", "native_country"] is None
    assert frame.loc["alias", "education_num"] == 9.0
    assert frame.loc["padded", "education"] == " Bachelors"  # unseen to the worker: kept so
    assert frame["age"].dtype == "float64"
    assert frame["workclass"].dtype == object


def test_what_the_worker_refuses_is_skipped_and_counted(tmp_path: Path) -> None:
    write_capture(
        tmp_path,
        [
            ("good", record("good")),
            ("not-json", b"{nope"),
            ("array", b"[1, 2]"),
            ("no-age", record("no-age", age=...)),
            ("too-old", record("too-old", age=400)),
            ("odd-label", record("odd-label")),
        ],
        [
            *((i, "<=50K", T0) for i in ("good", "not-json", "array", "no-age", "too-old")),
            ("odd-label", "maybe", T0),
        ],
    )
    capture = captured.read(str(tmp_path), FAR_FUTURE)
    assert capture.frame["applicant_id"].tolist() == ["good"]
    assert capture.rejected == {"not_json": 1, "not_object": 1, "schema": 2, "label": 1}


def test_one_row_per_applicant_the_latest_outcome_wins(tmp_path: Path) -> None:
    # archived twice (a crash before the commit), and a corrected outcome later on
    write_capture(tmp_path, [("a", record("a")), ("b", record("b"))], [("a", "<=50K", T0)])
    write_capture(
        tmp_path,
        [("a", record("a")), ("b", record("b"))],
        [("a", ">50K", T0 + timedelta(hours=1)), ("b", "<=50K", T0)],
        partition=1,
    )
    frame = captured.read(str(tmp_path), FAR_FUTURE).frame
    assert frame["applicant_id"].tolist() == ["b", "a"]  # oldest outcome first
    assert frame.set_index("applicant_id").loc["a", "income"] == ">50K"


def test_from_table_keeps_one_row_per_id_whatever_the_table(adult: AdultData) -> None:
    table = pa.table(
        {
            "applicant_id": ["x", "x", "y"],
            "value": [record("x", age=30), record("x", age=31), record("y")],
            "label": [">50K", "<=50K", ">50K"],
            "observed_at": [T0, T0 + timedelta(minutes=5), T0],
        }
    )
    frame = captured.from_table(table, "memory://t", FAR_FUTURE).frame.set_index("applicant_id")
    assert sorted(frame.index) == ["x", "y"]
    assert frame.loc["x", "age"] == 31.0
    assert frame.loc["x", "income"] == "<=50K"


def test_only_outcomes_at_or_before_the_cutoff(tmp_path: Path) -> None:
    write_capture(
        tmp_path,
        [(i, record(i)) for i in ("early", "on-time", "late")],
        [
            ("early", ">50K", T0),
            ("on-time", ">50K", T0 + timedelta(hours=1)),
            ("late", ">50K", T0 + timedelta(hours=2)),
        ],
    )
    cutoff = T0 + timedelta(hours=1)
    ids = captured.read(str(tmp_path), cutoff).frame["applicant_id"].tolist()
    assert ids == ["early", "on-time"]
    # a naive cutoff means UTC, whatever the machine's zone
    naive = captured.read(str(tmp_path), cutoff.replace(tzinfo=None))
    assert naive.frame["applicant_id"].tolist() == ids
    assert naive.cutoff == cutoff


def test_the_default_cutoff_is_now(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    write_capture(
        tmp_path,
        [("past", record("past")), ("future", record("future"))],
        [("past", ">50K", now - timedelta(days=1)), ("future", ">50K", now + timedelta(days=1))],
    )
    capture = captured.read(str(tmp_path))
    assert capture.frame["applicant_id"].tolist() == ["past"]
    assert now <= capture.cutoff <= datetime.now(UTC)


# --- which rows train, which evaluate -------------------------------------------------------


@pytest.mark.parametrize(("rows", "fraction", "expected"), [(10, 0.2, 2), (7, 0.5, 4), (1, 0.2, 0)])
def test_eval_count_rounds_half_up(rows: int, fraction: float, expected: int) -> None:
    assert captured.eval_count(rows, fraction) == expected
    assert captured.eval_count(rows, 0.0) == 0
    assert captured.eval_count(rows, 1.0) == rows


def test_the_newest_captured_rows_evaluate_the_older_ones_train(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    # captured out of order: the split follows observed_at, not the files or the ids
    records = test_records[:100]
    replay_capture(tmp_path, records[50:], start=T0 + timedelta(seconds=50))
    replay_capture(tmp_path, records[:50], start=T0, partition=1)
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    assert isinstance(data, captured.CapturedData)
    summary = data.summary
    assert summary is not None
    assert (summary.train_rows, summary.eval_rows, summary.eval_dropped) == (80, 20, 0)
    assert summary.train_observed == (T0, T0 + timedelta(seconds=79))
    assert summary.eval_observed == (T0 + timedelta(seconds=80), T0 + timedelta(seconds=99))
    captured_train = data.train.iloc[len(adult.train) :]
    captured_eval = data.test.iloc[summary.test_rows :]
    pd.testing.assert_frame_equal(
        captured_train.reset_index(drop=True), adult.test.iloc[:80].reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(
        captured_eval.reset_index(drop=True), adult.test.iloc[80:100].reset_index(drop=True)
    )
    # training = adult.data + the older captured rows, in that order
    pd.testing.assert_frame_equal(data.train.iloc[: len(adult.train)], adult.train)
    assert data.train.dtypes.equals(adult.train.dtypes)
    assert data.test.dtypes.equals(adult.test.dtypes)


def test_a_replay_of_adult_test_never_evaluates_a_row_it_trained_on(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    """The disjointness proof on the case that matters: the capture IS adult.test."""
    half = len(test_records) // 2
    replay_capture(tmp_path, test_records[:half])
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    assert isinstance(data, captured.CapturedData)
    summary = data.summary
    assert summary is not None
    n_eval = captured.eval_count(half, 0.2)
    captured_train = data.train.iloc[len(adult.train) :]
    adult_test_part = data.test.iloc[: summary.test_rows]
    captured_eval = data.test.iloc[summary.test_rows :]
    assert len(captured_train) == half - n_eval
    # no evaluation row has the content of a captured training row
    assert _digests(data.test).isdisjoint(_digests(captured_train))
    # the adult.test part is exactly the rows nobody replayed (by content: the few exact
    # duplicates inside adult.test go with the replayed copy)
    replayed = _digests(adult.test.iloc[:half])
    expected = adult.test[[d not in replayed for d in captured.row_digests(adult.test)]]
    pd.testing.assert_frame_equal(adult_test_part, expected.reset_index(drop=True))
    assert len(adult_test_part) >= len(adult.test) - half - 5
    # the newest replayed rows evaluate once, as captured rows, not a second time from the file
    assert len(captured_eval) == n_eval - summary.eval_dropped
    assert _digests(captured_eval).isdisjoint(_digests(adult_test_part))
    # what was dropped from the newest captured rows is content training has (adult.data)
    assert summary.eval_dropped <= 23  # the official split's own adult.data/adult.test overlap
    assert _digests(captured_eval).isdisjoint(_digests(adult.train))
    # the official overlap is all that training and evaluation share, as without a capture
    official = _digests(adult.train) & _digests(adult.test)
    assert _digests(data.train) & _digests(data.test) <= official


def test_a_replay_cycled_under_new_ids_is_matched_by_content(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    # the replay's second pass sends rows 0-9 again as test-<i>-r1, newest: they would evaluate
    first = test_records[:40]
    again = [{**r, "applicant_id": f"{r['applicant_id']}-r1"} for r in test_records[:10]]
    replay_capture(tmp_path, [*first, *again])
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    assert isinstance(data, captured.CapturedData)
    assert data.summary is not None
    assert data.summary.eval_rows == 0
    assert data.summary.eval_dropped == 10
    assert _digests(data.test).isdisjoint(_digests(data.train.iloc[len(adult.train) :]))


def test_a_changed_replayed_row_is_matched_by_its_test_id(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    # the demo's drift keeps the id and the label but shifts features: no digest matches
    drifted = replay.apply_drift(test_records[:30], seed=0)
    replay_capture(tmp_path, drifted)
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    assert isinstance(data, captured.CapturedData)
    assert data.summary is not None
    assert data.summary.test_removed == 30
    kept = data.test.iloc[: data.summary.test_rows]
    pd.testing.assert_frame_equal(kept, adult.test.iloc[30:].reset_index(drop=True))


def test_the_id_convention_is_the_replay_tools(test_records: list[dict[str, Any]]) -> None:
    assert replay.TEST_ID_PREFIX == "test-"
    ids = [r["applicant_id"] for r in replay.cycled(test_records[:3], 7)]
    assert [captured.REPLAY_TEST_ID.fullmatch(i) is not None for i in ids] == [True] * 7
    assert [int(m.group(1)) for i in ids if (m := captured.REPLAY_TEST_ID.fullmatch(i))] == [
        0,
        1,
        2,
        0,
        1,
        2,
        0,
    ]
    assert captured.REPLAY_TEST_ID.fullmatch("test-x") is None
    assert captured.REPLAY_TEST_ID.fullmatch("contest-1") is None


def test_validation_comes_from_training_rows_only(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    replay_capture(tmp_path, test_records[:2000])
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    splits = dataset.split(data, 0.2, seed=42)
    assert len(splits.train) + len(splits.valid) == len(data.train)
    pd.testing.assert_frame_equal(splits.test, data.test)
    official = _digests(adult.train) & _digests(adult.test)
    assert _digests(splits.valid) & _digests(data.test) <= official
    # some captured rows did land in validation: the split is over all training rows
    assert _digests(splits.valid) & _digests(data.train.iloc[len(adult.train) :])


# --- no capture, an empty capture -----------------------------------------------------------


def _settings(**overrides: Any) -> TrainerSettings:
    return TrainerSettings(**overrides)


def test_without_a_capture_nothing_changes(adult: AdultData) -> None:
    data = pipeline.load_data(_settings())
    assert type(data) is AdultData
    pd.testing.assert_frame_equal(data.test, adult.test)
    assert data.checksum == adult.checksum
    assert captured.run_params(data) == {
        "train_rows": 32561,
        "train_rows_adult_data": 32561,
        "train_rows_captured": 0,
        "eval_rows": 16281,
        "eval_rows_adult_test": 16281,
        "eval_rows_captured": 0,
    }
    assert captured.run_tags(data) == {}


@pytest.mark.parametrize("content", ["missing folder", "no files", "no outcomes", "unlabelled"])
def test_an_empty_capture_is_the_same_as_none(
    tmp_path: Path, adult: AdultData, content: str
) -> None:
    root = tmp_path / "capture"
    if content != "missing folder":
        root.mkdir()
    if content == "no outcomes":
        write_capture(root, [("a", record("a"))], [])
    if content == "unlabelled":  # an outcome after the cutoff, another without its applicant
        write_capture(root, [("a", record("a"))], [("a", ">50K", FAR_FUTURE)])
        write_capture(root, [], [("ghost", ">50K", T0)], partition=1)
    data = pipeline.load_data(_settings(capture_uri=str(root), capture_cutoff=T0))
    assert type(data) is AdultData
    pd.testing.assert_frame_equal(data.train, adult.train)
    pd.testing.assert_frame_equal(data.test, adult.test)
    assert data.checksum == adult.checksum


def test_load_data_uses_the_settings(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    replay_capture(tmp_path, test_records[:10])
    cutoff = T0 + timedelta(seconds=4)  # rows 0-4
    data = pipeline.load_data(
        _settings(capture_uri=str(tmp_path), capture_cutoff=cutoff, capture_eval_fraction=0.4)
    )
    assert isinstance(data, captured.CapturedData)
    assert data.summary is not None
    assert (data.summary.train_rows, data.summary.eval_rows) == (3, 2)
    assert data.summary.cutoff == cutoff
    assert len(data.test) == len(adult.test) - 5 + 2
    assert data.checksum != adult.checksum
    assert data.source == f"{adult.source}+capture:{tmp_path.as_uri()}"


def test_an_unknown_capture_scheme_is_a_data_error() -> None:
    from trainer.exceptions import DataError

    with pytest.raises(DataError, match="cannot read the capture at nosuch://"):
        pipeline.load_data(_settings(capture_uri="nosuch://bucket/capture"))


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINER_CAPTURE_URI", "s3://bucket/capture")
    monkeypatch.setenv("TRAINER_CAPTURE_CUTOFF", "2026-11-01T12:00:00Z")
    monkeypatch.setenv("TRAINER_CAPTURE_EVAL_FRACTION", "0.3")
    settings = TrainerSettings()
    assert settings.capture_uri == "s3://bucket/capture"
    assert settings.capture_cutoff == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert settings.capture_eval_fraction == 0.3
    monkeypatch.delenv("TRAINER_CAPTURE_URI")
    assert TrainerSettings().capture_uri is None
    with pytest.raises(ValueError, match="capture_eval_fraction"):
        TrainerSettings(capture_eval_fraction=1.5)


# --- what MLflow is told ----------------------------------------------------------------------


def test_data_parts_name_every_block_with_its_source_and_digest(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    replay_capture(tmp_path, test_records[:50])
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    parts = {p.name: p for p in captured.data_parts(data)}
    assert sorted(parts) == ["adult.data", "adult.test", "capture.evaluation", "capture.training"]
    assert [parts[n].context for n in sorted(parts)] == [
        "training",
        "evaluation",
        "evaluation",
        "training",
    ]
    assert len(parts["adult.data"].frame) == 32561
    assert len(parts["capture.training"].frame) == 40
    assert len(parts["capture.evaluation"].frame) == 10
    assert len(parts["adult.test"].frame) == len(data.test) - 10
    assert parts["adult.data"].source == str(dataset.bundled_dir() / "adult.data")
    assert parts["capture.training"].source == tmp_path.as_uri()
    assert len({p.digest for p in parts.values()}) == 4
    plain = {p.name: p for p in captured.data_parts(adult)}
    assert sorted(plain) == ["adult.data", "adult.test"]
    assert plain["adult.data"].digest == parts["adult.data"].digest
    assert plain["adult.test"].digest != parts["adult.test"].digest  # 50 rows fewer
    tags = captured.run_tags(data)
    assert tags["capture_observed_min"] == T0.isoformat()
    assert tags["capture_observed_max"] == (T0 + timedelta(seconds=49)).isoformat()
    assert tags["capture_eval_observed_min"] == (T0 + timedelta(seconds=40)).isoformat()


def test_row_digests_follow_content_not_representation(adult: AdultData) -> None:
    rows = adult.test.iloc[:3].copy()
    again = rows.copy()
    again["age"] = again["age"].astype("int64")  # 39 and 39.0 are the same age
    assert captured.row_digests(rows) == captured.row_digests(again)
    changed = rows.copy()
    changed.loc[0, "income"] = ">50K" if rows.loc[0, "income"] == "<=50K" else "<=50K"
    assert captured.row_digests(changed)[0] != captured.row_digests(rows)[0]
    missing = rows.copy()
    missing.loc[1, "workclass"] = None
    assert captured.row_digests(missing)[1] != captured.row_digests(rows)[1]


def test_display_uri_hides_a_password() -> None:
    assert captured.display_uri("ftp://user:s3cret@host/capture") == "ftp://user:***@host/capture"
    assert captured.display_uri("s3://bucket/capture") == "s3://bucket/capture"


def test_what_tasks_pass_each_other_pickles(
    tmp_path: Path, adult: AdultData, test_records: list[dict[str, Any]]
) -> None:
    """Prefect may persist or copy task results: the combined data must survive a pickle."""
    import cloudpickle

    replay_capture(tmp_path, test_records[:20])
    data = captured.split_capture(adult, captured.read(str(tmp_path), FAR_FUTURE), 0.2)
    assert isinstance(data, captured.CapturedData)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(data))
        assert isinstance(back, captured.CapturedData)
        assert back.summary == data.summary
        pd.testing.assert_frame_equal(back.test, data.test)


# --- trainer run --capture-uri ------------------------------------------------------------------


@pytest.mark.parametrize("no_flow", [True, False])
def test_run_passes_the_capture_uri_to_the_steps(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_flow: bool
) -> None:
    """Both paths get it: the settings of ``--no-flow`` and the overrides of the flow."""
    from trainer import cli, flow
    from trainer.registry import GateDecision

    seen: dict[str, Any] = {}

    def fake_run_once(settings: TrainerSettings) -> pipeline.RunOutcome:
        seen["capture_uri"] = settings.capture_uri
        return pipeline.RunOutcome("r", "1", {}, GateDecision(True, "ok"), 0.0)

    def fake_flow(overrides: dict[str, Any]) -> dict[str, Any]:
        seen["capture_uri"] = TrainerSettings(**overrides).capture_uri
        return {"version": "1"}

    monkeypatch.setattr(cli, "_setup", lambda settings: None)
    monkeypatch.setattr(pipeline, "run_once", fake_run_once)
    monkeypatch.setattr(flow, "training_flow", fake_flow)
    args = ["run", "--capture-uri", "s3://bucket/capture", *(["--no-flow"] if no_flow else [])]
    saved = dict(os.environ)
    try:
        assert cli.main(args) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert seen == {"capture_uri": "s3://bucket/capture"}
    assert '"version": "1"' in capsys.readouterr().out
