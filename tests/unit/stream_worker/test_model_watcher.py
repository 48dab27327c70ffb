"""ModelWatcher: load, keep, swap, refuse broken versions, and ride out registry outages."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from stream_worker.exceptions import ModelUnavailableError
from stream_worker.model_watcher import AliasTarget, ModelWatcher
from stream_worker.scoring.metrics import ScorerMetrics
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
    """Versions 1 and 2 are good (2 has threshold 0.4); 3 is truncated; 4 fails its smoke test;
    5 lacks its booster file; 6 has an unreadable bundle.json."""
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


def test_close_removes_the_download_folder(source: FakeSource, metrics: ScorerMetrics) -> None:
    watcher = ModelWatcher(source, metrics)  # type: ignore[arg-type]
    source.version = "1"
    watcher.poll()
    workdir = watcher._workdir
    assert any(workdir.iterdir())
    watcher.close()
    assert not workdir.exists()
