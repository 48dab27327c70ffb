"""``stream-worker bench`` end to end, once, on a small load: the JSON has its shape.

The arithmetic (rates, percentiles, shares, targets, the table) is checked on fixed inputs
in ``tests/unit/stream_worker/devtools``; this run only shows that the phases run and fill
every figure. Speed is judged by the benchmark's own output against DESIGN.md's bars, never
here: a test that fails because the machine is busy would say nothing about the code.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ModelStore

from stream_worker.devtools.bench.baselines import COST_PARTS

pytestmark = pytest.mark.integration

# Process start-up (three workers, the producer) dominates the run, not the record counts.
# More records than one batch (batch_max 2,000), so that (a) spans several batches.
RECORDS = 5000
RATE = 200
LATENCY_SECONDS = 1
NAIVE_RECORDS = 20

#: Every key of the JSON without ``--two-workers`` or ``--profile`` (with the capture phase).
KEYS = {
    "achieved_offered_rps", "batch_max", "batch_window_seconds", "commit", "cost_share", "cpu",
    "capture_archive_s", "capture_cpu_cores", "capture_on_rps", "capture_ratio", "capture_tail_s",
    "latency_records", "load_average_end", "load_average_start", "max_ms",
    "naive_max_abs_diff", "naive_records", "naive_rps", "offered_rps", "p50_ms", "p95_ms",
    "p99_ms", "passthrough_cpu_cores", "passthrough_rps", "passthrough_rss_mb",
    "ratio_to_passthrough", "records", "scoring_only_rps", "speedup", "started_at",
    "targets", "targets_met", "throughput_cpu_cores", "throughput_duplicates",
    "throughput_first_batch", "throughput_rps", "throughput_span_s", "two_worker_rps",
    "worker_rss_mb",
}  # fmt: skip
POSITIVE = (
    "throughput_rps", "throughput_span_s", "throughput_first_batch", "passthrough_rps",
    "passthrough_rss_mb", "naive_rps", "speedup", "ratio_to_passthrough", "scoring_only_rps",
    "offered_rps", "achieved_offered_rps", "p50_ms", "p95_ms", "p99_ms", "max_ms",
    "worker_rss_mb", "batch_max", "batch_window_seconds", "capture_on_rps", "capture_ratio",
    "capture_archive_s",
)  # fmt: skip
TARGETS = {
    "throughput_ge_10k",
    "throughput_ge_20k_goal",
    "passthrough_ratio_ge_0_8",
    "speedup_ge_50x",
    "p99_le_50ms",
    "capture_ratio_ge_0_9",
}
TABLE_ROWS = (
    "(a) throughput, one worker",
    "(b) Faust pass-through",
    "(c) latency p50 / p95",
    "(d) naive one-record scorer",
    "(e) worker peak RSS",
    "(f) one worker + capture",
    "BatchScorer.process alone",
    "cost share of process():",
    "all bars met:",
)


def test_a_small_run_fills_every_figure(model_store: ModelStore, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = [
        sys.executable, "-m", "stream_worker.cli", "bench",
        "--records", str(RECORDS),
        "--latency-seconds", str(LATENCY_SECONDS),
        "--rate", str(RATE),
        "--naive-records", str(NAIVE_RECORDS),
        "--no-two-workers",
        "--tracking-uri", model_store.uri,
        "--json", str(out),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    result = json.loads(out.read_text())

    assert set(result) == KEYS
    for key in POSITIVE:
        value = result[key]
        assert isinstance(value, int | float), key
        assert math.isfinite(value), key
        assert value > 0, key
    assert (result["records"], result["offered_rps"], result["naive_records"]) == (
        RECORDS,
        RATE,
        NAIVE_RECORDS,
    )
    assert result["latency_records"] == RATE * LATENCY_SECONDS
    assert result["two_worker_rps"] is None
    assert result["throughput_duplicates"] == 0  # nothing crashed: each record scored once
    assert result["throughput_first_batch"] < RECORDS  # the span is more than one batch
    # The naive path scores with the same bundle, so it gives the same probabilities.
    assert result["naive_max_abs_diff"] < 1e-6
    assert tuple(result["cost_share"]) == tuple(sorted(COST_PARTS))  # sorted by the JSON
    assert all(0.0 <= v <= 1.0 for v in result["cost_share"].values())
    assert set(result["targets"]) == TARGETS
    assert all(isinstance(v, bool) for v in [*result["targets"].values(), result["targets_met"]])
    assert set(result["throughput_cpu_cores"]) == {"broker", "throughput-worker-0"}
    assert set(result["passthrough_cpu_cores"]) == {"broker", "passthrough"}
    assert set(result["capture_cpu_cores"]) == {"broker", "capture-worker", "capture"}
    assert result["capture_tail_s"] >= 0
    assert result["capture_archive_s"] >= result["capture_tail_s"]
    assert re.search(r"\d+ cores$", result["cpu"])
    assert result["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", result["commit"])

    for row in TABLE_ROWS:
        assert row in proc.stdout, row
    assert f"wrote {out}" in proc.stdout
