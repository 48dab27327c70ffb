"""The promotion gate: an absolute floor, and no worse than the champion minus a tolerance."""

from __future__ import annotations

import math
from typing import Any, cast

import pytest

from trainer.pipeline import gate_and_promote
from trainer.registry import Registry, gate
from trainer.settings import TrainerSettings

FLOOR = 0.92
TOLERANCE = 0.002


def test_no_champion_passes_at_or_above_the_floor() -> None:
    decision = gate(0.93, None, FLOOR, TOLERANCE)
    assert decision.passed
    assert "no champion" in decision.reason
    assert gate(FLOOR, None, FLOOR, TOLERANCE).passed  # the floor itself is good enough


def test_below_the_floor_fails_even_without_a_champion() -> None:
    decision = gate(0.9199, None, FLOOR, TOLERANCE)
    assert not decision.passed
    assert "below the floor" in decision.reason
    assert "0.9199" in decision.reason


def test_below_the_floor_fails_even_when_better_than_a_weak_champion() -> None:
    decision = gate(0.91, 0.85, FLOOR, TOLERANCE)
    assert not decision.passed
    assert "floor" in decision.reason


def test_slightly_worse_than_the_champion_passes_within_tolerance() -> None:
    assert gate(0.9295, 0.9300, FLOOR, TOLERANCE).passed
    assert gate(0.928, 0.930, FLOOR, TOLERANCE).passed  # exactly champion − tolerance
    assert gate(0.931, 0.930, FLOOR, TOLERANCE).passed


def test_worse_than_the_champion_beyond_tolerance_fails() -> None:
    decision = gate(0.9279, 0.930, FLOOR, TOLERANCE)
    assert not decision.passed
    assert "champion" in decision.reason
    assert "tolerance" in decision.reason


def test_zero_tolerance_demands_at_least_the_champion() -> None:
    assert gate(0.93, 0.93, FLOOR, 0.0).passed
    assert not gate(0.92999, 0.93, FLOOR, 0.0).passed


@pytest.mark.parametrize("champion", [None, 0.93])
def test_nan_candidate_never_passes(champion: float | None) -> None:
    decision = gate(math.nan, champion, FLOOR, TOLERANCE)
    assert not decision.passed
    assert "not a number" in decision.reason


def test_a_champion_without_a_usable_metric_does_not_block() -> None:
    assert gate(0.93, math.nan, FLOOR, TOLERANCE).passed


class _FakeRegistry:
    def __init__(self, champion_auc: float | None) -> None:
        self.champion_auc = champion_auc
        self.calls: list[tuple[str, str, str]] = []

    def champion_metric(self) -> float | None:
        return self.champion_auc

    def promote(self, version: str, reason: str) -> None:
        self.calls.append(("promote", version, reason))

    def reject(self, version: str, reason: str) -> None:
        self.calls.append(("reject", version, reason))


@pytest.mark.parametrize(
    ("candidate", "champion", "action"),
    [
        (0.93, None, "promote"),
        (0.91, None, "reject"),
        (0.925, 0.93, "reject"),
        (0.93, 0.93, "promote"),
    ],
)
def test_gate_and_promote_moves_the_alias_only_when_the_gate_passes(
    candidate: float, champion: float | None, action: str
) -> None:
    registry = _FakeRegistry(champion)
    settings = TrainerSettings(gate_min_roc_auc=FLOOR, gate_tolerance=TOLERANCE)
    metrics: dict[str, Any] = {"test_roc_auc": candidate}
    decision = gate_and_promote(cast(Registry, registry), settings, "7", metrics)
    assert registry.calls == [(action, "7", decision.reason)]
    assert decision.passed is (action == "promote")
