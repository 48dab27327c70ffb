"""The gate on the same rows: the champion is scored now on the candidate's evaluation rows.

The registry here is a stand-in that serves a real (tiny) bundle from a folder, so the
champion's figure is a real score of a real booster; the MLflow store itself is exercised in
tests/integration/trainer/test_capture_retrain.py.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, cast

import pytest
from sklearn.metrics import roc_auc_score

from trainer import dataset
from trainer.model.bundle import ModelBundle
from trainer.model.features import frame_columns
from trainer.pipeline import gate_and_promote, score_champion
from trainer.registry import ChampionScore, GateDecision, Registry, gate
from trainer.settings import TrainerSettings

FLOOR = 0.80
TOLERANCE = 0.002
EVAL_ROWS = 3000


class _Client:
    def __init__(self) -> None:
        self.batches: list[tuple[str, dict[str, float], dict[str, str]]] = []

    def log_batch(self, run_id: str, metrics: Any = (), tags: Any = ()) -> None:
        self.batches.append(
            (run_id, {m.key: m.value for m in metrics}, {t.key: t.value for t in tags})
        )


class _Registry:
    """Champion ``version`` whose bundle is ``bundle`` (None: its artifacts are gone)."""

    def __init__(self, bundle: ModelBundle | None, logged_auc: float | None = 0.9) -> None:
        self.bundle = bundle
        self.logged_auc = logged_auc
        self.client = _Client()
        self.calls: list[tuple[str, str, str]] = []
        self.downloads: list[str] = []

    def champion_version(self) -> str | None:
        return "4"

    def champion_metric(self) -> float | None:
        return self.logged_auc

    def download(self, version: str, dest: Path) -> Path:
        self.downloads.append(version)
        if self.bundle is None:
            raise OSError(f"No such file or directory: 'mlartifacts/models/{version}'")
        return self.bundle.save(dest / "bundle")

    def run_id(self, version: str) -> str | None:
        return f"run-of-{version}"

    def promote(self, version: str, reason: str) -> None:
        self.calls.append(("promote", version, reason))

    def reject(self, version: str, reason: str) -> None:
        self.calls.append(("reject", version, reason))


@pytest.fixture(scope="module")
def evaluation_data(adult_data: dataset.AdultData) -> dataset.AdultData:
    """The evaluation rows a candidate was measured on (part of adult.test, for speed)."""
    test = adult_data.test.iloc[:EVAL_ROWS].reset_index(drop=True)
    return dataset.AdultData(adult_data.train, test, adult_data.checksum, adult_data.source)


def _champion_auc(bundle: ModelBundle, data: dataset.AdultData) -> float:
    return float(roc_auc_score(dataset.labels(data.test), bundle.predict(frame_columns(data.test))))


def _settings() -> TrainerSettings:
    return TrainerSettings(gate_min_roc_auc=FLOOR, gate_tolerance=TOLERANCE)


# --- the rule and its reason ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "passed", "phrase"),
    [
        (0.9300, True, "≥ champion 0.9250"),
        (0.9200, False, "below the champion's 0.9250 minus tolerance"),
        (0.7000, False, "below the floor"),
    ],
)
def test_the_reason_cites_both_models_and_the_rows(
    candidate: float, passed: bool, phrase: str
) -> None:
    score = ChampionScore("4", 0.925, rows=16281)
    decision = gate(candidate, score, FLOOR, TOLERANCE)
    assert decision.passed is passed
    assert phrase in decision.reason
    assert f"candidate {candidate:.4f} and champion (version 4) 0.9250" in decision.reason
    assert "both on the same 16281 evaluation rows" in decision.reason
    assert decision.champion == score


def test_the_same_rule_as_with_a_bare_figure() -> None:
    for candidate in (0.70, 0.80, 0.9229, 0.923, 0.93):
        with_rows = gate(candidate, ChampionScore("4", 0.925, rows=10), FLOOR, TOLERANCE)
        bare = gate(candidate, 0.925, FLOOR, TOLERANCE)
        assert with_rows.passed is bare.passed
        assert with_rows.reason.startswith(bare.reason)
        assert bare.champion is None


def test_a_fallback_says_so_and_gives_the_logged_figure() -> None:
    score = ChampionScore("4", 0.9301, fallback="cannot load model bundle")
    decision = gate(0.9290, score, FLOOR, TOLERANCE)
    assert decision.passed
    assert (
        "could not be scored on the evaluation rows (cannot load model bundle)" in decision.reason
    )
    assert "test_roc_auc 0.9301 as logged by its own run" in decision.reason
    assert "same" not in decision.reason


def test_a_champion_without_any_figure_does_not_block_and_is_not_called_absent() -> None:
    decision = gate(0.93, ChampionScore("4", None, fallback="gone"), FLOOR, TOLERANCE)
    assert decision.passed
    assert "no champion yet" not in decision.reason
    assert "the champion has no usable test_roc_auc" in decision.reason


# --- scoring the champion on the candidate's rows --------------------------------------------


def test_the_champion_is_scored_on_the_evaluation_rows(
    tiny_bundle: ModelBundle, evaluation_data: dataset.AdultData
) -> None:
    registry = _Registry(tiny_bundle)
    score = score_champion(cast(Registry, registry), evaluation_data)
    assert score is not None
    assert score.rows == EVAL_ROWS
    assert score.fallback is None
    assert score.roc_auc == pytest.approx(_champion_auc(tiny_bundle, evaluation_data), abs=1e-12)
    assert score.metrics["roc_auc"] == score.roc_auc
    assert 0.0 < score.metrics["accuracy"] <= 1.0
    assert registry.downloads == ["4"]


def test_no_champion_no_score(evaluation_data: dataset.AdultData) -> None:
    registry = _Registry(None)
    registry.champion_version = lambda: None  # type: ignore[method-assign]
    assert score_champion(cast(Registry, registry), evaluation_data) is None
    assert registry.downloads == []


@pytest.mark.parametrize("margin", [+0.01, -0.01])
def test_gate_and_promote_compares_both_on_the_same_rows_and_logs_it(
    tiny_bundle: ModelBundle, evaluation_data: dataset.AdultData, margin: float
) -> None:
    champion_auc = _champion_auc(tiny_bundle, evaluation_data)
    # the champion's own run logged a figure that would decide the other way
    registry = _Registry(tiny_bundle, logged_auc=champion_auc - 10 * margin)
    candidate = champion_auc + margin
    decision = gate_and_promote(
        cast(Registry, registry), _settings(), "7", {"test_roc_auc": candidate}, evaluation_data
    )
    assert decision.passed is (margin > 0)
    assert registry.calls == [("promote" if margin > 0 else "reject", "7", decision.reason)]
    assert f"champion (version 4) {champion_auc:.4f}" in decision.reason
    assert f"candidate {candidate:.4f}" in decision.reason
    assert f"same {EVAL_ROWS} evaluation rows" in decision.reason
    [(run_id, metrics, tags)] = registry.client.batches
    assert run_id == "run-of-7"
    assert metrics["champion_eval_roc_auc"] == pytest.approx(champion_auc, abs=1e-12)
    assert {"champion_eval_accuracy", "champion_eval_f1", "champion_eval_log_loss"} <= set(metrics)
    assert tags == {
        "gate": "passed" if margin > 0 else "rejected",
        "gate_reason": decision.reason,
        "champion_version": "4",
        "champion_scored_on": "evaluation rows",
    }


def test_a_champion_that_cannot_be_loaded_falls_back_to_its_logged_metric(
    evaluation_data: dataset.AdultData,
) -> None:
    registry = _Registry(None, logged_auc=0.95)
    decision = gate_and_promote(
        cast(Registry, registry), _settings(), "7", {"test_roc_auc": 0.93}, evaluation_data
    )
    assert not decision.passed  # 0.93 < 0.95 - 0.002: the logged figure decided
    assert "could not be scored on the evaluation rows (No such file or directory" in (
        decision.reason
    )
    assert "test_roc_auc 0.9500 as logged by its own run" in decision.reason
    [(_, metrics, tags)] = registry.client.batches
    assert metrics == {}
    assert tags["champion_scored_on"] == "logged"
    assert tags["champion_version"] == "4"


def test_without_rows_the_logged_metric_is_compared_as_before() -> None:
    registry = _Registry(None, logged_auc=0.93)
    decision = gate_and_promote(cast(Registry, registry), _settings(), "7", {"test_roc_auc": 0.95})
    assert decision.passed
    assert decision.reason == "test_roc_auc 0.9500 ≥ champion 0.9300 − 0.0020"
    assert registry.downloads == []
    assert registry.client.batches == []


def test_a_decision_pickles_with_its_champion() -> None:
    decision = GateDecision(True, "ok", ChampionScore("4", 0.9, rows=3, metrics={"f1": 0.7}))
    assert pickle.loads(pickle.dumps(decision)) == decision
    assert math.isclose(pickle.loads(pickle.dumps(decision)).champion.metrics["f1"], 0.7)
