"""ModelWatcher: load, keep, swap, refuse broken versions, and ride out registry outages;
fall back to the version it replaced when the one in service fails on live records."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ModelUnavailableError, ScoringSystemError
from stream_worker.model_watcher import AliasTarget, ModelWatcher
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel
from trainer.model.bundle import BOOSTER_FILE, BUNDLE_FILE, ModelBundle, records_to_columns

NAME = "adult-income"


class FakeSource:
    """A registry double: ``version`` is what the alias points at; bundles live in folders."""

    name = NAME

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders
        self.version: str | None = None
        self.reachable = True
        self.broken_downloads: set[str] = set()
        self.downloads: list[str] = []

    def target(self) -> AliasTarget:
        if not self.reachable:
            raise ModelUnavailableError("registry unreachable: connection refused")
        if self.version is None:
            raise ModelUnavailableError(f"no {NAME}@champion")
        return AliasTarget(self.version, f"run-{self.version}")

    def download(self, version: str, dest: Path) -> Path:
        self.downloads.append(version)
        if version in self.broken_downloads:
            raise ModelUnavailableError(f"cannot download version {version}: timed out")
        folder = dest / "bundle"
        shutil.copytree(self.folders[version], folder)
        return folder

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return {"test_roc_auc": 0.91, "valid_f1": 0.7, "run": float(run_id.split("-")[1])}


@pytest.fixture(scope="module")
def bundle_folders(
    tiny_bundle: ModelBundle, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Versions 1, 2 and 9 are good (2 has threshold 0.4); 3 is truncated; 4 fails its smoke
    test; 5 lacks its booster file; 6 has an unreadable bundle.json. 7, 8 and 10 predict
    fine but fail on the stream's path: 7's drift profile lacks a feature, 8's reference
    sample does not pass the wire schema, 10's profile has too few bins for a category."""
    root = tmp_path_factory.mktemp("versions")
    folders = {
        "1": tiny_bundle.save(root / "v1"),
        "2": dataclasses.replace(tiny_bundle, threshold=0.4).save(root / "v2"),
    }
    truncated = tiny_bundle.save(root / "v3")
    booster = truncated / BOOSTER_FILE
    booster.write_bytes(booster.read_bytes()[: booster.stat().st_size // 3])
    folders["3"] = truncated
    wrong = [1.0 - p for p in tiny_bundle.reference_probabilities]
    folders["4"] = dataclasses.replace(tiny_bundle, reference_probabilities=wrong).save(root / "v4")
    missing = tiny_bundle.save(root / "v5")
    (missing / BOOSTER_FILE).unlink()
    folders["5"] = missing
    garbled = tiny_bundle.save(root / "v6")
    (garbled / BUNDLE_FILE).write_text("{ not json")
    folders["6"] = garbled
    profile = tiny_bundle.profile
    numeric = {k: v for k, v in profile.numeric_edges.items() if k != "age"}
    no_age = dataclasses.replace(profile, numeric_edges=numeric)
    folders["7"] = dataclasses.replace(tiny_bundle, profile=no_age).save(root / "v7")
    as_text = [dict(r) for r in tiny_bundle.reference_records]
    as_text[0]["age"] = str(as_text[0]["age"])  # numpy reads "39" as 39; the schema refuses it
    folders["8"] = dataclasses.replace(tiny_bundle, reference_records=as_text).save(root / "v8")
    categorical = dict(profile.categorical_props)
    categorical["native_country"] = categorical["native_country"][:2]
    few_bins = dataclasses.replace(profile, categorical_props=categorical)
    folders["10"] = dataclasses.replace(tiny_bundle, profile=few_bins).save(root / "v10")
    folders["9"] = tiny_bundle.save(root / "v9")
    return folders


@pytest.fixture
def source(bundle_folders: dict[str, Path]) -> FakeSource:
    return FakeSource(bundle_folders)


@pytest.fixture
def metrics() -> ScorerMetrics:
    return ScorerMetrics(CollectorRegistry())


@pytest.fixture
def watcher(source: FakeSource, metrics: ScorerMetrics) -> Iterator[ModelWatcher]:
    w = ModelWatcher(source, metrics, nthread=1)  # type: ignore[arg-type]
    yield w
    w.close()


def _reloads(metrics: ScorerMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("scorer_model_reloads_total", {"result": result})
    return 0.0 if value is None else value


def _info_versions(metrics: ScorerMetrics) -> list[str]:
    return [
        s.labels["model_version"]
        for family in metrics.registry.collect()
        if family.name == "scorer_model_info"
        for s in family.samples
    ]


def test_first_poll_loads_the_aliased_version(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics, tiny_bundle: ModelBundle
) -> None:
    assert not watcher.ready
    source.version = "1"
    loaded = watcher.poll()
    assert loaded is not None
    assert watcher.current is loaded
    assert watcher.ready
    assert (loaded.name, loaded.version, loaded.run_id) == (NAME, "1", "run-1")
    columns = records_to_columns(tiny_bundle.reference_records)
    np.testing.assert_allclose(
        loaded.bundle.predict(columns), tiny_bundle.predict(columns), rtol=0, atol=1e-7
    )
    assert _reloads(metrics, "success") == 1
    assert _reloads(metrics, "failure") == 0
    assert _info_versions(metrics) == ["1"]
    assert metrics.registry.get_sample_value("scorer_model_loaded") == 1
    info = watcher.info()
    assert info["loaded"] is True
    assert info["version"] == "1"
    assert info["threshold"] == 0.5
    assert info["test_metrics"] == {"test_roc_auc": 0.91}
    assert info["refused_versions"] == {}


def test_same_version_is_not_reloaded(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    source.version = "1"
    first = watcher.poll()
    assert watcher.poll() is None
    assert watcher.poll() is None
    assert watcher.current is first
    assert source.downloads == ["1"]
    assert _reloads(metrics, "success") == 1


def test_a_new_version_is_swapped_in(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    source.version = "1"
    watcher.poll()
    source.version = "2"
    loaded = watcher.poll()
    assert loaded is not None
    assert watcher.current is loaded
    assert loaded.version == "2"
    assert loaded.bundle.threshold == 0.4
    assert _reloads(metrics, "success") == 2
    assert _info_versions(metrics) == ["2"]
    # and back: a rollback of the alias is a swap too
    source.version = "1"
    assert watcher.poll() is not None
    assert watcher.current is not None
    assert watcher.current.version == "1"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("3", id="truncated-booster"),
        pytest.param("4", id="smoke-test-fails"),
        pytest.param("5", id="booster-missing"),
        pytest.param("6", id="bundle-json-garbled"),
        pytest.param("7", id="drift-profile-lacks-a-feature"),
        pytest.param("8", id="reference-sample-fails-the-schema"),
        pytest.param("10", id="drift-profile-bins-do-not-fit"),
    ],
)
def test_a_broken_version_is_refused_and_the_old_one_keeps_serving(
    watcher: ModelWatcher,
    source: FakeSource,
    metrics: ScorerMetrics,
    tiny_bundle: ModelBundle,
    bad: str,
) -> None:
    source.version = "1"
    serving = watcher.poll()
    assert serving is not None
    source.version = bad
    assert watcher.poll() is None
    assert watcher.current is serving
    assert _reloads(metrics, "failure") == 1
    assert _reloads(metrics, "success") == 1
    assert _info_versions(metrics) == ["1"]
    assert set(watcher.refused) == {bad}
    assert watcher.last_error is not None
    assert f"version {bad} refused" in watcher.last_error
    info = watcher.info()
    assert info["version"] == "1"
    assert bad in info["refused_versions"]
    # the old model still scores
    columns = records_to_columns(tiny_bundle.reference_records)
    np.testing.assert_allclose(
        serving.bundle.predict(columns), tiny_bundle.reference_probabilities, atol=1e-6
    )

    # a refused version is not downloaded or counted again on later polls
    assert watcher.poll() is None
    assert source.downloads == ["1", bad]
    assert _reloads(metrics, "failure") == 1

    # and a good version after it is still picked up
    source.version = "2"
    assert watcher.poll() is not None
    assert watcher.current is not None
    assert watcher.current.version == "2"
    assert watcher.last_error is None


def test_a_broken_first_version_leaves_the_watcher_not_ready(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    source.version = "4"
    assert watcher.poll() is None
    assert not watcher.ready
    assert watcher.info()["loaded"] is False
    assert "smoke test" in (watcher.info()["error"] or "")
    assert _reloads(metrics, "failure") == 1
    assert metrics.registry.get_sample_value("scorer_model_loaded") == 0


def test_an_unreachable_registry_leaves_the_current_model_in_place(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    source.version = "1"
    serving = watcher.poll()
    source.reachable = False
    source.version = "2"
    with pytest.raises(ModelUnavailableError):
        watcher.poll()
    assert watcher.current is serving
    assert watcher.ready
    assert watcher.last_error is not None
    assert "unreachable" in watcher.last_error
    assert _reloads(metrics, "failure") == 0  # nothing was attempted
    assert _info_versions(metrics) == ["1"]
    assert watcher.refused == {}

    source.reachable = True
    assert watcher.poll() is not None
    assert watcher.current is not None
    assert watcher.current.version == "2"


def test_no_alias_yet_raises_and_stays_not_ready(watcher: ModelWatcher, source: FakeSource) -> None:
    with pytest.raises(ModelUnavailableError, match="champion"):
        watcher.poll()
    assert not watcher.ready
    assert watcher.info() == {"loaded": False, "error": f"no {NAME}@champion"}


def test_a_failed_download_is_retried_not_refused(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    source.version = "1"
    serving = watcher.poll()
    source.version = "2"
    source.broken_downloads = {"2"}
    assert watcher.poll() is None
    assert watcher.current is serving
    assert watcher.refused == {}
    assert _reloads(metrics, "failure") == 1

    source.broken_downloads = set()
    loaded = watcher.poll()
    assert loaded is not None
    assert loaded.version == "2"
    assert source.downloads == ["1", "2", "2"]


def test_no_version_leaves_files_behind(source: FakeSource, metrics: ScorerMetrics) -> None:
    """Fault 7: each version's download folder stayed until shutdown, so the disk used grew
    with every promotion. A bundle is in memory once loaded; its files go at once."""
    watcher = ModelWatcher(source, metrics)  # type: ignore[arg-type]
    workdir = watcher._workdir
    for version in ("1", "2", "3", "9"):  # 3 is refused: its files go as well
        source.version = version
        watcher.poll()
        assert list(workdir.iterdir()) == []
    assert watcher.current is not None
    assert watcher.current.version == "9"
    watcher.close()
    assert not workdir.exists()


def test_close_waits_for_a_running_poll(
    source: FakeSource, metrics: ScorerMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault 7: close() deleted the download folder while a poll thread could still be
    writing to it. It now waits for the poll, which then finds nothing half-deleted."""
    watcher = ModelWatcher(source, metrics)  # type: ignore[arg-type]
    source.version = "1"
    downloading, release = threading.Event(), threading.Event()
    real_download = source.download

    def slow_download(version: str, dest: Path) -> Path:
        downloading.set()
        assert release.wait(10)
        return real_download(version, dest)

    monkeypatch.setattr(source, "download", slow_download)
    results: list[Any] = []
    poller = threading.Thread(target=lambda: results.append(watcher.poll()))
    poller.start()
    assert downloading.wait(10)
    closer = threading.Thread(target=watcher.close)
    closer.start()
    time.sleep(0.2)
    assert closer.is_alive()  # waiting for the poll
    release.set()
    poller.join(10)
    closer.join(10)
    assert len(results) == 1
    assert results[0] is not None
    assert results[0].version == "1"
    assert not watcher._workdir.exists()


def test_the_smoke_test_leaves_the_live_metrics_alone(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    source.version = "1"
    assert watcher.poll() is not None
    for outcome in ("scored", "invalid", "error"):
        assert metrics.registry.get_sample_value("scorer_records_total", {"outcome": outcome}) == 0
    assert metrics.registry.get_sample_value("scorer_score_count") == 0


def _serve(watcher: ModelWatcher, source: FakeSource, version: str) -> LoadedModel:
    """Point the alias at ``version`` and poll: it must be swapped in."""
    source.version = version
    loaded = watcher.poll()
    assert loaded is not None
    assert watcher.current is loaded
    return loaded


def _records(applicants: list[dict[str, Any]]) -> list[InputRecord]:
    now = time.time()
    return [
        InputRecord(a["applicant_id"].encode(), json.dumps(a).encode(), now, "applicants", 0, i)
        for i, a in enumerate(applicants)
    ]


@pytest.fixture
def scorer(metrics: ScorerMetrics) -> BatchScorer:
    return BatchScorer(metrics, max_record_bytes=65536, drift_window=100)


def _fails_in_service(model: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The version passed its smoke test; live records make it raise."""

    def boom(batch: Any) -> Any:
        raise RuntimeError("booster exploded")

    monkeypatch.setattr(model.bundle, "predict_encoded", boom)


@pytest.fixture
def failing_second(
    watcher: ModelWatcher, source: FakeSource, monkeypatch: pytest.MonkeyPatch
) -> tuple[LoadedModel, LoadedModel]:
    """Versions 1 then 2 served; 2 fails on live records."""
    v1 = _serve(watcher, source, "1")
    v2 = _serve(watcher, source, "2")
    _fails_in_service(v2, monkeypatch)
    return v1, v2


def test_a_version_failing_in_service_falls_back_to_the_one_it_replaced(
    watcher: ModelWatcher,
    source: FakeSource,
    metrics: ScorerMetrics,
    scorer: BatchScorer,
    sample_applicants: list[dict[str, Any]],
    failing_second: tuple[LoadedModel, LoadedModel],
) -> None:
    v1, v2 = failing_second

    assert watcher.current is v2  # what the loop hands the scorer
    result = scorer.process(v2, _records(sample_applicants[:10]))
    assert result.dead_letters == []
    assert {json.loads(p.value)["model_version"] for p in result.predictions} == {"1"}
    assert len(result.predictions) == 10
    assert watcher.current is v1
    assert "failed in service" in watcher.refused["2"]
    assert "booster exploded" in watcher.refused["2"]
    assert _reloads(metrics, "failure") == 1
    assert _info_versions(metrics) == ["1"]
    assert watcher.info()["version"] == "1"
    assert "2" in watcher.info()["refused_versions"]

    # the alias still points at 2: it is neither swapped in again nor downloaded again
    assert watcher.poll() is None
    assert watcher.current is v1
    assert source.downloads == ["1", "2"]
    # the next batch goes straight to version 1
    again = scorer.process(v1, _records(sample_applicants[10:20]))
    assert {json.loads(p.value)["model_version"] for p in again.predictions} == {"1"}
    assert _reloads(metrics, "failure") == 1

    # once the alias moves on, the new version serves, with 1 as its fallback
    v9 = _serve(watcher, source, "9")
    assert watcher.fall_back(v9, "test") is v1


def test_the_version_fallen_back_to_has_no_fallback_of_its_own(
    watcher: ModelWatcher,
    source: FakeSource,
    metrics: ScorerMetrics,
    scorer: BatchScorer,
    sample_applicants: list[dict[str, Any]],
    failing_second: tuple[LoadedModel, LoadedModel],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1, v2 = failing_second
    _fails_in_service(v1, monkeypatch)
    with pytest.raises(ScoringSystemError, match="version 1"):
        scorer.process(v2, _records(sample_applicants[:5]))
    assert watcher.current is v1  # 2 was refused on the way; 1 stays: nothing else can serve
    assert set(watcher.refused) == {"2"}


def test_a_first_version_failing_in_service_stops_the_batch(
    watcher: ModelWatcher,
    source: FakeSource,
    metrics: ScorerMetrics,
    scorer: BatchScorer,
    sample_applicants: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    v1 = _serve(watcher, source, "1")
    _fails_in_service(v1, monkeypatch)
    with pytest.raises(ScoringSystemError, match="no other version"):
        scorer.process(v1, _records(sample_applicants[:5]))
    assert watcher.current is v1
    assert watcher.refused == {}
    assert _reloads(metrics, "failure") == 0
    assert (
        metrics.registry.get_sample_value("scorer_dead_letters_total", {"reason": "scoring_error"})
        == 0
    )


def test_a_fault_of_a_version_no_longer_serving_gets_the_one_that_serves(
    watcher: ModelWatcher, source: FakeSource, metrics: ScorerMetrics
) -> None:
    v1 = _serve(watcher, source, "1")
    v2 = _serve(watcher, source, "2")
    # a batch scored by 1 just before the swap fails: 2 serves already, nothing is refused
    assert watcher.fall_back(v1, "late") is v2
    assert watcher.current is v2
    assert watcher.refused == {}
    assert _reloads(metrics, "failure") == 0
    # and 1, which failed, is no longer 2's fallback
    assert watcher.fall_back(v2, "boom") is None


def test_a_registry_error_is_shown_until_the_registry_answers_again(
    watcher: ModelWatcher, source: FakeSource
) -> None:
    """A refusal (registry down, credentials refused) while serving: ``registry_error`` says
    why, and both it and ``last_error`` clear once the alias can be read, same version or not."""
    source.version = "1"
    watcher.poll()
    source.reachable = False
    with pytest.raises(ModelUnavailableError):
        watcher.poll()
    assert watcher.registry_error == "registry unreachable: connection refused"
    assert watcher.info()["registry_error"] == watcher.registry_error
    source.reachable = True
    assert watcher.poll() is None  # the same version: nothing to load
    assert watcher.registry_error is None
    assert watcher.last_error is None
