"""smoke_test: a new version runs the stream's whole scoring path before it may serve."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stream_worker.exceptions import SmokeTestError
from stream_worker.scoring.scorer import LoadedModel, smoke_test
from trainer.model.bundle import ModelBundle


def _model(bundle: ModelBundle, fallback: Any = None) -> LoadedModel:
    model = LoadedModel(bundle, "adult-income", "5", "run-5", "")
    return model if fallback is None else dataclasses.replace(model, fallback=fallback)


class RescuingFallback:
    """Would hand out a healthy model: the smoke test must never ask."""

    def __init__(self, healthy: LoadedModel) -> None:
        self.healthy = healthy
        self.calls = 0

    def fall_back(self, failed: LoadedModel, reason: str) -> LoadedModel | None:
        self.calls += 1
        return self.healthy


def test_a_healthy_version_passes(tiny_bundle: ModelBundle) -> None:
    smoke_test(_model(tiny_bundle))


def test_a_failing_model_is_refused_even_with_a_fallback(
    tiny_bundle: ModelBundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = dataclasses.replace(tiny_bundle)

    def boom(batch: Any) -> Any:
        raise RuntimeError("booster exploded")

    monkeypatch.setattr(broken, "predict_encoded", boom)
    rescue = RescuingFallback(_model(tiny_bundle))
    with pytest.raises(SmokeTestError, match="RuntimeError: booster exploded"):
        smoke_test(_model(broken, rescue))
    assert rescue.calls == 0


def test_probabilities_are_read_back_from_the_prediction_records(
    tiny_bundle: ModelBundle,
) -> None:
    shifted = [min(1.0, p + 1e-3) for p in tiny_bundle.reference_probabilities]
    with pytest.raises(SmokeTestError, match="differ from training"):
        smoke_test(_model(dataclasses.replace(tiny_bundle, reference_probabilities=shifted)))
    fewer = tiny_bundle.reference_probabilities[:-1]
    with pytest.raises(SmokeTestError, match="predictions for"):
        smoke_test(_model(dataclasses.replace(tiny_bundle, reference_probabilities=fewer)))


class ProfileThatCannotBin:
    """The real profile, except that binning a batch raises."""

    def __init__(self, profile: Any) -> None:
        self._profile = profile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._profile, name)

    def feature_bins(self, *args: Any) -> Any:
        raise KeyError("age")


def test_a_drift_step_that_fails_is_a_failure_here(tiny_bundle: ModelBundle) -> None:
    """In service a failing drift update only skips drift; before service it refuses."""
    profile: Any = ProfileThatCannotBin(tiny_bundle.profile)
    with pytest.raises(SmokeTestError, match="KeyError"):
        smoke_test(_model(dataclasses.replace(tiny_bundle, profile=profile)))


def test_a_bundle_without_a_reference_sample_is_refused(tiny_bundle: ModelBundle) -> None:
    empty = dataclasses.replace(tiny_bundle, reference_records=[], reference_probabilities=[])
    with pytest.raises(SmokeTestError, match="no reference sample"):
        smoke_test(_model(empty))
