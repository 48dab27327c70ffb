"""Retraining on the capture against a real MLflow store and real capture files.

One module-scoped history: a quick champion trained on adult.data alone, then a retrain with
a capture that replays part of adult.test (labelled, some outcomes after the cutoff, a few
records the worker would refuse). The tests read that history: which datasets the runs
record, and that the gate scored the champion on the candidate's evaluation rows in the
candidate's own run. The last test deletes the champion's artifacts and gates again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import mlflow
import pyarrow as pa
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import roc_auc_score
from stack_helpers import ModelStore

from stream_worker.capture.layout import APPLICANTS, OUTCOMES, CaptureLocation
from stream_worker.devtools import replay
from stream_worker.exceptions import ModelUnavailableError
from stream_worker.model_watcher import MlflowModelSource
from trainer import captured, dataset, pipeline
from trainer.model.bundle import ModelBundle
from trainer.model.features import frame_columns
from trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

MODEL = "adult-income"
TRAINER = Path(sys.executable).with_name("trainer")
T0 = datetime(2026, 11, 1, tzinfo=UTC)
REPLAYED = 6000  # adult.test rows 0..5999, one outcome a second
CUTOFF = T0 + timedelta(seconds=4999)  # rows 5000.. are not labelled yet at the cutoff
LABELLED = 5000
BAD_RECORDS = 2


@dataclass(frozen=True)
class History:
    store: ModelStore
    client: MlflowClient
    capture: Path
    settings: TrainerSettings
    data: dataset.AdultData  # what the retrain trained and evaluated on, loaded again
    champion: pipeline.RunOutcome  # version 1: adult.data only
    retrain: pipeline.RunOutcome  # version 2: with the capture


def _write_capture(root: Path) -> None:
    records = replay.test_records()[:REPLAYED]
    bad = [(f"bad-{i}", b"{not json") for i in range(BAD_RECORDS)]
    applicants = [(r["applicant_id"], replay.wire_value(r)) for r in records] + bad
    outcomes = [
        (r["applicant_id"], r["_label"], T0 + timedelta(seconds=i)) for i, r in enumerate(records)
    ] + [(applicant_id, ">50K", T0) for applicant_id, _ in bad]
    location = CaptureLocation.from_uri(str(root))
    location.write(
        APPLICANTS,
        pa.table(
            {
                "applicant_id": [a for a, _ in applicants],
                "value": [v for _, v in applicants],
                "partition": [0] * len(applicants),
                "offset": list(range(len(applicants))),
                "timestamp": [T0] * len(applicants),
            }
        ),
        T0.date(),
        0,
    )
    location.write(
        OUTCOMES,
        pa.table(
            {
                "applicant_id": [a for a, _, _ in outcomes],
                "label": [label for _, label, _ in outcomes],
                "observed_at": [t for _, _, t in outcomes],
                "partition": [0] * len(outcomes),
                "offset": list(range(len(outcomes))),
                "timestamp": [T0 + timedelta(hours=2)] * len(outcomes),
            }
        ),
        date(2026, 11, 2),
        0,
    )


def _mlflow_env() -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def _restore(saved: dict[str, str | None]) -> None:
    """mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: undo it for later tests."""
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])  # type: ignore[arg-type]
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])  # type: ignore[arg-type]
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    store = ModelStore(tmp_path_factory.mktemp("mlflow"))
    capture = tmp_path_factory.mktemp("capture")
    _write_capture(capture)
    saved = _mlflow_env()
    try:
        champion = pipeline.run_once(store.settings(timeout_seconds=30))
        settings = store.settings(
            timeout_seconds=30, capture_uri=str(capture), capture_cutoff=CUTOFF
        )
        retrain = pipeline.run_once(settings)
        yield History(
            store=store,
            client=MlflowClient(tracking_uri=store.uri, registry_uri=store.uri),
            capture=capture,
            settings=settings,
            data=pipeline.load_data(settings),
            champion=champion,
            retrain=retrain,
        )
    finally:
        _restore(saved)


def _inputs(client: MlflowClient, run_id: str) -> dict[str, tuple[str, str, str, int]]:
    """name -> (context, digest, source JSON, rows) of the run's logged datasets."""
    inputs = client.get_run(run_id).inputs
    assert inputs is not None
    found = {}
    for dataset_input in inputs.dataset_inputs:
        ds = dataset_input.dataset
        context = {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"]
        rows = int(json.loads(str(ds.profile))["num_rows"])
        found[ds.name] = (context, ds.digest, ds.source, rows)
    return found


def _score(store: ModelStore, version: str, data: dataset.AdultData, dest: Path) -> float:
    """The version's ROC-AUC on ``data.test``, downloaded as the worker downloads it."""
    source = MlflowModelSource(store.uri, MODEL, "champion")
    bundle = ModelBundle.load(source.download(version, dest))
    probabilities = bundle.predict(frame_columns(data.test))
    return float(roc_auc_score(dataset.labels(data.test), probabilities))


def test_the_retrain_used_the_capture_as_planned(history: History) -> None:
    assert (history.champion.version, history.retrain.version) == ("1", "2")
    summary = captured.summary_of(history.data)
    assert summary is not None
    assert summary.labelled == LABELLED + BAD_RECORDS
    assert summary.rejected == {"not_json": BAD_RECORDS}
    assert summary.eval_rows + summary.eval_dropped == captured.eval_count(LABELLED, 0.2)
    assert summary.train_rows == LABELLED - captured.eval_count(LABELLED, 0.2)
    # the labelled replayed rows (and exact duplicates of them) left the adult.test part; the
    # replayed rows not labelled by the cutoff still evaluate from the file
    assert summary.test_rows + summary.test_removed == 16281
    assert LABELLED <= summary.test_removed <= LABELLED + 10  # + exact duplicates of them


def test_runs_record_their_training_and_evaluation_datasets(history: History) -> None:
    inputs = _inputs(history.client, history.retrain.run_id)
    assert sorted(inputs) == ["adult.data", "adult.test", "capture.evaluation", "capture.training"]
    expected = {p.name: p for p in captured.data_parts(history.data)}
    for name, (context, digest, source, rows) in inputs.items():
        assert context == expected[name].context
        assert digest == expected[name].digest
        assert rows == len(expected[name].frame)
        assert json.loads(source)["uri"] == expected[name].source
    assert json.loads(inputs["capture.training"][2])["uri"] == history.capture.as_uri()
    assert json.loads(inputs["adult.data"][2])["uri"].endswith("trainer/data/adult.data")
    summary = captured.summary_of(history.data)
    assert summary is not None
    assert inputs["capture.training"][3] == summary.train_rows
    assert inputs["capture.evaluation"][3] == summary.eval_rows

    run = history.client.get_run(history.retrain.run_id)
    params, tags = run.data.params, run.data.tags
    assert params["train_rows_adult_data"] == "32561"
    assert params["train_rows_captured"] == str(summary.train_rows)
    assert params["eval_rows"] == str(len(history.data.test))
    assert params["eval_rows_captured"] == str(summary.eval_rows)
    assert params["capture_uri"] == history.capture.as_uri()
    assert params["capture_cutoff"] == CUTOFF.isoformat()
    assert tags["capture_observed_min"] == T0.isoformat()
    assert tags["capture_observed_max"] == CUTOFF.isoformat()
    assert tags["capture_rejected"] == f"not_json={BAD_RECORDS}"
    assert tags["data_checksum"] == history.data.checksum


def test_a_run_without_capture_records_adult_data_and_adult_test(history: History) -> None:
    inputs = _inputs(history.client, history.champion.run_id)
    assert {name: (c, rows) for name, (c, _, _, rows) in inputs.items()} == {
        "adult.data": ("training", 32561),
        "adult.test": ("evaluation", 16281),
    }
    params = history.client.get_run(history.champion.run_id).data.params
    assert params["train_rows_captured"] == "0"
    assert "capture_uri" not in params


def test_the_gate_scored_the_champion_on_the_same_rows_in_the_same_run(
    history: History, tmp_path: Path
) -> None:
    run = history.client.get_run(history.retrain.run_id)
    metrics, tags = run.data.metrics, run.data.tags
    candidate_auc = metrics["test_roc_auc"]
    champion_auc = metrics["champion_eval_roc_auc"]
    rows = len(history.data.test)
    assert tags["champion_version"] == "1"
    assert tags["champion_scored_on"] == "evaluation rows"
    # both figures are reproducible on exactly these rows: the same rows, for both models
    assert _score(history.store, "1", history.data, tmp_path / "v1") == pytest.approx(
        champion_auc, abs=1e-9
    )
    assert _score(history.store, "2", history.data, tmp_path / "v2") == pytest.approx(
        candidate_auc, abs=1e-9
    )
    # not the figure the champion's own run logged (on all of adult.test)
    own = history.client.get_run(history.champion.run_id).data.metrics["test_roc_auc"]
    assert champion_auc != own
    reason = history.retrain.decision.reason
    assert f"candidate {candidate_auc:.4f} and champion (version 1) {champion_auc:.4f}" in reason
    assert f"both on the same {rows} evaluation rows" in reason
    assert tags["gate_reason"] == reason
    assert history.client.get_model_version(MODEL, "2").tags["gate_reason"] == reason
    # the first version had no champion to meet: no champion figures in its run
    first = history.client.get_run(history.champion.run_id).data
    assert "champion_eval_roc_auc" not in first.metrics
    assert "no champion yet" in first.tags["gate_reason"]


def test_the_prefect_flow_retrains_on_the_capture_with_the_same_rows_gate(
    history: History, tmp_path: Path
) -> None:
    """``trainer run --capture-uri``: the real flow (its tasks pass the combined data on)."""
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
            "TRAINER_TIMEOUT_SECONDS": "30",
            "TRAINER_MAX_ROUNDS": "120",
            "TRAINER_EARLY_STOPPING_ROUNDS": "10",
            "TRAINER_N_JOBS": "1",
            "TRAINER_GATE_MIN_ROC_AUC": "0.5",
            "TRAINER_GATE_TOLERANCE": "1.0",
            "TRAINER_CAPTURE_CUTOFF": CUTOFF.isoformat(),
        }
    )
    champion = history.client.get_model_version_by_alias(MODEL, "champion").version
    out = subprocess.run(
        [
            str(TRAINER),
            "run",
            "--tracking-uri",
            history.store.uri,
            "--capture-uri",
            str(history.capture),
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    run = history.client.get_run(result["run_id"])
    assert run.data.params["capture_uri"] == history.capture.as_uri()
    assert run.data.params["eval_rows"] == str(len(history.data.test))
    assert run.data.tags["champion_version"] == str(champion)
    assert run.data.tags["champion_scored_on"] == "evaluation rows"
    champion_auc = run.data.metrics["champion_eval_roc_auc"]
    assert (
        f"champion (version {champion}) {champion_auc:.4f}, both on the same "
        f"{len(history.data.test)} evaluation rows" in result["reason"]
    )
    assert "capture.training" in _inputs(history.client, result["run_id"])


def test_a_champion_whose_artifacts_are_gone_falls_back_to_its_logged_metric(
    history: History, tmp_path: Path
) -> None:
    history.store.promote("1")
    location = history.client.get_model_version_download_uri(MODEL, "1")
    folder = Path(urllib.request.url2pathname(urllib.parse.urlparse(location).path))
    assert folder.is_dir()
    shutil.rmtree(folder)
    source = MlflowModelSource(history.store.uri, MODEL, "champion")
    with pytest.raises(ModelUnavailableError, match="cannot download version 1"):
        source.download("1", tmp_path / "gone")

    saved = _mlflow_env()
    try:
        registry = pipeline.check_registry(history.settings)
        decision = pipeline.gate_and_promote(
            registry, history.settings, "2", history.retrain.metrics, history.data
        )
    finally:
        _restore(saved)
    own = history.client.get_run(history.champion.run_id).data.metrics["test_roc_auc"]
    assert "champion (version 1) could not be scored on the evaluation rows" in decision.reason
    assert f"test_roc_auc {own:.4f} as logged by its own run" in decision.reason
    tags = history.client.get_run(history.retrain.run_id).data.tags
    assert tags["champion_scored_on"] == "logged"
    assert tags["gate_reason"] == decision.reason
    assert decision.passed  # the permissive gate of the quick store
    assert registry.champion_version() == "2"
    previous = registry.history()[-2]
    assert registry.rollback() == previous  # and the alias still moves back by hand
    assert registry.champion_version() == previous
