"""The chaos run's output: a printed line per scenario, the JSON, docs/reliability.md."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

ROWS = (
    ("produced valid", "produced_valid"),
    ("produced poison (incl. oversize)", "produced_poison"),
    ("sends never acknowledged", "unacknowledged"),
    ("unique valid ids predicted", "predicted_unique"),
    ("**lost**", "lost"),
    ("duplicates (extra outputs per id)", "duplicates"),
    ("of which written twice to the input (produce retry)", "input_duplicates"),
    ("redone by the workers (checked against the bound)", "redone"),
    ("valid records dead-lettered", "valid_dead_lettered"),
    ("poison dead-lettered", "poison_dead_lettered"),
    ("recovery (s)", "recovery_seconds"),
    ("worst record delay (s)", "max_delay_seconds"),
    ("healthy afterwards", "healthy_after"),
)


#: Why a scenario is known to fail (shown under its table when it does).
KNOWN_FAILURES = {
    "scale": (
        "not explained yet, intermittent: README promises 0 for a rebalance, and 4 other runs of "
        "this scenario (2 short, 2 full-length) had 0; here the "
        "workers scored 81 records twice (none was twice in the input) on a machine at load "
        "average 3.6–6 on 2 cores, while two new workers started (CPU-heavy imports). README's "
        "own exceptions fit: batches not acknowledged within the 5 s drain timeout, or a member "
        "evicted past the 6 s session timeout, are redone; the workers log at warning level and "
        "left no line saying which"
    ),
    "broker_restart": (
        "found by this suite: on Tansu's S3 engine a fetch whose wait runs out before the "
        "records are read from storage comes back (nearly) empty, so workers with the default "
        "10 ms wait scored 1 of 1,200 records in 30 s; the workers here run with "
        "SCORER_FETCH_MAX_WAIT_MS=500 (tests/chaos/test_durable_fetch.py pins the limit)"
    ),
}


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def scenario_section(fig: dict[str, Any], title: str) -> list[str]:
    verdict = "pass" if fig["passed"] else "**FAIL**"
    lines = [
        f"### {title} (`{fig['scenario']}`): {verdict}",
        "",
        "| figure | value |",
        "| --- | --- |",
    ]
    lines += [f"| {label} | {_value(fig.get(key, 'not computed'))} |" for label, key in ROWS]
    lines.append(f"| duplicate bound | {fig['duplicate_bound']:,} ({fig['bound_why']}) |")
    lines += ["", "Checks: " + "; ".join(f"{k}: {_value(v)}" for k, v in fig["checks"].items())]
    if fig.get("notes"):
        lines += ["", "Notes: " + "; ".join(fig["notes"]) + "."]
    if not fig["passed"] and fig["scenario"] in KNOWN_FAILURES:
        lines += ["", f"Why it fails: {KNOWN_FAILURES[fig['scenario']]}."]
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    """docs/reliability.md: how it was run, a summary table, then one table per scenario."""
    figs = result["scenarios"]
    load = [
        ", ".join(f"{x:.2f}" for x in result[k]) for k in ("load_average_start", "load_average_end")
    ]
    intro = [
        "`make reliability` (= `stream-worker chaos --markdown docs/reliability.md --json "
        "bench/reliability.json`) starts, on loopback, a Tansu broker, a SQLite MLflow store with "
        "a quickly trained champion, and real `stream-worker run` processes; for each scenario a "
        "kafka-python producer (acks=all, idempotence off: a Tansu limit) sends adult.test "
        f"records at {result['rate']:g}/s for {result['seconds']:g} s with "
        f"{result['poison_fraction']:.0%} poison mixed in (not JSON, not an object, missing or "
        "out-of-range or mistyped fields), while the fault is injected. Everything is counted "
        "by applicant id (kills leave offset gaps), from the predictions and dead-letter topics "
        "read back from the beginning. `pytest -m chaos` (`make chaos-test`) runs the same "
        "scenarios in a shorter form and asserts the same checks.",
        "- **lost**: valid ids acknowledged by the broker, never predicted nor dead-lettered.",
        "- **duplicates**: outputs beyond the first per id; **redone**: those beyond the copies "
        "of the id in the input topic (a produce retry that wrote a record twice is the "
        "producer's duplicate, README's \"A produce retry\"), checked against README's bound "
        '("Delivery is at least once"), computed from the rate and `SCORER_BATCH_MAX` '
        f"({result['batch_max']}).",
        "- **recovery**: from a fault until the last record it held up (out more "
        "than 2 s after it was sent) got its output (the worst over the scenario's faults); "
        "after that the output lag is back to ~0.",
        f"Commit `{result['commit'][:12]}`, {result['started_at']}; machine {result['cpu']}, "
        f"load average (1, 5, 15 min) {load[0]} at the start, {load[1]} at the end (a shared "
        "machine: other jobs ran alongside).",
    ]
    lines = ["# Reliability (chaos suite)", ""]
    for paragraph in intro:
        bullet = paragraph.startswith("- ")
        lines += [*textwrap.wrap(paragraph, 100, subsequent_indent="  " if bullet else ""), ""]
    lines += [
        "| scenario | lost | redone / bound (all duplicates) | valid DLQ | poison DLQ / produced "
        "| recovery s | healthy | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for fig in figs:
        lines.append(
            f"| {result['titles'][fig['scenario']]} | {fig['lost']} | {fig.get('redone', '?')} / "
            f"{fig['duplicate_bound']} ({fig['duplicates']}) | {fig['valid_dead_lettered']} | "
            f"{fig['poison_dead_lettered']} / {fig['produced_poison']} | "
            f"{_value(fig['recovery_seconds'])} | {_value(fig['healthy_after'])} | "
            f"{'pass' if fig['passed'] else '**FAIL**'} |"
        )
    lines.append("")
    for fig in figs:
        lines += scenario_section(fig, result["titles"][fig["scenario"]])
    for name, error in result.get("errors", {}).items():
        lines += [f"### `{name}`: did not run to the end", "", f"`{error}`", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(result))
