"""Latency against load, for the worker and the raw forwarder, and where a record's time goes.

- :func:`curve_phase`: per offered rate, a fresh process (worker or forwarder) on fresh
  topics; records offered for ``latency_seconds`` by a separate producer process
  (:mod:`.offer`); input Kafka timestamp → the output's arrival at a consumer polling all the
  time (:class:`~.phases.ArrivalClock`). The step at ``--rate`` is phase (c).
- :func:`breakdown_phase`: the same at ``--rate`` with a *traced* worker
  (:mod:`.trace`): per-stage timestamps on a sample of records, as medians and p99s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_worker.devtools.bench.context import BenchRun
from stream_worker.devtools.bench.phases import (
    START_TIMEOUT,
    ArrivalClock,
    LatencyResult,
    first_timestamps,
    latency_figures,
    wait_for,
)
from stream_worker.devtools.bench.sysinfo import peak_rss_mb, rss_mb
from stream_worker.devtools.processes import ManagedProcess
from stream_worker.exceptions import ConfigError, ScorerError

#: The curve's rates when not given: fixed rates and a share of the process's own maximum.
DEFAULT_CURVE = "1000,2000,5000,10000,80%"

#: A producer process offering a rate paces itself; above this share of its flat-out rate it
#: falls behind, and a step asked for more is offered at this share instead.
PRODUCER_HEADROOM = 0.9
#: A step whose achieved rate is below this share of the offered one was producer-limited.
ACHIEVED_SHARE = 0.9

#: The stages of the breakdown, in a record's order; each reported from the one before.
STAGES = ("created", "fetched", "queued", "batched", "scored", "produced", "acked", "seen")


@dataclass
class CurvePoint:
    offered_rps: float
    achieved_rps: float
    records: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    #: The producer could not offer the rate (achieved below ``ACHIEVED_SHARE`` of it).
    producer_limited: bool = False


@dataclass
class CurveResult:
    points: list[CurvePoint]
    main: LatencyResult  # the step at --rate: phase (c)
    rss_mb: float  # peak, at the end
    ready_rss_mb: float  # once ready (model loaded), before the first record
    trace: list[list[Any]] = field(default_factory=list)


def curve_rates(
    spec: str, maximum: float, main: float, producer_max: float | None = None
) -> list[float]:
    """``"1000,2000,80%"`` → sorted rates; ``N%`` is of ``maximum``; ``main`` always in.

    With ``producer_max`` (one producer process's flat-out rate), no rate exceeds
    ``PRODUCER_HEADROOM`` of it: a faster process than the producer (the forwarder, at 80 % of
    its maximum) is offered what a producer can pace, not a rate it would never finish.
    """
    ceiling = producer_max * PRODUCER_HEADROOM if producer_max else float("inf")
    rates = {float(main)}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            rate = float(part[:-1]) / 100.0 * maximum if part.endswith("%") else float(part)
        except ValueError:
            raise ConfigError(f"--curve-rates: {part!r} is neither a rate nor N%") from None
        if rate >= 1:
            rates.add(round(min(rate, max(ceiling, main))))
    return sorted(rates)


def curve_phase(
    run: BenchRun,
    tag: str,
    launch: Callable[[dict[str, str]], ManagedProcess],
    rates: Sequence[float],
    fetch_trace: Callable[[ManagedProcess], list[list[Any]]] | None = None,
) -> CurveResult:
    """Offer each rate to a fresh process started by ``launch``, on fresh topics; the curve
    and (c).

    Fresh each step because Tansu's fetch lists every batch stored in a partition (and its
    memory engine keeps them all): on shared topics a step would pay for the records of the
    steps before it, and the curve would depend on its order.
    """
    points, main, trace = [], None, []
    rss = ready_rss = 0.0
    for i, rate in enumerate(rates):
        step = _curve_step(run, f"{tag}{i}", launch, rate, fetch_trace)
        points.append(point(rate, step.main))
        rss, ready_rss = max(rss, step.rss_mb), max(ready_rss, step.ready_rss_mb)
        trace.extend(step.trace)
        if rate == run.opts.rate:
            main = step.main
    assert main is not None, "the curve always includes --rate"
    return CurveResult(points, main, rss, ready_rss, trace)


def _curve_step(
    run: BenchRun,
    tag: str,
    launch: Callable[[dict[str, str]], ManagedProcess],
    rate: float,
    fetch_trace: Callable[[ManagedProcess], list[list[Any]]] | None,
) -> CurveResult:
    """One rate: a process, a clock on its output, ``latency_seconds`` of offered records."""
    total = max(1, round(rate * run.opts.latency_seconds))
    keys = step_keys(run.records, total, 0)
    with run.phase_env(tag) as env:
        proc = launch(env)
        clock = ArrivalClock(run.bootstrap, env["SCORER_OUTPUT_TOPIC"])
        trace: list[list[Any]] = []
        try:
            proc.wait_ready(START_TIMEOUT)
            ready_rss = rss_mb(proc.pid)
            clock.start()
            clock.ready.wait(60)
            if clock.error is not None:
                raise ScorerError(f"cannot consume {clock.topic}: {clock.error}")
            offer(run, env, rate, total, tag)
            wait_for(_arrived(clock, keys), total, [proc], "outputs arrived")
            rss = peak_rss_mb(proc.pid)
            if fetch_trace is not None:
                trace = fetch_trace(proc)
        finally:
            clock.stop()
            run.stop(proc)
        sent, _ = first_timestamps(run.bootstrap, env["SCORER_INPUT_TOPIC"], total)
    figures = latency_figures({k: sent[k] for k in keys}, clock.arrivals, rss)
    return CurveResult([], figures, rss, ready_rss, _seen(trace, clock.arrivals))


def _arrived(clock: ArrivalClock, keys: Sequence[bytes]) -> Callable[[], int]:
    arrivals = clock.arrivals
    return lambda: sum(k in arrivals for k in keys)


def step_keys(records: list[dict[str, Any]], total: int, start: int) -> list[bytes]:
    """The keys :mod:`.offer` (and ``stream-worker produce``) send with ``--limit total
    --start start``, in order: the records cycled from ``start``, ids suffixed ``-rN`` from
    the second pass on (``replay.cycled``)."""
    n = len(records)
    keys = []
    for i in range(start, start + total):
        aid = str(records[i % n]["applicant_id"])
        keys.append((aid if i < n else f"{aid}-r{i // n}").encode())
    return keys


def point(rate: float, figures: LatencyResult) -> CurvePoint:
    return CurvePoint(
        rate,
        figures.achieved_rps,
        figures.records,
        figures.p50_ms,
        figures.p95_ms,
        figures.p99_ms,
        figures.max_ms,
        figures.achieved_rps < ACHIEVED_SHARE * rate,
    )


def offer(run: BenchRun, env: dict[str, str], rate: float, total: int, tag: str) -> None:
    """``total`` records at ``rate`` from a separate producer process (its own GIL, aiokafka:
    :mod:`.offer`)."""
    argv = [sys.executable, "-m", "stream_worker.devtools.bench.offer", "--rate", f"{rate:g}"]
    argv += ["--limit", str(total), "--bootstrap", run.bootstrap]
    argv += ["--topic", env["SCORER_INPUT_TOPIC"]]
    log_path = run.logs / f"{tag}-producer-{rate:g}.log"
    producer = run.launch(ManagedProcess(f"{tag}-producer", argv, None, log_path, env))
    assert producer.process is not None
    timeout = total / rate * 4 + 120
    try:
        code = producer.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ScorerError(
            f"the latency producer did not send {total:,} records at {rate:,.0f}/s within "
            f"{timeout:,.0f} s (one producer reached {run.producer_rps:,.0f}/s flat out here): "
            "lower --curve-rates"
        ) from None
    finally:
        run.stop(producer)
    if code != 0:
        raise ScorerError(f"the latency producer failed: {producer.tail()}")


def curve_json(points: Sequence[CurvePoint]) -> list[dict[str, float]]:
    return [asdict(p) for p in points]


# --- the breakdown -------------------------------------------------------------------------


def get_trace(proc: ManagedProcess) -> list[list[Any]]:
    """The traced worker's samples (``GET /bench-trace``): key, then one time per stage."""
    assert proc.ready_url is not None
    url = proc.ready_url.removesuffix("/health") + "/bench-trace"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return list(json.loads(resp.read().decode()))


def _seen(trace: list[list[Any]], arrivals: Mapping[bytes, float]) -> list[list[Any]]:
    """Each complete sample with the time its output reached the consumer appended."""
    out = []
    for row in trace:
        key = str(row[0]).encode()
        if key in arrivals and all(t is not None for t in row[1:]):
            out.append([*row, arrivals[key]])
    return out


def breakdown(samples: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Median and p99 (ms) of each stage from the one before, and of the whole way.

    A sample is ``[key, created, fetched, queued, batched, scored, produced, acked, seen]``
    (seconds). The stages overlap at their ends (an output can be seen before its ack comes
    back), so a stage can be negative; medians of stages do not add up to the total's median.
    """
    if not samples:
        return {"samples": 0, "stages": {}}
    times = np.asarray([row[1:] for row in samples], dtype=np.float64) * 1000.0
    stages: dict[str, dict[str, float]] = {}
    for i in range(1, len(STAGES)):
        stages[f"{STAGES[i - 1]}_to_{STAGES[i]}"] = _p50_p99(times[:, i] - times[:, i - 1])
    stages["total"] = _p50_p99(times[:, -1] - times[:, 0])
    return {"samples": len(samples), "stages": stages}


def _p50_p99(values: np.ndarray[Any, Any]) -> dict[str, float]:
    p50, p99 = np.percentile(values, [50, 99])
    return {"p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}


# --- the plot ------------------------------------------------------------------------------


def plot_curve(curves: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """p50 / p99 / max against the offered rate, one colour per process; a PNG. (The achieved
    rate is in the JSON: one producer process cannot offer every rate on two cores.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for (name, points), colour in zip(curves.items(), ("tab:blue", "tab:orange"), strict=False):
        x = [p["offered_rps"] for p in points]
        for key, style in (("p50_ms", ":"), ("p99_ms", "-"), ("max_ms", "--")):
            label = f"{name} {key.removesuffix('_ms')}"
            ax.plot(x, [p[key] for p in points], style, marker="o", color=colour, label=label)
    ax.axhline(50, color="grey", linewidth=0.8)
    ax.text(ax.get_xlim()[0], 51, " p99 bar 50 ms", color="grey", fontsize=8)
    ax.set_xlabel("offered rate (records/s)")
    ax.set_xscale("log")
    ax.set_ylabel("Kafka timestamp in → output at a consumer (ms)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    ax.set_title(time.strftime("latency against load, %Y-%m-%d %H:%M UTC", time.gmtime()))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
