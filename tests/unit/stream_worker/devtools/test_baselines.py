"""The in-process baselines against a real (tiny) model and the real BatchScorer."""

from __future__ import annotations

from typing import Any

import pytest

from stream_worker.devtools.bench import baselines
from stream_worker.devtools.replay import wire_value
from stream_worker.exceptions import ScorerError
from stream_worker.settings import WorkerSettings
from trainer.model.bundle import ModelBundle


def test_the_naive_scorer_gives_the_batch_path_probabilities(
    tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    values = [wire_value(r) for r in sample_applicants[:30]]
    rps, max_abs_diff = baselines.naive_baseline(tiny_bundle, values)
    assert rps > 0
    assert max_abs_diff < 1e-6


def test_cost_share_runs_the_real_scorer_with_its_stand_ins(
    tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    # The no-op metrics, drift monitor and profile must still fit what process() calls:
    # if they did not, process() would dead-letter the batch and cost_share would raise.
    values = [wire_value(r) for r in sample_applicants[:50]]
    rps, shares = baselines.cost_share(tiny_bundle, WorkerSettings(), values, repeats=1)
    assert rps > 0
    assert tuple(shares) == baselines.COST_PARTS


def test_cost_share_refuses_a_batch_that_is_not_all_scored(
    tiny_bundle: ModelBundle, sample_applicants: list[dict[str, Any]]
) -> None:
    values = [wire_value(r) for r in sample_applicants[:5]] + [b"not json"]
    with pytest.raises(ScorerError, match="1 records dead-lettered"):
        baselines.cost_share(tiny_bundle, WorkerSettings(), values, repeats=1)
