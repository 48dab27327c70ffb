"""``stream-worker bench`` end to end on a small load: every figure is there and consistent.

Speed is judged by the benchmark's own output against DESIGN.md's bars, never here: a test
that fails because the machine is busy would say nothing about the code.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ModelStore

pytestmark = pytest.mark.integration

RECORDS = 3000
RATE = 500
LATENCY_SECONDS = 3
NAIVE_RECORDS = 100

POSITIVE = (
    "throughput_rps",
    "passthrough_rps",
    "naive_rps",
    "speedup",
    "ratio_to_passthrough",
    "scoring_only_rps",
    "offered_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "worker_rss_mb",
)
TARGETS = (
    "throughput_ge_10k",
    "throughput_ge_20k_goal",
    "passthrough_ratio_ge_0_8",
    "speedup_ge_50x",
    "p99_le_50ms",
)
COST_PARTS = ("decode", "encode_predict", "drift", "metrics", "emit_other")


@pytest.fixture(scope="module")
def small_bench(
    model_store: ModelStore, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], str]:
    """One small benchmark run against the session's model store: (its JSON, its output)."""
    folder = tmp_path_factory.mktemp("bench")
    out = folder / "result.json"
    argv = [
        sys.executable, "-m", "stream_worker.cli", "bench",
        "--records", str(RECORDS),
        "--latency-seconds", str(LATENCY_SECONDS),
        "--rate", str(RATE),
        "--naive-records", str(NAIVE_RECORDS),
        "--no-two-workers",
        "--tracking-uri", model_store.uri,
        "--json", str(out),
        "--workdir", str(folder / "work"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(Path(out).read_text()), proc.stdout


def test_every_figure_is_reported_and_positive(small_bench: tuple[dict[str, Any], str]) -> None:
    result, _ = small_bench
    for key in POSITIVE:
        value = result[key]
        assert isinstance(value, int | float), key
        assert math.isfinite(value), key
        assert value > 0, key
    assert result["records"] == RECORDS
    assert result["offered_rps"] == RATE
    assert result["naive_records"] == NAIVE_RECORDS
    assert result["latency_records"] == RATE * LATENCY_SECONDS
    assert result["two_worker_rps"] is None  # --no-two-workers


def test_latency_percentiles_are_ordered(small_bench: tuple[dict[str, Any], str]) -> None:
    result, _ = small_bench
    assert result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"]


def test_derived_figures_follow_from_the_measured_ones(
    small_bench: tuple[dict[str, Any], str],
) -> None:
    result, _ = small_bench
    assert result["speedup"] == pytest.approx(
        result["throughput_rps"] / result["naive_rps"], rel=0.01
    )
    assert result["ratio_to_passthrough"] == pytest.approx(
        result["throughput_rps"] / result["passthrough_rps"], rel=0.01
    )
    # The naive path scores with the same bundle, so it gives the same probabilities.
    assert result["naive_max_abs_diff"] < 1e-6


def test_cost_share_and_targets_are_well_formed(small_bench: tuple[dict[str, Any], str]) -> None:
    result, _ = small_bench
    shares = result["cost_share"]
    assert set(shares) == set(COST_PARTS)
    assert all(0.0 <= shares[part] <= 1.0 for part in COST_PARTS)
    assert sum(shares.values()) >= 0.99
    assert shares["encode_predict"] > 0
    assert set(result["targets"]) == set(TARGETS)
    assert all(isinstance(v, bool) for v in result["targets"].values())
    assert isinstance(result["targets_met"], bool)


def test_machine_and_commit_are_recorded(small_bench: tuple[dict[str, Any], str]) -> None:
    result, stdout = small_bench
    assert re.search(r"\d+ cores$", result["cpu"])
    assert result["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", result["commit"])
    assert "throughput" in stdout
    assert "p99" in stdout
