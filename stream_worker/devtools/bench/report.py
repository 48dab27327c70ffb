"""What a run's measured figures mean: derived figures, the targets, the table, the JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Targets of DESIGN.md ("Quality bars"): judged in the output, never in tests.
#: One worker, production-size model, end to end.
TARGET_RPS = 20_000.0
#: References, no longer bars (DESIGN.md since issue 13: the forwarder is the ceiling, the
#: naive scorer "stays as a reference"): reported, not needed by ``targets_met``.
REFERENCE_PASSTHROUGH_RATIO = 0.8
REFERENCE_SPEEDUP = 50.0
TARGET_P99_MS = 50.0
#: One worker against the raw aiokafka forwarder in the same run (DESIGN.md).
TARGET_FORWARDER_RATIO = 0.6
#: The worker's p99 at the offered rate against the forwarder's in the same run.
TARGET_P99_VS_FORWARDER = 1.5
#: (f): the worker with the capture alongside keeps this share of its (a) throughput.
TARGET_CAPTURE_RATIO = 0.9

#: Targets that are references, not bars: reported, but ``targets_met`` does not need them.
REFERENCES = ("passthrough_ratio_ge_0_8", "speedup_ge_50x")


def derive(result: dict[str, Any]) -> None:
    """Add ``speedup``, ``ratio_to_passthrough``, ``capture_ratio`` (None when (f) was
    skipped), ``targets`` and ``targets_met`` in place."""
    rps = float(result["throughput_rps"])
    result["speedup"] = round(rps / result["naive_rps"], 1)
    result["ratio_to_passthrough"] = round(rps / result["passthrough_rps"], 3)
    result["ratio_to_forwarder"] = round(rps / result["forwarder_rps"], 3)
    result["p99_vs_forwarder"] = round(result["p99_ms"] / max(result["forwarder_p99_ms"], 1e-3), 2)
    result["targets"] = {
        "throughput_ge_20k": rps >= TARGET_RPS,
        "passthrough_ratio_ge_0_8": result["ratio_to_passthrough"] >= REFERENCE_PASSTHROUGH_RATIO,
        "speedup_ge_50x": result["speedup"] >= REFERENCE_SPEEDUP,
        "p99_le_50ms": result["p99_ms"] <= TARGET_P99_MS,
        "forwarder_ratio_ge_0_6": result["ratio_to_forwarder"] >= TARGET_FORWARDER_RATIO,
        "p99_le_1_5x_forwarder": result["p99_vs_forwarder"] <= TARGET_P99_VS_FORWARDER,
    }
    capture_rps = result.get("capture_on_rps")
    result["capture_ratio"] = round(capture_rps / rps, 3) if capture_rps else None
    if result["capture_ratio"] is not None:
        result["targets"]["capture_ratio_ge_0_9"] = result["capture_ratio"] >= TARGET_CAPTURE_RATIO
    result["targets_met"] = all(v for k, v in result["targets"].items() if k not in REFERENCES)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")


def table(r: dict[str, Any]) -> list[str]:
    """The printed summary: a heading, one row per figure with its bar and verdict."""
    lines = ["", f"records {r['records']:,}  ·  {r['cpu']}  ·  commit {r['commit'][:12]}"]
    lines.append(f"load average {r['load_average_start']} at start, {r['load_average_end']} at end")
    lines.append("")
    rows = _rows(r)
    width = max(len(row[0]) for row in rows)
    for name, value, target, verdict in rows:
        lines.append(f"  {name:<{width}}  {value:>26}  {target:<22} {verdict}")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in r["cost_share"].items())
    lines.append(f"  cost share of process(): {shares}")
    lines.extend(_breakdown_lines(r.get("latency_breakdown")))
    lines.extend(_curve_lines(r.get("latency_curve") or {}))
    imports = r.get("worker_import_rss_mb") or {}
    if imports:
        parts = ", ".join(f"{k} {v:,.0f}" for k, v in imports.items() if k != "total")
        lines.append(f"  import-time RSS {imports['total']:,.0f} MiB: {parts}")
    lines.append(f"  all bars met: {_yes(r['targets_met'])}")
    return lines


def _breakdown_lines(breakdown: dict[str, Any] | None) -> list[str]:
    if not breakdown or not breakdown.get("stages"):
        return []
    lines = [f"  latency breakdown, {breakdown['samples']} sampled records (p50 / p99 ms):"]
    for stage, v in breakdown["stages"].items():
        lines.append(f"    {stage:<22} {v['p50_ms']:>8.2f} / {v['p99_ms']:>8.2f}")
    return lines


def _curve_lines(curve: dict[str, list[dict[str, float]]]) -> list[str]:
    lines = []
    for name, points in curve.items():
        lines.append(f"  latency curve, {name} (offered: p50 / p95 / p99 / max ms):")
        for p in points:
            lines.append(
                f"    {p['offered_rps']:>8,.0f}/s ({p['achieved_rps']:,.0f}): {p['p50_ms']:.1f} / "
                f"{p['p95_ms']:.1f} / {p['p99_ms']:.1f} / {p['max_ms']:.1f}"
            )
    return lines


def _rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    t = r["targets"]
    two = f"{r['two_worker_rps']:,.0f} records/s" if r.get("two_worker_rps") else "skipped"
    return [
        ("(a) throughput, one worker", f"{r['throughput_rps']:,.0f} records/s", "≥ 20,000", _yes(t["throughput_ge_20k"])),  # noqa: E501
        ("    CPU worker / broker", cpu_cores(r.get("throughput_cpu_cores")), "", ""),
        *_capture_rows(r),
        ("(b) Faust pass-through", f"{r['passthrough_rps']:,.0f} records/s", "", ""),
        ("    CPU agent / broker", cpu_cores(r.get("passthrough_cpu_cores")), "", ""),
        ("    ratio to pass-through", f"{r['ratio_to_passthrough']:.2f}×", "reference ≥ 0.8×", _yes(t["passthrough_ratio_ge_0_8"])),  # noqa: E501
        ("(b') raw aiokafka forwarder", f"{r['forwarder_rps']:,.0f} records/s", "", ""),
        ("    CPU forwarder / broker", cpu_cores(r.get("forwarder_cpu_cores")), "", ""),
        ("    ratio to forwarder", f"{r['ratio_to_forwarder']:.2f}×", "≥ 0.6×", _yes(t["forwarder_ratio_ge_0_6"])),  # noqa: E501
        ("(d) naive one-record scorer", f"{r['naive_rps']:,.0f} records/s", "", ""),
        ("    speedup over naive", f"{r['speedup']:,.1f}×", "reference ≥ 50×", _yes(t["speedup_ge_50x"])),  # noqa: E501
        ("(c) latency p50 / p95", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} ms", "", ""),
        ("    latency p99 / max", f"{r['p99_ms']:.1f} / {r['max_ms']:.1f} ms", "p99 ≤ 50 ms", _yes(t["p99_le_50ms"])),  # noqa: E501
        ("    forwarder p50 / p99", f"{r['forwarder_p50_ms']:.1f} / {r['forwarder_p99_ms']:.1f} ms", "", ""),  # noqa: E501
        ("    worker p99 / forwarder p99", f"{r['p99_vs_forwarder']:.2f}×", "≤ 1.5×", _yes(t["p99_le_1_5x_forwarder"])),  # noqa: E501
        ("    offered / achieved", f"{r['offered_rps']:,.0f} / {r['achieved_offered_rps']:,.0f} records/s", "", ""),  # noqa: E501
        ("(e) worker peak RSS", f"{r['worker_rss_mb']:,.0f} MiB", "", ""),
        *_optional_rows(r),
        ("two workers, one group", two, "", ""),
        ("BatchScorer.process alone", f"{r['scoring_only_rps']:,.0f} records/s", "", ""),
    ]  # fmt: skip


def _optional_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The RSS once ready and the model's size, when the run measured them."""
    rows = []
    if r.get("worker_ready_rss_mb"):
        rows.append(
            ("    RSS once ready (model loaded)", f"{r['worker_ready_rss_mb']:,.0f} MiB", "", "")
        )
    if r.get("model_trees"):
        rows.append(("model served", f"{r.get('model')}, {r['model_trees']:,} trees", "", ""))
    return rows


def _capture_rows(r: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(f), when it ran: the worker's rate with the capture alongside, and the capture's time."""
    if r.get("capture_ratio") is None:
        return []
    archived = f"{r['capture_archive_s']:.1f} s ({r['capture_tail_s']:.1f} s after the last)"
    return [
        ("(f) one worker + capture", f"{r['capture_on_rps']:,.0f} records/s", "", ""),
        ("    ratio to (a)", f"{r['capture_ratio']:.2f}×", "≥ 0.9×", _yes(r["targets"]["capture_ratio_ge_0_9"])),  # noqa: E501
        ("    all archived after", archived, "", ""),
        ("    CPU worker+capture / broker", cpu_cores(r.get("capture_cpu_cores")), "", ""),
    ]  # fmt: skip


def _yes(flag: bool) -> str:
    return "yes" if flag else "NO"


def cpu_cores(cores: dict[str, float] | None) -> str:
    """``"0.97 / 0.41 cores"``: the phase's own processes, then the broker."""
    if not cores:
        return "n/a"
    own = sum(v for k, v in cores.items() if k != "broker")
    return f"{own:.2f} / {cores.get('broker', 0.0):.2f} cores"
