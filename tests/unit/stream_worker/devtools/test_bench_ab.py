"""The latency A/B's variants and summary, and the traced worker's tuning overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from stream_worker.devtools.bench import ab, trace
from stream_worker.exceptions import ConfigError
from stream_worker.runtime import tuning


def test_variants_are_trees_with_environment(tmp_path: Path) -> None:
    (tmp_path / "stream_worker").mkdir()
    variants = ab.parse_variants(
        ["before=" + str(tmp_path), "after"],
        ["before=SCORER_FETCH_MAX_WAIT_MS=10", "after=SCORER_BENCH_TUNING=A=1,B=2"],
    )
    before, after = variants
    assert before.environment({"X": "1"}) == {
        "X": "1",
        "SCORER_FETCH_MAX_WAIT_MS": "10",
        "PYTHONPATH": str(tmp_path.resolve()),
    }
    # No tree: this one, nothing put on the path; a value may hold "=".
    assert after.environment({}) == {"SCORER_BENCH_TUNING": "A=1,B=2"}


@pytest.mark.parametrize(
    ("specs", "envs", "message"),
    [
        (["only"], [], "at least two"),
        (["a", "a"], [], "new NAME"),
        (["a", "b=/nonexistent"], [], "no stream_worker package"),
        (["a", "b"], ["c=K=V"], "named variant"),
        (["a", "b"], ["a=K"], "VARIANT=KEY=VALUE"),
    ],
)
def test_bad_variants_are_refused_in_one_line(
    specs: list[str], envs: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ab.parse_variants(specs, envs)


def test_the_summary_takes_medians_over_rounds() -> None:
    variant = ab.Variant("a")
    for p99, stage in ((30.0, 1.0), (50.0, 3.0), (40.0, 2.0)):
        variant.rounds.append(
            {
                "p50_ms": 10.0,
                "p99_ms": p99,
                "max_ms": 60.0,
                "achieved_rps": 2000.0,
                "breakdown": {"samples": 1, "stages": {"total": {"p50_ms": stage, "p99_ms": p99}}},
            }
        )
    summary = ab.summary(variant)
    assert summary["p99_ms_median"] == 40.0
    assert summary["stages"] == {"total": {"p50_ms": 2.0, "p99_ms": 40.0}}
    assert [r["p99_ms"] for r in summary["rounds"]] == [30.0, 50.0, 40.0]
    assert "breakdown" not in summary["rounds"][0]


def test_tuning_overrides_keep_each_constants_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tuning, "PRODUCER_LINGER_MS", tuning.PRODUCER_LINGER_MS)
    monkeypatch.setattr(tuning, "BATCH_POLL_SECONDS", tuning.BATCH_POLL_SECONDS)
    done = trace.override_tuning("PRODUCER_LINGER_MS=5, BATCH_POLL_SECONDS=0.001")
    assert done == {"PRODUCER_LINGER_MS": 5, "BATCH_POLL_SECONDS": 0.001}
    assert tuning.PRODUCER_LINGER_MS == 5
    assert isinstance(tuning.BATCH_POLL_SECONDS, float)
    assert trace.override_tuning("") == {}
    monkeypatch.setattr(tuning, "GC_FREEZE_WHEN_READY", True)
    assert trace.override_tuning("GC_FREEZE_WHEN_READY=false") == {"GC_FREEZE_WHEN_READY": False}
    with pytest.raises(SystemExit, match="true or false"):
        trace.override_tuning("GC_FREEZE_WHEN_READY=maybe")
    with pytest.raises(SystemExit, match="not a tuning constant"):
        trace.override_tuning("NO_SUCH_CONSTANT=1")
