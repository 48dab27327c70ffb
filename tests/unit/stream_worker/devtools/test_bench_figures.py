"""The benchmark's arithmetic on fixed inputs: every expected value is worked out by hand."""

from __future__ import annotations

from typing import Any

import pytest

from stream_worker.devtools.bench import baselines, phases, report, sysinfo


def test_span_rate_counts_records_over_the_first_to_last_timestamp() -> None:
    # 4 records from t=1000 ms to t=2000 ms: 4 / 1.0 s; two were stamped in the first ms.
    assert phases.span_rate([1000, 1000, 1500, 2000]) == (4.0, 1.0, 2)


def test_span_rate_of_one_millisecond_is_not_a_division_by_zero() -> None:
    # Every record in the same millisecond: the span is taken as 1 ms.
    assert phases.span_rate([7, 7, 7]) == (3000.0, 0.001, 3)


def test_latency_figures_from_send_and_arrival_times() -> None:
    sent_ms = {b"a": 1000, b"b": 1500, b"c": 2000}
    arrived_s = {b"a": 1.010, b"b": 1.530, b"c": 2.090, b"late": 9.0}
    figures = phases.latency_figures(sent_ms, arrived_s, rss_mb=321.5)
    # Latencies 10, 30, 90 ms. Linear interpolation: p95 at rank 1.9 → 30 + 0.9·60 = 84,
    # p99 at rank 1.98 → 30 + 0.98·60 = 88.8. Two intervals after the first send in 1 s.
    assert figures == phases.LatencyResult(
        records=3, achieved_rps=2.0, p50_ms=30.0, p95_ms=84.0, p99_ms=88.8, max_ms=90.0,
        rss_mb=321.5,
    )  # fmt: skip


def test_scored_is_read_from_the_scored_outcome_only() -> None:
    text = (
        "# TYPE scorer_records_total counter\n"
        'scorer_records_total{outcome="rejected"} 7.0\n'
        'scorer_records_total{outcome="scored"} 1.5e+04\n'
    )
    assert phases.scored_in(text) == 15_000
    assert phases.scored_in('scorer_records_total{outcome="rejected"} 7.0\n') == 0


def test_cost_shares_divide_each_part_by_the_full_time() -> None:
    fastest = {"full": 10.0, "decode": 2.0, "encode_predict": 4.0, "no_drift": 9.0,
               "no_metrics": 9.5}  # fmt: skip
    # decode 2/10, encode 4/10, drift (10-9)/10, metrics (10-9.5)/10, the rest 1-0.75.
    assert baselines.cost_shares(fastest) == {
        "decode": 0.2, "encode_predict": 0.4, "drift": 0.1, "metrics": 0.05, "emit_other": 0.25,
    }  # fmt: skip


def test_cost_shares_never_go_negative_when_the_parts_overlap() -> None:
    # Without drift it got slower (noise): drift 0, not -0.1; decode + encode exceed the
    # whole: nothing is left for emit_other, and the shares add up to more than 1.
    fastest = {"full": 10.0, "decode": 5.0, "encode_predict": 6.0, "no_drift": 11.0,
               "no_metrics": 10.0}  # fmt: skip
    assert baselines.cost_shares(fastest) == {
        "decode": 0.5, "encode_predict": 0.6, "drift": 0.0, "metrics": 0.0, "emit_other": 0.0,
    }  # fmt: skip


def test_fastest_times_skip_the_warm_up_and_keep_the_minimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    durations = {"a": iter([100.0, 5.0, 3.0, 4.0]), "b": iter([100.0, 7.0, 9.0, 8.0])}
    clock = [0.0]

    def case(name: str) -> Any:
        def run() -> None:
            calls.append(name)
            clock[0] += next(durations[name])

        return run

    monkeypatch.setattr(baselines.time, "perf_counter", lambda: clock[0])
    fastest = baselines.fastest_times({"a": case("a"), "b": case("b")}, repeats=3, warmup=1)
    assert fastest == {"a": 3.0, "b": 7.0}  # the 100 s warm-up round is not counted
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]  # the order rotates each round


def _measured(**changes: Any) -> dict[str, Any]:
    """A result as ``run_bench`` has it before ``derive``."""
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
    }  # fmt: skip
    result.update(changes)
    return result


def test_derive_at_exactly_every_bar_meets_them_all() -> None:
    result = _measured()
    report.derive(result)
    # 20,000 / 400 = 50×; 20,000 / 25,000 = 0.8; p99 40 ≤ 50; 20,000 / 30,000 = 0.667 ≥ 0.6;
    # p99 40 / 30 = 1.33 ≤ 1.5.
    assert result["speedup"] == 50.0
    assert result["ratio_to_passthrough"] == 0.8
    assert (result["ratio_to_forwarder"], result["p99_vs_forwarder"]) == (0.667, 1.33)
    assert result["targets"] == {
        "throughput_ge_20k": True,
        "passthrough_ratio_ge_0_8": True,
        "speedup_ge_50x": True,
        "p99_le_50ms": True,
        "forwarder_ratio_ge_0_6": True,
        "p99_le_1_5x_forwarder": True,
    }
    assert result["targets_met"] is True


def test_derive_below_the_bars() -> None:
    result = _measured(throughput_rps=15_000.0, naive_rps=600.0, p99_ms=50.5)
    report.derive(result)
    # 15,000 / 600 = 25×; 15,000 / 25,000 = 0.6; 15,000 / 30,000 = 0.5; 50.5 / 30 = 1.68.
    assert (result["speedup"], result["ratio_to_passthrough"]) == (25.0, 0.6)
    assert (result["ratio_to_forwarder"], result["p99_vs_forwarder"]) == (0.5, 1.68)
    assert result["targets"] == {
        "throughput_ge_20k": False,
        "passthrough_ratio_ge_0_8": False,
        "speedup_ge_50x": False,
        "p99_le_50ms": False,
        "forwarder_ratio_ge_0_6": False,
        "p99_le_1_5x_forwarder": False,
    }
    assert result["targets_met"] is False


def test_the_pass_through_and_naive_ratios_are_references_not_bars() -> None:
    # DESIGN.md's bars since issue 13: 20k/s, 0.6x the forwarder, p99 50 ms and 1.5x the
    # forwarder's; the pass-through and the naive scorer stay as references.
    result = _measured(naive_rps=800.0, passthrough_rps=40_000.0)
    report.derive(result)
    assert result["targets"]["passthrough_ratio_ge_0_8"] is False
    assert result["targets"]["speedup_ge_50x"] is False
    assert result["targets_met"] is True
    slower = _measured(throughput_rps=19_999.0, forwarder_rps=20_000.0)
    report.derive(slower)
    assert (slower["targets"]["throughput_ge_20k"], slower["targets_met"]) == (False, False)


def test_table_rows() -> None:
    result = _measured(two_worker_rps=61_957.9, worker_ready_rss_mb=350.2, model_trees=700)
    report.derive(result)
    lines = report.table(result)
    assert lines[1] == "records 100,000  ·  Test CPU, 2 cores  ·  commit 0123456789ab"
    assert lines[2] == "load average [0.1, 0.2, 0.3] at start, [1.0, 0.5, 0.4] at end"
    rows = [" ".join(line.split()) for line in lines[4:-2]]  # one space between columns
    assert rows == [
        "(a) throughput, one worker 20,000 records/s ≥ 20,000 yes",
        "CPU worker / broker 0.99 / 0.06 cores",
        "(b) Faust pass-through 25,000 records/s",
        "CPU agent / broker 0.94 / 0.04 cores",
        "ratio to pass-through 0.80× reference ≥ 0.8× yes",
        "(b') raw aiokafka forwarder 30,000 records/s",
        "CPU forwarder / broker 0.80 / 0.10 cores",
        "ratio to forwarder 0.67× ≥ 0.6× yes",
        "(d) naive one-record scorer 400 records/s",
        "speedup over naive 50.0× reference ≥ 50× yes",
        "(c) latency p50 / p95 10.0 / 20.0 ms",
        "latency p99 / max 40.0 / 80.0 ms p99 ≤ 50 ms yes",
        "forwarder p50 / p99 8.0 / 30.0 ms",
        "worker p99 / forwarder p99 1.33× ≤ 1.5× yes",
        "offered / achieved 2,000 / 2,000 records/s",
        "(e) worker peak RSS 403 MiB",
        "RSS once ready (model loaded) 350 MiB",
        "model served None, 700 trees",
        "two workers, one group 61,958 records/s",
        "BatchScorer.process alone 157,756 records/s",
    ]
    assert lines[-2] == (
        "  cost share of process(): decode 14%, encode_predict 39%, drift 15%, metrics 4%,"
        " emit_other 28%"
    )
    assert lines[-1] == "  all bars met: yes"


def test_table_says_skipped_without_two_workers_and_no_when_a_bar_fails() -> None:
    result = _measured(p99_ms=120.0)
    report.derive(result)
    text = "\n".join(report.table(result))
    assert "two workers, one group" in text
    assert "skipped" in text
    assert text.endswith("all bars met: NO")


def test_cpu_cores_adds_the_phase_processes_and_shows_the_broker_apart() -> None:
    cores = {"broker": 0.06, "worker-0": 0.99, "worker-1": 0.5}
    assert report.cpu_cores(cores) == "1.49 / 0.06 cores"
    assert report.cpu_cores({"worker-0": 1.0}) == "1.00 / 0.00 cores"
    assert report.cpu_cores(None) == "n/a"


def test_cores_used_divides_cpu_seconds_by_the_wall_time() -> None:
    start = {"a": 1.0, "b": 2.0}
    end = {"a": 3.0, "b": 2.5, "c": 9.0}  # c was not there at the start: left out
    assert sysinfo.cores_used(start, end, wall=2.0) == {"a": 1.0, "b": 0.25}


def test_vmhwm_is_read_in_mebibytes() -> None:
    status = "Name:\tstream-worker\nVmPeak:\t 900000 kB\nVmHWM:\t  412672 kB\nVmRSS:\t 1 kB\n"
    assert sysinfo.vmhwm_mb(status) == 403.0  # 412,672 kB / 1,024
    assert sysinfo.vmhwm_mb("Name:\tkthreadd\n") == 0.0
