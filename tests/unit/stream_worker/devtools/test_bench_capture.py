"""The benchmark's capture phase (f): its figures, its bar and its rows, on fixed inputs."""

from __future__ import annotations

from typing import Any

from stream_worker.devtools.bench import phases, report


def _measured(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "records": 100_000, "cpu": "Test CPU, 2 cores", "commit": "0123456789abcdef" * 2,
        "load_average_start": [0.1, 0.2, 0.3], "load_average_end": [1.0, 0.5, 0.4],
        "throughput_rps": 20_000.0, "naive_rps": 400.0, "passthrough_rps": 25_000.0,
        "p50_ms": 10.0, "p95_ms": 20.0, "p99_ms": 40.0, "max_ms": 80.0,
        "offered_rps": 2000.0, "achieved_offered_rps": 1999.6, "worker_rss_mb": 402.9,
        "scoring_only_rps": 157_756.1, "two_worker_rps": None,
        "throughput_cpu_cores": {"broker": 0.06, "throughput-worker-0": 0.99},
        "passthrough_cpu_cores": {"broker": 0.04, "passthrough": 0.94},
        "forwarder_rps": 30_000.0, "forwarder_p50_ms": 8.0, "forwarder_p99_ms": 30.0,
        "forwarder_cpu_cores": {"broker": 0.1, "forwarder": 0.8},
        "cost_share": {"decode": 0.145, "encode_predict": 0.39, "drift": 0.149,
                       "metrics": 0.035, "emit_other": 0.281},
        "capture_on_rps": 18_000.0, "capture_archive_s": 9.25, "capture_tail_s": 3.5,
        "capture_cpu_cores": {"broker": 0.3, "capture-worker": 0.9, "capture": 0.45},
    }  # fmt: skip
    result.update(changes)
    return result


def test_archived_rows_add_applicants_and_predictions_only() -> None:
    text = (
        "# TYPE capture_rows_total counter\n"
        'capture_rows_total{kind="applicants"} 100000.0\n'
        'capture_rows_total{kind="predictions"} 99000.0\n'
        'capture_rows_total{kind="outcomes"} 5.0\n'
        'capture_rows_created{kind="applicants"} 1.7e+09\n'
    )
    assert phases.archived_in(text) == 199_000
    assert phases.archived_in("") == 0


def test_the_capture_ratio_is_against_the_same_runs_one_worker_figure() -> None:
    result = _measured()
    report.derive(result)
    assert result["capture_ratio"] == 0.9  # 18,000 / 20,000: exactly at the bar
    assert result["targets"]["capture_ratio_ge_0_9"] is True
    assert result["targets_met"] is True

    below = _measured(capture_on_rps=17_980.0)
    report.derive(below)
    assert below["capture_ratio"] == 0.899
    assert below["targets"]["capture_ratio_ge_0_9"] is False
    assert below["targets_met"] is False


def test_a_skipped_capture_phase_has_no_ratio_no_bar_and_no_rows() -> None:
    result = _measured(capture_on_rps=None, capture_archive_s=None, capture_tail_s=None)
    report.derive(result)
    assert result["capture_ratio"] is None
    assert "capture_ratio_ge_0_9" not in result["targets"]
    assert not any("capture" in line for line in report.table(result))


def test_table_rows_of_the_capture_phase_follow_one_worker() -> None:
    result = _measured()
    report.derive(result)
    rows = [" ".join(line.split()) for line in report.table(result)[4:-2]]
    assert rows[2:6] == [
        "(f) one worker + capture 18,000 records/s",
        "ratio to (a) 0.90× ≥ 0.9× yes",
        "all archived after 9.2 s (3.5 s after the last)",
        "CPU worker+capture / broker 1.35 / 0.30 cores",
    ]
