"""The trainer against a real MLflow store (SQLite + local artifacts in a temporary folder).

One module-scoped history is built once: a good run, a deliberately weak run, a second good
run. The tests read that history; the ones that move the alias run last and in order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from trainer import dataset, pipeline
from trainer.exceptions import RegistryError
from trainer.model import columns
from trainer.model.bundle import BUNDLE_IN_MODEL, ModelBundle
from trainer.model.features import frame_columns
from trainer.registry import Registry, connect
from trainer.settings import TrainerSettings
from trainer.train import REFIT_ETA_FACTOR

pytestmark = pytest.mark.integration

MODEL = "adult-income"
# Fixed, quick parameters: the good runs must clear the (lowered) floor, not be the best.
QUICK_OVERRIDE = {"eta": 0.1, "max_depth": 5, "colsample_bytree": 0.5, "scale_pos_weight": 2.0}
WEAK_OVERRIDE = {"max_depth": 1}
TRAINER = Path(sys.executable).with_name("trainer")


@dataclass(frozen=True)
class History:
    uri: str
    client: MlflowClient
    registry: Registry
    data: dataset.AdultData
    first: pipeline.RunOutcome
    first_probabilities: np.ndarray
    first_bundle: ModelBundle
    weak: pipeline.RunOutcome
    second: pipeline.RunOutcome


def _settings(uri: str, **overrides: object) -> TrainerSettings:
    values: dict[str, object] = {
        "mlflow_tracking_uri": uri,
        "trials": 1,
        "max_rounds": 150,
        "early_stopping_rounds": 20,
        "gate_min_roc_auc": 0.90,
        "gate_tolerance": 0.002,
        # one XGBoost thread: OpenMP threads spin-wait and crawl when the cores are shared
        "n_jobs": 1,
    }
    values.update(overrides)
    return TrainerSettings(**values)  # type: ignore[arg-type]


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
    folder = tmp_path_factory.mktemp("mlflow-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    saved = _mlflow_env()
    try:
        good = _settings(uri)
        # the first run step by step (what run_once does), to keep the in-memory bundle
        registry = pipeline.check_registry(good)
        data = pipeline.load_data(good)
        trained = pipeline.train(data, good, QUICK_OVERRIDE)
        evaluation = pipeline.evaluate(trained, data)
        run_id, version = pipeline.log_and_register(good, data, trained, evaluation)
        decision = pipeline.gate_and_promote(registry, good, version, evaluation.metrics)
        first = pipeline.RunOutcome(run_id, version, evaluation.metrics, decision, 0.0)
        # at most 5 stumps (refit in smaller steps): registered, then refused by the gate
        weak = pipeline.run_once(_settings(uri, max_rounds=5), params_override=WEAK_OVERRIDE)
        # a tuned run (3 trials, room for a 3-member ensemble); the wider tolerance keeps the
        # gate about the champion comparison, not about how good 3 short trials happen to be
        second = pipeline.run_once(
            _settings(uri, trials=3, max_rounds=300, gate_tolerance=0.05, max_trees=5000)
        )
        yield History(
            uri=uri,
            client=MlflowClient(tracking_uri=uri, registry_uri=uri),
            registry=registry,
            data=data,
            first=first,
            first_probabilities=evaluation.probabilities,
            first_bundle=trained.bundle,
            weak=weak,
            second=second,
        )
    finally:
        _restore(saved)


def test_runs_register_consecutive_versions(history: History) -> None:
    assert (history.first.version, history.weak.version, history.second.version) == ("1", "2", "3")
    versions = history.client.search_model_versions(f"name='{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    run = history.client.get_run(history.first.run_id)
    for name in ("test_roc_auc", "test_accuracy_at_0_5", "test_f1", "test_brier", "threshold"):
        assert run.data.metrics[name] == pytest.approx(history.first.metrics[name])
    assert run.data.tags["data_checksum"] == history.data.checksum
    artifacts = {a.path for a in history.client.list_artifacts(history.first.run_id, "plots")}
    assert "plots/roc_curve.png" in artifacts


def test_first_good_run_was_promoted(history: History) -> None:
    assert history.first.decision.passed
    mv = history.client.get_model_version(MODEL, "1")
    assert mv.tags["gate"] == "passed"
    assert "no champion yet" in mv.tags["gate_reason"]


def test_registered_bundle_reproduces_in_memory_probabilities(
    history: History, tmp_path: Path
) -> None:
    """The serving path (bundle loaded from the registry) equals training on all of adult.test."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL}/1", dst_path=str(tmp_path), tracking_uri=history.uri
    )
    bundle = ModelBundle.load(Path(local) / BUNDLE_IN_MODEL)
    columns = frame_columns(history.data.test)
    served = bundle.predict(columns)
    assert served.shape == (len(history.data.test),)
    np.testing.assert_array_equal(served, history.first_probabilities)
    np.testing.assert_array_equal(served, history.first_bundle.predict(columns))
    assert bundle.threshold == history.first_bundle.threshold
    assert bundle.encoder.to_dict() == history.first_bundle.encoder.to_dict()
    assert bundle.profile == history.first_bundle.profile
    assert bundle.metadata["data_checksum"] == history.data.checksum
    bundle.smoke_test()


def test_pyfunc_model_from_the_registry_gives_the_same_probabilities(history: History) -> None:
    mlflow.set_tracking_uri(history.uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    frame = history.data.test[list(columns.FEATURE_COLUMNS)]
    out = model.predict(frame)
    assert isinstance(out, pd.DataFrame)
    np.testing.assert_array_equal(out["probability"].to_numpy(), history.first_probabilities)
    # JSON callers send whole numbers as ints: the signature must not refuse them
    as_ints = frame.astype({c: "int64" for c in columns.NUMERIC_COLUMNS})
    np.testing.assert_array_equal(
        model.predict(as_ints)["probability"].to_numpy(), history.first_probabilities
    )
    expected_labels = np.where(
        history.first_probabilities >= history.first_bundle.threshold, ">50K", "<=50K"
    )
    assert out["label"].tolist() == expected_labels.tolist()


def test_weak_run_is_registered_but_not_promoted(history: History) -> None:
    weak = history.weak
    assert not weak.decision.passed
    assert weak.metrics["test_roc_auc"] < 0.90
    mv = history.client.get_model_version(MODEL, weak.version)
    assert mv.tags["gate"] == "rejected"
    assert "below the floor" in mv.tags["gate_reason"]
    assert not mv.aliases
    params = history.client.get_run(weak.run_id).data.params
    assert params["max_depth"] == "1"
    # an override trains one member: at most 5 early-stopped rounds, refit in 4x smaller steps
    assert params["ensemble_size"] == "1"
    assert int(params["rounds"]) <= 5 / REFIT_ETA_FACTOR


def test_second_good_run_took_the_alias(history: History) -> None:
    assert history.second.decision.passed
    assert history.registry.champion_version() == "3"
    assert history.registry.history() == ["1", "3"]


def test_tuned_run_logs_its_ensemble_members(history: History, tmp_path: Path) -> None:
    run = history.client.get_run(history.second.run_id)
    assert run.data.params["ensemble_size"] == "3"
    path = history.client.download_artifacts(run.info.run_id, "ensemble.json", str(tmp_path))
    members = json.loads(Path(path).read_text())["members"]
    assert len(members) == 3
    assert sum(m["rounds"] for m in members) == int(run.data.params["rounds"])
    aucs = [m["valid_roc_auc"] for m in members]
    assert aucs == sorted(aucs, reverse=True)
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{MODEL}/{history.second.version}",
        dst_path=str(tmp_path / "model"),
        tracking_uri=history.uri,
    )
    bundle = ModelBundle.load(Path(folder) / BUNDLE_IN_MODEL)
    assert bundle.booster.num_boosted_rounds() == int(run.data.params["rounds"])
    assert bundle.metadata["members"] == members
    bundle.smoke_test()


def test_models_command_lists_versions_aliases_and_gate(history: History) -> None:
    out = subprocess.run(
        [str(TRAINER), "models", "--tracking-uri", history.uri],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert sorted(rows) == ["1", "2", "3"]
    assert rows["3"][1] == "champion"
    assert rows["2"][1:3] == ["-", "rejected"]
    assert rows["1"][2] == "passed"
    assert float(rows["1"][3]) == pytest.approx(history.first.metrics["test_roc_auc"], abs=1e-4)


def test_promote_and_rollback_move_the_alias(history: History) -> None:
    registry = Registry(connect(history.uri), MODEL, "champion")
    registry.promote("2", "promoted by hand")  # a human may override the gate
    assert registry.champion_version() == "2"
    assert history.client.get_model_version(MODEL, "2").tags["gate"] == "passed"
    assert registry.rollback() == "3"
    assert registry.champion_version() == "3"
    assert history.client.get_model_version(MODEL, "2").tags["rolled_back"] == "true"
    assert registry.rollback() == "1"
    assert registry.champion_version() == "1"
    with pytest.raises(RegistryError, match="no earlier champion"):
        registry.rollback()
    assert registry.champion_version() == "1"
    with pytest.raises(RegistryError, match="no version 99"):
        registry.promote("99")
    assert registry.champion_version() == "1"


def test_promote_and_rollback_commands(history: History) -> None:
    def trainer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TRAINER), *args, "--tracking-uri", history.uri],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    promoted = trainer("promote", "3")
    assert promoted.returncode == 0, promoted.stderr
    assert "version 3 is now @champion" in promoted.stdout
    assert history.registry.champion_version() == "3"
    rolled = trainer("rollback")
    assert rolled.returncode == 0, rolled.stderr
    assert "rolled back to version 1" in rolled.stdout
    assert history.registry.champion_version() == "1"
    missing = trainer("promote", "42")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == ["trainer: model adult-income has no version 42"]
    assert history.registry.champion_version() == "1"
