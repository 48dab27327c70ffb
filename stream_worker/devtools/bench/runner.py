"""``stream-worker bench``: throughput, pass-through baseline, latency, naive baseline, memory.

Everything runs on loopback and is started here (:class:`.context.BenchRun`): a Tansu broker
on a free port, a SQLite MLflow store with a quickly trained champion (unless a tracking URI
is given), and the worker / pass-through processes, each phase with fresh uuid-named topics
and its own consumer group. Every process is stopped by PID when the run ends.

Phases (the letters of the performance issue):

- (a) sustained throughput of one worker on N pre-produced records;
- (b) the same N records through a Faust pass-through agent (:mod:`..passthrough`);
- (c) latency at a fixed offered rate, from the input record's Kafka timestamp to the
  prediction's arrival at a consumer;
- (d) a naive one-record-at-a-time pandas scorer, in this process, on the same records;
- (e) the worker's peak RSS;
- the share of decode, encode + predict, drift and metrics in ``BatchScorer.process``;
- optionally (a) again with two workers in one group;
- (a) again with the capture process archiving alongside (``--no-capture`` skips it).

The targets of DESIGN.md are judged here, in the output; tests never assert speed.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_worker.devtools import replay
from stream_worker.devtools.bench.baselines import cost_share, naive_baseline
from stream_worker.devtools.bench.context import BenchOptions, BenchRun, Say
from stream_worker.devtools.bench.phases import (
    CaptureResult,
    LatencyResult,
    ThroughputResult,
    capture_phase,
    latency_phase,
    passthrough_phase,
    throughput_phase,
)
from stream_worker.devtools.bench.report import derive, table, write_json
from stream_worker.devtools.bench.sysinfo import cpu_info
from stream_worker.devtools.extras import py_spy
from trainer.provenance import git_commit

if TYPE_CHECKING:
    from trainer.model.bundle import ModelBundle

__all__ = ["BenchOptions", "BenchRun", "run_bench"]

#: Records per ``BatchScorer.process`` call when timing its steps in this process.
MICRO_BATCH = 1000


def run_bench(opts: BenchOptions, say: Say) -> dict[str, Any]:
    """Run every phase, print a table, write the JSON; return the figures."""
    if opts.profile is not None:
        py_spy()  # fail now, not after training a model and running the baselines
    run = BenchRun(opts, say)
    run.work.mkdir(parents=True, exist_ok=True)
    # kafka-python warns about its own slow polls while the machine is busy: expected here.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result = _run_facts(run)
    try:
        _start(run)
        result.update(_in_process_figures(run, _load_bundle(run)))
        result.update(_process_figures(run))
    finally:
        run.close()
    result["load_average_end"] = _load_average()
    derive(result)
    for line in table(result):
        say(line)
    write_json(result, opts.json_path)
    say(f"wrote {opts.json_path}")
    return result


def _run_facts(run: BenchRun) -> dict[str, Any]:
    """What the figures were measured on: size, machine, commit, load, batching settings."""
    return {
        "records": run.opts.records,
        "cpu": cpu_info(),
        "commit": git_commit(),
        "load_average_start": _load_average(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "batch_max": run.settings.batch_max,
        "batch_window_seconds": run.settings.batch_window_seconds,
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _start(run: BenchRun) -> None:
    """The broker, the champion's store and the records every phase sends."""
    run.say(f"broker: starting Tansu on loopback (logs in {run.work})")
    run.broker.start()
    run.tracking_uri = run.opts.tracking_uri or _train_champion(run)
    settings = run.settings
    run.say(f"model: {settings.model_name}@{settings.model_alias} from {run.tracking_uri}")
    run.records = replay.test_records()


# --- the figures ---------------------------------------------------------------------------


def _in_process_figures(run: BenchRun, bundle: ModelBundle) -> dict[str, Any]:
    """(d) the naive scorer, and ``BatchScorer.process`` alone with the cost of its steps."""
    values = [replay.wire_value(r) for r in _cycled(run.records, run.opts.naive_records)]
    run.say(f"(d) naive one-record scorer on {len(values)} records …")
    naive_rps, naive_diff = naive_baseline(bundle, values)

    run.say(f"cost share: BatchScorer.process on batches of {MICRO_BATCH} …")
    micro = [replay.wire_value(r) for r in _cycled(run.records, MICRO_BATCH)]
    scoring_rps, shares = cost_share(bundle, run.settings, micro)
    return {
        "naive_rps": naive_rps,
        "naive_records": len(values),
        "naive_max_abs_diff": naive_diff,
        "scoring_only_rps": scoring_rps,
        "cost_share": shares,
    }


def _process_figures(run: BenchRun) -> dict[str, Any]:
    """(a), (b), (c) and (e) from worker processes, then (a) with two workers if asked."""
    opts, say = run.opts, run.say
    say(f"(a) one worker, {opts.records} pre-produced records …")
    one = throughput_phase(run, workers=1, profile=opts.profile)
    capture = None
    if opts.capture:
        say(f"(f) one worker with the capture alongside, {opts.records} pre-produced records …")
        capture = capture_phase(run)
    say(f"(b) Faust pass-through agent, {opts.records} pre-produced records …")
    passthrough = passthrough_phase(run)
    say(f"(c) latency at {opts.rate:g} records/s for {opts.latency_seconds:g}s …")
    latency = latency_phase(run)
    figures = {
        **_throughput_figures(one, opts.profile),
        **_capture_figures(capture),
        "passthrough_rps": passthrough.rps,
        "passthrough_rss_mb": passthrough.rss_mb[0],
        "passthrough_cpu_cores": passthrough.cpu,
        **_latency_figures(latency, opts.rate),
        "worker_rss_mb": round(max([*one.rss_mb, latency.rss_mb]), 1),
        "two_worker_rps": None,
    }
    if opts.two_workers:
        say(f"(a') two workers in one group, {opts.records} pre-produced records …")
        two = throughput_phase(run, workers=2, profile=None)
        figures.update(
            two_worker_rps=two.rps, two_worker_split=two.split, two_worker_cpu_cores=two.cpu
        )
    return figures


def _throughput_figures(one: ThroughputResult, profile: Path | None) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "throughput_rps": one.rps,
        "throughput_span_s": one.span_s,
        "throughput_first_batch": one.first_batch,
        "throughput_duplicates": one.duplicates,
        "throughput_cpu_cores": one.cpu,
    }
    if profile is not None:
        figures.update(profile=str(profile), profiled=True)
    return figures


def _capture_figures(capture: CaptureResult | None) -> dict[str, Any]:
    """(f); every key present, None when the phase was skipped."""
    return {
        "capture_on_rps": capture.rps if capture else None,
        "capture_archive_s": capture.archive_s if capture else None,
        "capture_tail_s": capture.tail_s if capture else None,
        "capture_cpu_cores": capture.cpu if capture else None,
    }


def _latency_figures(latency: LatencyResult, offered: float) -> dict[str, Any]:
    return {
        "offered_rps": offered,
        "achieved_offered_rps": latency.achieved_rps,
        "latency_records": latency.records,
        "p50_ms": latency.p50_ms,
        "p95_ms": latency.p95_ms,
        "p99_ms": latency.p99_ms,
        "max_ms": latency.max_ms,
    }


# --- the model -----------------------------------------------------------------------------


def _train_champion(run: BenchRun) -> str:
    """A quickly trained champion in a SQLite store in the workdir (as the test fixture does)."""
    from trainer.pipeline import run_once
    from trainer.settings import TrainerSettings

    folder = run.work / "mlflow"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    run.say("model: training a quick champion (1 trial) into a SQLite store …")
    settings = TrainerSettings(
        mlflow_tracking_uri=uri,
        model_name=run.settings.model_name,
        model_alias=run.settings.model_alias,
        trials=1,
        max_rounds=120,
        early_stopping_rounds=10,
        timeout_seconds=60,
        gate_min_roc_auc=0.5,
        gate_tolerance=1.0,
    )
    run_once(settings)
    return uri


def _load_bundle(run: BenchRun) -> ModelBundle:
    """The champion the workers will load, through the same source class they use."""
    from stream_worker.model_watcher import MlflowModelSource
    from trainer.model.bundle import ModelBundle

    source = MlflowModelSource(run.tracking_uri, run.settings.model_name, run.settings.model_alias)
    target = source.target()
    dest = run.work / "bundle"
    shutil.rmtree(dest, ignore_errors=True)
    return ModelBundle.load(source.download(target.version, dest), nthread=1)


def _cycled(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` records cycling through ``records``, each with its own id."""
    return [{**records[i % len(records)], "applicant_id": f"bench-{i}"} for i in range(n)]
