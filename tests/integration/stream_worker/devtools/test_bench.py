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

# Process start-up (the worker, pass-through, forwarder, two latency processes and the traced
# worker, the producers) dominates the run, not the record counts: one curve point only, no
# capture phase (its figures are checked on fixed inputs), so the run stays under a minute.
# More records than one batch (batch_max 2,000), so that (a) spans several batches.
RECORDS = 5000
RATE = 200
LATENCY_SECONDS = 1
NAIVE_RECORDS = 20

#: Every key of the JSON without ``--two-workers`` or ``--profile``.
KEYS = {
    "achieved_offered_rps", "batch_max", "batch_window_seconds", "commit", "cost_share", "cpu",
    "capture_archive_s", "capture_cpu_cores", "capture_on_rps", "capture_ratio", "capture_tail_s",
    "forwarder_cpu_cores", "forwarder_max_ms", "forwarder_p50_ms", "forwarder_p95_ms",
    "forwarder_p99_ms", "forwarder_rps", "forwarder_rss_mb", "latency_breakdown",
    "latency_curve", "latency_curve_png", "model", "model_trees", "p99_vs_forwarder",
    "ratio_to_forwarder", "worker_import_rss_mb", "worker_ready_rss_mb",
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
    "worker_rss_mb", "batch_max", "batch_window_seconds", "model_trees", "forwarder_rps",
    "forwarder_p50_ms", "forwarder_p99_ms", "ratio_to_forwarder", "worker_ready_rss_mb",
)  # fmt: skip
TARGETS = {
    "throughput_ge_20k",
    "passthrough_ratio_ge_0_8",
    "speedup_ge_50x",
    "p99_le_50ms",
    "forwarder_ratio_ge_0_6",
    "p99_le_1_5x_forwarder",
}
#: The stages of the breakdown, each from the one before, and the whole way.
STAGES = [
    "created_to_fetched", "fetched_to_queued", "queued_to_batched", "batched_to_scored",
    "scored_to_produced", "produced_to_acked", "acked_to_seen", "total",
]  # fmt: skip
TABLE_ROWS = (
    "(a) throughput, one worker",
    "(b) Faust pass-through",
    "(c) latency p50 / p95",
    "(d) naive one-record scorer",
    "(e) worker peak RSS",
    "(b') raw aiokafka forwarder",
    "worker p99 / forwarder p99",
    "model served",
    "latency breakdown,",
    "latency curve, worker",
    "latency curve, forwarder",
    "import-time RSS",
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
        "--no-capture",
        "--curve-rates", "",  # the curve is the one point at --rate
        "--tracking-uri", model_store.uri,
        "--json", str(out),
        "--workdir", str(tmp_path / "work"),
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
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
    assert set(result["forwarder_cpu_cores"]) <= {"broker", "forwarder"}
    assert result["capture_on_rps"] is None  # --no-capture
    assert result["model"] == "store"  # --tracking-uri alone: that store's champion

    # One curve point per process, at --rate; (c) is the worker's.
    curve = result["latency_curve"]
    assert set(curve) == {"worker", "forwarder"}
    for points in curve.values():
        assert [p["offered_rps"] for p in points] == [RATE]
        assert points[0]["records"] == RATE * LATENCY_SECONDS
        assert points[0]["producer_limited"] is False  # the producer keeps up with RATE
    assert curve["worker"][0]["p99_ms"] == result["p99_ms"]
    assert curve["forwarder"][0]["p99_ms"] == result["forwarder_p99_ms"]
    assert Path(result["latency_curve_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The traced worker sampled every 8th offset of RATE records over 6 partitions.
    breakdown = result["latency_breakdown"]
    assert breakdown["samples"] > 0
    assert set(breakdown["stages"]) == set(STAGES)  # the JSON sorts its keys
    assert all(math.isfinite(v) for s in breakdown["stages"].values() for v in s.values())
    assert breakdown["stages"]["total"]["p50_ms"] > 0

    imports = result["worker_import_rss_mb"]
    assert set(imports) == {"python", "numpy", "xgboost", "faust_aiokafka", "mlflow", "worker",
                            "total"}  # fmt: skip
    assert 0 < imports["total"] <= result["worker_rss_mb"] + 1
    assert re.search(r"\d+ cores$", result["cpu"])
    assert result["commit"] == "unknown" or re.fullmatch(r"[0-9a-f]{40}", result["commit"])

    for row in TABLE_ROWS:
        assert row in proc.stdout, row
    assert f"wrote {out}" in proc.stdout
