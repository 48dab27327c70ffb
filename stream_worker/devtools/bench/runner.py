"""``stream-worker bench``: throughput, pass-through baseline, latency, naive baseline, memory.

Everything runs on loopback and is started here (:class:`.context.BenchRun`): a Tansu broker
on a free port, the model asked for (``--model``: by default the default ``trainer run``
model, trained once and cached by a content key, see :mod:`.model`), and the worker,
pass-through and forwarder processes, each phase with fresh uuid-named topics and its own
consumer group. Every process is stopped by PID when the run ends.

Phases (the letters of the performance issue):

- (a) sustained throughput of one worker on N pre-produced records;
- (b) the same N records through a Faust pass-through agent (:mod:`..passthrough`) and
  through a raw aiokafka forwarder (:mod:`..forwarder`), the ceiling of any Python client;
- (c) latency at a fixed offered rate, from the input record's Kafka timestamp to the
  prediction's arrival at a consumer, as one point of a latency-versus-load curve of the
  worker and of the forwarder (:mod:`.latency`), and a per-stage breakdown on a sample
  (a traced worker, :mod:`.trace`);
- (d) a naive one-record-at-a-time pandas scorer, in this process, on the same records;
- (e) the worker's peak RSS, its RSS before the first record and what its imports cost;
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
from stream_worker.devtools.bench import latency as lat
from stream_worker.devtools.bench import model as bench_model
from stream_worker.devtools.bench.baselines import cost_share, naive_baseline
from stream_worker.devtools.bench.context import BenchOptions, BenchRun, Say
from stream_worker.devtools.bench.phases import (
    CaptureResult,
    LatencyResult,
    ThroughputResult,
    capture_phase,
    forwarder_phase,
    passthrough_phase,
    throughput_phase,
)
from stream_worker.devtools.bench.report import derive, table, write_json
from stream_worker.devtools.bench.sysinfo import cpu_info, import_rss_mb
from stream_worker.devtools.extras import py_spy
from stream_worker.exceptions import ConfigError
from trainer.provenance import git_commit

if TYPE_CHECKING:
    from trainer.model.bundle import ModelBundle

__all__ = ["BenchOptions", "BenchRun", "prepare", "run_bench"]

#: Records per ``BatchScorer.process`` call when timing its steps in this process.
MICRO_BATCH = 1000


def run_bench(opts: BenchOptions, say: Say) -> dict[str, Any]:
    """Run every phase, print a table, write the JSON; return the figures."""
    if opts.profile is not None:
        py_spy()  # fail now, not after training a model and running the baselines
    run = BenchRun(opts, say)
    result = _run_facts(run)
    try:
        prepare(run)
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
        "model": run.opts.model or ("store" if run.opts.tracking_uri else bench_model.DEFAULT),
    }


def _load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def prepare(run: BenchRun) -> None:
    """The broker, the model's store and the records every phase sends."""
    run.work.mkdir(parents=True, exist_ok=True)
    # kafka-python warns about its own slow polls while the machine is busy: expected here.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    run.say(f"broker: starting Tansu on loopback (logs in {run.work})")
    run.broker.start()
    run.tracking_uri = _model_store(run)
    run.say(f"model: {run.model_name}@{run.model_alias} from {run.tracking_uri}")
    run.records = replay.test_records()


def _model_store(run: BenchRun) -> str:
    """The tracking URI serving ``--model`` (and the model's name and alias on ``run``)."""
    opts = run.opts
    if opts.model is None:
        if opts.tracking_uri:  # the champion of a given store, as before --model existed
            return opts.tracking_uri
        choice = bench_model.ModelChoice(bench_model.DEFAULT)
    else:
        choice = bench_model.ModelChoice.parse(opts.model)
    if choice.kind == "uri":
        uri = opts.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError(f"--model {opts.model}: give the store with --tracking-uri")
        assert choice.name is not None
        assert choice.alias is not None
        run.model_name, run.model_alias = choice.name, choice.alias
        return uri
    if opts.tracking_uri:
        raise ConfigError("--tracking-uri goes with --model models:/NAME@ALIAS (or no --model)")
    if choice.kind == bench_model.QUICK:
        folder = run.work / "mlflow"
        return bench_model.quick_model(folder, run.model_name, run.model_alias, run.say)
    return bench_model.cached_default_model(
        run.work / "models", run.model_name, run.model_alias, run.say
    )


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
        "model_trees": bench_model.tree_count(bundle),
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
    say(f"(b') raw aiokafka forwarder, {opts.records} pre-produced records …")
    forwarder = forwarder_phase(run)
    figures = {
        **_throughput_figures(one, opts.profile),
        **_capture_figures(capture),
        "passthrough_rps": passthrough.rps,
        "passthrough_rss_mb": passthrough.rss_mb[0],
        "passthrough_cpu_cores": passthrough.cpu,
        "forwarder_rps": forwarder.rps,
        "forwarder_cpu_cores": forwarder.cpu,
        "forwarder_rss_mb": forwarder.rss_mb[0],
    }
    figures.update(_latency_phases(run, one.rps, forwarder.rps))
    figures["worker_rss_mb"] = round(max([*one.rss_mb, figures.pop("_curve_rss_mb")]), 1)
    figures["two_worker_rps"] = None
    if opts.two_workers:
        say(f"(a') two workers in one group, {opts.records} pre-produced records …")
        two = throughput_phase(run, workers=2, profile=None)
        figures.update(
            two_worker_rps=two.rps, two_worker_split=two.split, two_worker_cpu_cores=two.cpu
        )
    return figures


def _latency_phases(run: BenchRun, worker_max: float, forwarder_max: float) -> dict[str, Any]:
    """(c) on the latency curves of the worker and the forwarder, the breakdown, the plot."""
    opts, say = run.opts, run.say
    rates = lat.curve_rates(opts.curve_rates, worker_max, opts.rate, run.producer_rps)
    say(f"(c) worker latency at {', '.join(f'{r:g}' for r in rates)} records/s offered, "
        f"{opts.latency_seconds:g}s each …")  # fmt: skip
    worker = lat.curve_phase(
        run, "latency", lambda env: run.launch(run.worker(env, "latency-worker")), rates
    )
    f_rates = lat.curve_rates(opts.curve_rates, forwarder_max, opts.rate, run.producer_rps)
    say(f"(c') forwarder latency at {', '.join(f'{r:g}' for r in f_rates)} records/s offered …")
    forwarder = lat.curve_phase(
        run, "fwdlatency", lambda env: run.launch(run.forwarder(env, "latency-forwarder")), f_rates
    )
    curve = {
        "worker": lat.curve_json(worker.points),
        "forwarder": lat.curve_json(forwarder.points),
    }
    breakdown: dict[str, Any] | None = None
    if opts.breakdown:
        say(f"(c'') latency breakdown: a traced worker at {opts.rate:g} records/s …")
        traced = lat.curve_phase(
            run,
            "breakdown",
            lambda env: run.launch(run.traced_worker(env, "traced-worker")),
            [opts.rate],
            lat.get_trace,
        )
        breakdown = {
            **lat.breakdown(traced.trace),
            "offered_rps": opts.rate,
            "p50_ms": traced.main.p50_ms,
            "p99_ms": traced.main.p99_ms,
        }
    plot = lat.plot_curve(curve, opts.json_path.with_name("latency_curve.png"))
    say("    import-time RSS of a worker (fresh interpreter) …")
    return {
        **_latency_figures(worker.main, opts.rate),
        "forwarder_p50_ms": forwarder.main.p50_ms,
        "forwarder_p95_ms": forwarder.main.p95_ms,
        "forwarder_p99_ms": forwarder.main.p99_ms,
        "forwarder_max_ms": forwarder.main.max_ms,
        "latency_curve": curve,
        "latency_curve_png": str(plot),
        "latency_breakdown": breakdown,
        "worker_ready_rss_mb": worker.ready_rss_mb,
        "worker_import_rss_mb": import_rss_mb(),
        "_curve_rss_mb": worker.rss_mb,
    }


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


def _load_bundle(run: BenchRun) -> ModelBundle:
    """The champion the workers will load, through the same source class they use."""
    from stream_worker.model_watcher import MlflowModelSource
    from trainer.model.bundle import ModelBundle

    source = MlflowModelSource(run.tracking_uri, run.model_name, run.model_alias)
    target = source.target()
    dest = run.work / "bundle"
    shutil.rmtree(dest, ignore_errors=True)
    return ModelBundle.load(source.download(target.version, dest), nthread=1)


def _cycled(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """``n`` records cycling through ``records``, each with its own id."""
    return [{**records[i % len(records)], "applicant_id": f"bench-{i}"} for i in range(n)]
