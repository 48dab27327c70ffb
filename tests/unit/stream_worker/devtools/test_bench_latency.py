"""The latency curve's rates and keys, the per-stage breakdown and ``--model``, on fixed inputs."""

from __future__ import annotations

import pytest

from stream_worker.devtools import replay
from stream_worker.devtools.bench import latency, model, report
from stream_worker.devtools.bench.phases import LatencyResult
from stream_worker.exceptions import ConfigError


def test_curve_rates_take_shares_of_the_maximum_and_always_the_main_rate() -> None:
    # 80 % of 25,000 = 20,000; the main rate 2,000 is in the list already; sorted.
    assert latency.curve_rates("1000,2000,5000,80%", 25_000.0, 2000.0) == [
        1000, 2000, 5000, 20_000,
    ]  # fmt: skip
    assert latency.curve_rates("", 1.0, 300.0) == [300.0]  # only the main rate
    with pytest.raises(ConfigError, match="fast"):
        latency.curve_rates("fast", 1.0, 2.0)


def test_curve_rates_never_ask_a_producer_for_more_than_it_can_send() -> None:
    # The forwarder's 80 % of 150,000 is 120,000, but one producer sent 30,000/s flat out:
    # that step is offered at 90 % of 30,000 instead (the producer would never finish it).
    rates = latency.curve_rates("1000,2000,80%", 150_000.0, 2000.0, producer_max=30_000.0)
    assert rates == [1000, 2000, 27_000]
    # A main rate above the ceiling is still offered as asked.
    assert latency.curve_rates("", 1.0, 5000.0, producer_max=1000.0) == [5000.0]


def test_a_step_the_producer_could_not_offer_is_marked() -> None:
    def figures(achieved: float) -> LatencyResult:
        return LatencyResult(10, achieved, 1.0, 2.0, 3.0, 4.0, 100.0)

    assert not latency.point(10_000.0, figures(9_500.0)).producer_limited
    assert latency.point(10_000.0, figures(6_800.0)).producer_limited


def test_step_keys_are_the_keys_the_producer_sends() -> None:
    records = [{"applicant_id": f"test-{i}"} for i in range(3)]
    keys = latency.step_keys(records, total=4, start=2)
    assert keys == [b"test-2", b"test-0-r1", b"test-1-r1", b"test-2-r1"]
    # The producer's own cycle, record for record.
    sent = [r["applicant_id"].encode() for r in replay.cycled(records, 4, 2)]
    assert keys == sent


def test_breakdown_gives_each_stage_from_the_one_before() -> None:
    # Two samples, seconds: created, fetched, queued, batched, scored, produced, acked, seen.
    samples = [
        ["a", 1.000, 1.010, 1.011, 1.015, 1.016, 1.017, 1.020, 1.019],
        ["b", 2.000, 2.020, 2.023, 2.025, 2.026, 2.027, 2.030, 2.031],
    ]
    result = latency.breakdown(samples)
    assert result["samples"] == 2
    stages = result["stages"]
    assert list(stages) == [
        "created_to_fetched", "fetched_to_queued", "queued_to_batched", "batched_to_scored",
        "scored_to_produced", "produced_to_acked", "acked_to_seen", "total",
    ]  # fmt: skip
    # created → fetched 10 and 20 ms: median 15, p99 at rank 0.99 → 10 + 0.99·10 = 19.9.
    assert stages["created_to_fetched"] == {"p50_ms": 15.0, "p99_ms": 19.9}
    # The output seen 1 ms before its ack came back: negative, kept as measured.
    assert stages["acked_to_seen"]["p50_ms"] == 0.0  # -1 and +1 ms
    assert stages["total"] == {"p50_ms": 25.0, "p99_ms": 30.88}
    assert latency.breakdown([]) == {"samples": 0, "stages": {}}


def test_the_breakdown_and_the_curve_are_printed() -> None:
    lines = report._breakdown_lines(latency.breakdown([["a", 1.0, 1.01, 1.02, 1.03, 1.04,
                                                        1.05, 1.06, 1.07]]))  # fmt: skip
    assert lines[0] == "  latency breakdown, 1 sampled records (p50 / p99 ms):"
    assert " ".join(lines[1].split()) == "created_to_fetched 10.00 / 10.00"
    curve = {"worker": [{"offered_rps": 2000.0, "achieved_rps": 1999.0, "p50_ms": 1.0,
                         "p95_ms": 2.0, "p99_ms": 3.0, "max_ms": 4.0, "records": 10}]}  # fmt: skip
    assert (
        " ".join(report._curve_lines(curve)[1].split()) == "2,000/s (1,999): 1.0 / 2.0 / 3.0 / 4.0"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quick", model.ModelChoice("quick")),
        ("default", model.ModelChoice("default")),
        ("models:/adult-income@champion", model.ModelChoice("uri", "adult-income", "champion")),
    ],
)
def test_model_choices(text: str, expected: model.ModelChoice) -> None:
    assert model.ModelChoice.parse(text) == expected


@pytest.mark.parametrize("text", ["big", "models:/adult-income/3", "models:/@x", "models:/a@"])
def test_model_choices_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--model"):
        model.ModelChoice.parse(text)


def test_the_content_key_follows_what_is_trained_not_where_it_goes() -> None:
    here = model.default_trainer_settings("sqlite:///a.db", "adult-income", "champion")
    there = model.default_trainer_settings("sqlite:///elsewhere/b.db", "adult-income", "champion")
    assert model.content_key(here) == model.content_key(there)
    bigger = here.model_copy(update={"max_trees": here.max_trees + 1})
    assert model.content_key(bigger) != model.content_key(here)
