"""``stream-worker bench``: throughput, framework ceiling, latency, naive baseline and memory.

Everything runs on loopback and is started here: a Tansu broker on a free port, a SQLite
MLflow store with a quickly trained champion (unless a tracking URI is given), and the
worker / pass-through processes, each phase with fresh uuid-named topics and its own
consumer group. Every process is stopped by PID when the run ends, whatever happens.

Phases (the letters of the performance issue):

- (a) sustained throughput of one worker on N pre-produced records;
- (b) the same N records through a Faust pass-through agent (:mod:`.passthrough`);
- (c) latency at a fixed offered rate, from the input record's Kafka timestamp to the
  prediction's arrival at a consumer;
- (d) a naive one-record-at-a-time pandas scorer, in this process, on the same records;
- (e) the worker's peak RSS;
- the share of decode, encode + predict, drift and metrics in ``BatchScorer.process``;
- optionally (a) again with two workers in one group.

The targets of DESIGN.md are judged here, in the output; tests never assert speed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import signal
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from stream_worker.devtools import replay as tools
from stream_worker.devtools.broker import LOOPBACK, LocalBroker, free_port
from stream_worker.devtools.microbench import compare_decoders
from stream_worker.devtools.processes import ManagedProcess, console_script, worker_process
from stream_worker.exceptions import ScorerError
from stream_worker.runtime.admin import delete_topics, ensure_topics
from stream_worker.settings import WorkerSettings

if TYPE_CHECKING:
    from trainer.model.bundle import ModelBundle

Say = Callable[[str], None]

PARTITIONS = 6
START_TIMEOUT = 180.0  # seconds for a worker to load its model and join its group
STALL_TIMEOUT = 60.0  # seconds without progress before a phase is declared stuck
MICRO_BATCH = 1000

# Targets of DESIGN.md ("Quality bars"): judged in the output, never in tests.
TARGET_RPS = 10_000.0
GOAL_RPS = 20_000.0
TARGET_PASSTHROUGH_RATIO = 0.8
TARGET_SPEEDUP = 50.0
TARGET_P99_MS = 50.0

REQUIRED_KEYS = (
    "throughput_rps",
    "passthrough_rps",
    "naive_rps",
    "speedup",
    "offered_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "worker_rss_mb",
    "records",
    "cpu",
    "commit",
    "two_worker_rps",
    "scoring_only_rps",
    "cost_share",
    "ratio_to_passthrough",
    "targets",
)


@dataclass(frozen=True)
class BenchOptions:
    records: int = 100_000
    rate: float = 2000.0
    latency_seconds: float = 15.0
    naive_records: int = 2000
    two_workers: bool = True
    tracking_uri: str | None = None
    json_path: Path = Path("bench/latest.json")
    workdir: Path = Path(".bench")
    profile: Path | None = None


@dataclass
class ThroughputResult:
    rps: float
    span_s: float
    first_batch: int
    duplicates: int
    rss_mb: list[float]
    cpu: dict[str, float]
    split: list[int] = field(default_factory=list)


@dataclass
class LatencyResult:
    records: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float


# --- the run -------------------------------------------------------------------------------


class _Run:
    """One benchmark run: the broker, the base environment and every process it started."""

    def __init__(self, opts: BenchOptions, say: Say) -> None:
        self.opts = opts
        self.say = say
        self.work = opts.workdir.resolve()
        self.logs = self.work / "logs"
        self.settings = WorkerSettings()  # batch size, window, … as the workers will see them
        self.broker = LocalBroker(log_path=self.work / "broker.log")
        self.started: list[ManagedProcess] = []
        self.tracking_uri = ""
        self.records: list[dict[str, Any]] = []

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def close(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()
        self.broker.stop()

    # -- resources --------------------------------------------------------------------------

    @contextlib.contextmanager
    def phase_env(self, tag: str) -> Iterator[dict[str, str]]:
        """Fresh topics and a fresh consumer group for one phase; the topics are deleted after."""
        run = uuid.uuid4().hex[:12]
        topics = [f"bench-{tag}-{kind}-{run}" for kind in ("applicants", "predictions", "dlq")]
        ensure_topics(self.bootstrap, topics, PARTITIONS)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "SCORER_INPUT_TOPIC": topics[0],
            "SCORER_OUTPUT_TOPIC": topics[1],
            "SCORER_DLQ_TOPIC": topics[2],
            "SCORER_TOPIC_PARTITIONS": str(PARTITIONS),
            "SCORER_APP_ID": f"bench-{tag}-{run}",
            "SCORER_DATA_DIR": str(self.work / "faust" / f"{tag}-{run}"),
        }
        try:
            yield env
        finally:
            with contextlib.suppress(ScorerError):  # memory storage: free it for the next phase
                delete_topics(self.bootstrap, topics)

    def launch(self, proc: ManagedProcess) -> ManagedProcess:
        """Start without waiting (so that several processes start together)."""
        ready_url, proc.ready_url = proc.ready_url, None
        self.started.append(proc)
        proc.start()
        proc.ready_url = ready_url
        return proc

    def worker(self, env: dict[str, str], name: str) -> ManagedProcess:
        proc = worker_process(env, free_port(), self.logs / f"{name}.log")
        proc.name = name
        return proc

    def passthrough(self, env: dict[str, str], name: str) -> ManagedProcess:
        port = free_port()
        return ManagedProcess(
            name,
            [console_script("stream-worker"), "passthrough", "--web-port", str(port)],
            f"http://{LOOPBACK}:{port}/health",
            self.logs / f"{name}.log",
            env=dict(env),
        )

    def stop(self, *procs: ManagedProcess) -> None:
        for proc in procs:
            proc.stop()
            if proc in self.started:
                self.started.remove(proc)

    def produce(self, topic: str, n: int) -> float:
        stats = tools.produce(self.bootstrap, topic, self.records, limit=n)
        return stats.sent / max(stats.seconds, 1e-9)


def run_bench(opts: BenchOptions, say: Say) -> dict[str, Any]:
    """Run every phase, print a table, write the JSON; return the figures."""
    run = _Run(opts, say)
    run.work.mkdir(parents=True, exist_ok=True)
    # kafka-python warns about its own slow polls while the machine is busy: expected here.
    logging.getLogger("kafka").setLevel(logging.ERROR)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    result: dict[str, Any] = {
        "records": opts.records,
        "cpu": cpu_info(),
        "commit": git_commit(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "batch_max": run.settings.batch_max,
        "batch_window_seconds": run.settings.batch_window_seconds,
    }
    try:
        say(f"broker: starting Tansu on loopback (logs in {run.work})")
        run.broker.start()
        run.tracking_uri = opts.tracking_uri or _train_champion(run)
        say(f"model: {run.settings.model_name}@{run.settings.model_alias} from {run.tracking_uri}")
        run.records = tools.test_records()
        bundle = _load_bundle(run)

        values = [tools.wire_value(r) for r in _cycled(run.records, opts.naive_records)]
        say(f"(d) naive one-record scorer on {len(values)} records …")
        naive_rps, naive_diff = naive_baseline(bundle, values)
        result.update(naive_rps=naive_rps, naive_records=len(values))
        result["naive_max_abs_diff"] = naive_diff

        say(f"cost share: BatchScorer.process on batches of {MICRO_BATCH} …")
        micro = [tools.wire_value(r) for r in _cycled(run.records, MICRO_BATCH)]
        scoring_rps, shares = cost_share(bundle, run.settings, micro)
        result.update(scoring_only_rps=scoring_rps, cost_share=shares)
        decoders = compare_decoders()
        result.update(
            decode_msgspec_rps=decoders["msgspec_rps"], decode_orjson_rps=decoders["orjson_rps"]
        )

        say(f"(a) one worker, {opts.records} pre-produced records …")
        one = throughput_phase(run, workers=1, profile=opts.profile)
        result.update(
            throughput_rps=one.rps,
            throughput_span_s=one.span_s,
            throughput_first_batch=one.first_batch,
            throughput_duplicates=one.duplicates,
            throughput_cpu_cores=one.cpu,
        )
        if opts.profile is not None:
            result["profile"] = str(opts.profile)
            result["profiled"] = True

        say(f"(b) Faust pass-through agent, {opts.records} pre-produced records …")
        passthrough = passthrough_phase(run)
        result.update(
            passthrough_rps=passthrough.rps,
            passthrough_rss_mb=passthrough.rss_mb[0],
            passthrough_cpu_cores=passthrough.cpu,
        )

        say(f"(c) latency at {opts.rate:g} records/s for {opts.latency_seconds:g}s …")
        latency = latency_phase(run)
        result.update(
            offered_rps=opts.rate,
            achieved_offered_rps=latency.achieved_rps,
            latency_records=latency.records,
            p50_ms=latency.p50_ms,
            p95_ms=latency.p95_ms,
            p99_ms=latency.p99_ms,
            max_ms=latency.max_ms,
        )
        result["worker_rss_mb"] = round(max([*one.rss_mb, latency.rss_mb]), 1)

        result["two_worker_rps"] = None
        if opts.two_workers:
            say(f"(a') two workers in one group, {opts.records} pre-produced records …")
            two = throughput_phase(run, workers=2, profile=None)
            result.update(
                two_worker_rps=two.rps, two_worker_split=two.split, two_worker_cpu_cores=two.cpu
            )
    finally:
        run.close()
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    _derive(result)
    for line in table(result):
        say(line)
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    say(f"wrote {opts.json_path}")
    return result


def _derive(result: dict[str, Any]) -> None:
    rps = float(result["throughput_rps"])
    result["speedup"] = round(rps / result["naive_rps"], 1)
    result["ratio_to_passthrough"] = round(rps / result["passthrough_rps"], 3)
    result["targets"] = {
        "throughput_ge_10k": rps >= TARGET_RPS,
        "throughput_ge_20k_goal": rps >= GOAL_RPS,
        "passthrough_ratio_ge_0_8": result["ratio_to_passthrough"] >= TARGET_PASSTHROUGH_RATIO,
        "speedup_ge_50x": result["speedup"] >= TARGET_SPEEDUP,
        "p99_le_50ms": result["p99_ms"] <= TARGET_P99_MS,
    }
    bars = [v for k, v in result["targets"].items() if k != "throughput_ge_20k_goal"]
    result["targets_met"] = all(bars)


# --- model ---------------------------------------------------------------------------------


def _train_champion(run: _Run) -> str:
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


def _load_bundle(run: _Run) -> ModelBundle:
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


# --- (d) naive baseline --------------------------------------------------------------------


def naive_baseline(bundle: ModelBundle, values: Sequence[bytes]) -> tuple[float, float]:
    """Records/s of a one-at-a-time scorer, and its largest difference from the batch path.

    The per-record path of a typical scikit-learn style service: ``json.loads`` → a one-row
    DataFrame → the encoding → ``xgboost.DMatrix`` → ``Booster.predict`` (what
    ``predict_proba`` does underneath), with the same bundle and one thread like the worker.
    """
    import pandas as pd
    import xgboost as xgb

    from trainer.model.bundle import records_to_columns
    from trainer.model.features import frame_columns

    booster, encoder = bundle.booster, bundle.encoder
    names = booster.feature_names
    offset = bundle.log_class_weight

    def score_one(value: bytes) -> float:
        frame = pd.DataFrame([json.loads(value)])
        matrix = xgb.DMatrix(encoder.encode(frame_columns(frame)), feature_names=names)
        margin = float(booster.predict(matrix, output_margin=True)[0])
        return 1.0 / (1.0 + float(np.exp(-(margin - offset))))

    for value in values[:5]:  # warm-up: first calls pay for lazy imports and allocations
        score_one(value)
    started = time.perf_counter()
    probabilities = [score_one(v) for v in values]
    elapsed = time.perf_counter() - started
    batch = bundle.predict(records_to_columns([json.loads(v) for v in values]))
    diff = float(np.max(np.abs(np.asarray(probabilities) - batch))) if len(values) else 0.0
    return round(len(values) / elapsed, 1), diff


# --- cost share of BatchScorer.process -----------------------------------------------------


class _Null:
    """Stands in for any metric object: every attribute and every call is itself."""

    def __getattr__(self, name: str) -> _Null:
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> _Null:
        return self


class _NullDrift:
    observed = 0

    def update(self, *args: Any) -> None:
        pass

    def feature_psi(self) -> dict[str, float]:
        return {}

    def prediction_psi(self) -> float:
        return 0.0


class _NullProfile:
    """The real profile, except that binning a batch for drift costs nothing."""

    def __init__(self, profile: Any) -> None:
        self._profile = profile

    def __getattr__(self, name: str) -> Any:
        return getattr(self._profile, name)

    def feature_bins(self, *args: Any) -> dict[str, Any]:
        return {}

    def score_bins(self, scores: Any) -> Any:
        return np.empty(0, dtype=np.intp)


@contextlib.contextmanager
def _without_histogram_batches() -> Iterator[None]:
    """Make ``observe_many`` a no-op inside ``stream_worker.scoring.scorer`` (bench only)."""
    from stream_worker.scoring import scorer as scoring

    # setattr, not assignment: mypy rightly says the module does not export the name.
    original = getattr(scoring, "observe_many", None)
    if original is not None:
        setattr(scoring, "observe_many", lambda *args, **kwargs: None)  # noqa: B010
    try:
        yield
    finally:
        if original is not None:
            setattr(scoring, "observe_many", original)  # noqa: B010


def cost_share(
    bundle: ModelBundle, settings: WorkerSettings, values: Sequence[bytes], repeats: int = 80
) -> tuple[float, dict[str, float]]:
    """Records/s of ``BatchScorer.process`` alone, and the share of each part of its time.

    ``decode`` and ``encode_predict`` time the calls ``process`` makes, on their own. ``drift``
    and ``metrics`` are differences: ``process`` as shipped minus ``process`` with the drift
    window (binning, window update, PSI) or every Prometheus update replaced by no-ops, so
    they follow whatever ``process`` does today. ``emit_other`` is the rest: building the
    prediction records, latencies, bookkeeping. Minimum of interleaved repeats.
    """
    from prometheus_client import CollectorRegistry

    from stream_worker.scoring.metrics import ScorerMetrics
    from stream_worker.scoring.scorer import BatchScorer, InputRecord, LoadedModel

    class NoDriftScorer(BatchScorer):
        def drift_for(self, model: LoadedModel) -> Any:
            return _NullDrift()

    def scorer(cls: type[BatchScorer], metrics: ScorerMetrics) -> BatchScorer:
        return cls(metrics, settings.max_record_bytes, settings.drift_window)

    model = LoadedModel(bundle, settings.model_name, "bench", "", "")
    no_drift_model = dataclasses.replace(
        model, bundle=dataclasses.replace(bundle, profile=cast(Any, _NullProfile(bundle.profile)))
    )
    now = time.time()
    records = [InputRecord(None, v, now, "bench", 0, i) for i, v in enumerate(values)]
    full = scorer(BatchScorer, ScorerMetrics(CollectorRegistry()))
    no_drift = scorer(NoDriftScorer, ScorerMetrics(CollectorRegistry()))
    no_metrics = scorer(BatchScorer, cast(ScorerMetrics, _Null()))
    check = full.process(model, records)
    if len(check.predictions) != len(records):
        raise ScorerError(f"micro-benchmark: {len(check.dead_letters)} records dead-lettered")

    def decode() -> None:
        full.decoder.decode_batch(values)

    decoded = full.decoder.decode_batch(values)

    def encode_predict() -> None:
        bundle.predict_encoded(bundle.encoder.codes(decoded.columns()))

    def no_metrics_process() -> None:
        with _without_histogram_batches():
            no_metrics.process(model, records)

    cases: dict[str, Callable[[], Any]] = {
        "full": lambda: full.process(model, records),
        "no_drift": lambda: no_drift.process(no_drift_model, records),
        "no_metrics": no_metrics_process,
        "decode": decode,
        "encode_predict": encode_predict,
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for i in range(repeats + 3):
        names = list(cases)
        names = names[i % len(names) :] + names[: i % len(names)]  # rotate: spread drifts in load
        for name in names:
            started = time.perf_counter()
            cases[name]()
            if i >= 3:  # the first rounds warm caches up
                timings[name].append(time.perf_counter() - started)
    # The fastest of many runs: on a shared machine the noise only ever adds time.
    med = {name: min(ts) for name, ts in timings.items()}
    total = med["full"]
    shares = {
        "decode": med["decode"] / total,
        "encode_predict": med["encode_predict"] / total,
        "drift": max(0.0, total - med["no_drift"]) / total,
        "metrics": max(0.0, total - med["no_metrics"]) / total,
    }
    shares["emit_other"] = max(0.0, 1.0 - sum(shares.values()))
    return round(len(values) / total, 1), {k: round(v, 3) for k, v in shares.items()}


# --- (a), (b) throughput -------------------------------------------------------------------


def throughput_phase(run: _Run, workers: int, profile: Path | None) -> ThroughputResult:
    """N records pre-produced, then ``workers`` worker processes in one group drain them."""
    n = run.opts.records
    tag = "throughput" if workers == 1 else f"throughput{workers}"
    with run.phase_env(tag) as env:
        rate = run.produce(env["SCORER_INPUT_TOPIC"], n)
        run.say(f"    pre-produced {n} records ({rate:,.0f}/s)")
        # Started together so that they join the group in the same generation.
        procs = [run.launch(run.worker(env, f"{tag}-worker-{i}")) for i in range(workers)]
        spy = None
        try:
            for proc in procs:
                proc.wait_ready(START_TIMEOUT)
            if profile is not None:
                spy = _start_profiler(run, procs[0], profile)
            meter = CpuMeter({"broker": run.broker.pid, **{p.name: p.pid for p in procs}})
            _wait_for(lambda: sum(_scored(p) for p in procs), n, procs, "scored", meter.start)
            cpu = meter.stop()
            if spy is not None:
                _stop_profiler(spy)
                spy = None
            rss = [peak_rss_mb(p) for p in procs]
            split = [_scored(p) for p in procs]
        finally:
            if spy is not None:
                _stop_profiler(spy)
            run.stop(*procs)
        stamps, duplicates = read_timestamps(run.bootstrap, env["SCORER_OUTPUT_TOPIC"], n)
    rps, span, first = span_rate(stamps)
    return ThroughputResult(rps, span, first, duplicates, rss, cpu, split)


def passthrough_phase(run: _Run) -> ThroughputResult:
    n = run.opts.records
    with run.phase_env("passthrough") as env:
        rate = run.produce(env["SCORER_INPUT_TOPIC"], n)
        run.say(f"    pre-produced {n} records ({rate:,.0f}/s)")
        proc = run.launch(run.passthrough(env, "passthrough"))
        try:
            proc.wait_ready(START_TIMEOUT)
            meter = CpuMeter({"broker": run.broker.pid, proc.name: proc.pid})
            _wait_for(lambda: _forwarded(proc), n, [proc], "forwarded", meter.start)
            cpu = meter.stop()
            rss = [peak_rss_mb(proc)]
        finally:
            run.stop(proc)
        stamps, duplicates = read_timestamps(run.bootstrap, env["SCORER_OUTPUT_TOPIC"], n)
    rps, span, first = span_rate(stamps)
    return ThroughputResult(rps, span, first, duplicates, rss, cpu)


def span_rate(stamps_ms: Sequence[int]) -> tuple[float, float, int]:
    """``(records/s, span in s, records stamped in the first millisecond)``.

    The span runs from the Kafka timestamp of the first output record to that of the last.
    Those timestamps are set by the worker's producer when it sends, i.e. right after a batch
    is processed, so the span leaves out the consumer-group join and the model load (the
    worker is idle then) and starts when the first batch has been processed. Rate = N / span:
    the work of that first batch (at most ``batch_max`` records, ``first`` reports how many
    were stamped in the first millisecond) falls before the span, so at N = 100,000 the figure
    can overstate by up to ``batch_max / N`` (2 % at the defaults); at small N it is coarse.
    """
    arr = np.asarray(stamps_ms, dtype=np.int64)
    first, last = int(arr.min()), int(arr.max())
    span = max(last - first, 1) / 1000.0
    return round(len(arr) / span, 1), span, int((arr == first).sum())


def _wait_for(
    count: Callable[[], int],
    target: int,
    procs: Sequence[ManagedProcess],
    what: str,
    on_first: Callable[[], None] | None = None,
) -> None:
    """Poll ``count`` (cheap HTTP calls, so the workers keep the CPU) until it reaches target.

    ``on_first`` is called once, when the count first moves from zero.
    """
    last, last_change = -1, time.monotonic()
    while True:
        for proc in procs:
            if not proc.running:
                raise ScorerError(f"{proc.name} exited during the benchmark: {proc.tail()}")
        value = count()
        if value > 0 and on_first is not None:
            on_first()
            on_first = None
        if value >= target:
            return
        now = time.monotonic()
        if value != last:
            last, last_change = value, now
        elif now - last_change > STALL_TIMEOUT:
            raise ScorerError(f"stuck at {value} of {target} {what} for {STALL_TIMEOUT:.0f}s")
        time.sleep(0.25)


class CpuMeter:
    """CPU used by some processes between ``start`` and ``stop``, in cores (1.0 = one core).

    Sampled from the first progress to the end of a phase (0.25 s resolution), so it tells
    whether the worker is CPU-bound (close to 1.0: one Python thread is the wall) or waits.
    """

    def __init__(self, pids: dict[str, int | None]) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid}
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self._procs.items():
            with contextlib.suppress(Exception):
                times = proc.cpu_times()
                out[name] = float(times.user + times.system)
        return out

    def start(self) -> None:
        self._t0, self._start = time.monotonic(), self._sample()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        if not self._start or wall <= 0:
            return {}
        end = self._sample()
        return {
            name: round((end[name] - self._start[name]) / wall, 2)
            for name in end
            if name in self._start
        }


_SCORED = re.compile(r'^scorer_records_total\{outcome="scored"\} ([0-9.e+]+)$', re.MULTILINE)


def _scored(proc: ManagedProcess) -> int:
    text = _get(proc, "/metrics")
    match = _SCORED.search(text) if text else None
    return int(float(match.group(1))) if match else 0


def _forwarded(proc: ManagedProcess) -> int:
    text = _get(proc, "/stats")
    return int(json.loads(text)["forwarded"]) if text else 0


def _get(proc: ManagedProcess, path: str) -> str | None:
    assert proc.ready_url is not None
    url = proc.ready_url.removesuffix("/health") + path
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def _kafka_consumer(bootstrap: str, topic: str, **overrides: Any) -> tuple[Any, list[Any]]:
    """A kafka-python consumer without a group, assigned every partition from the start."""
    from kafka import KafkaConsumer, TopicPartition

    options: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "income-scorer-bench",
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "allow_auto_create_topics": False,
        "fetch_max_bytes": 64 * 1024 * 1024,
        "max_partition_fetch_bytes": 16 * 1024 * 1024,
        "max_poll_records": 20_000,
        **overrides,
    }
    consumer = KafkaConsumer(**options)
    partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    return consumer, tps


def read_timestamps(
    bootstrap: str, topic: str, expected: int, timeout: float = 120.0
) -> tuple[list[int], int]:
    """Kafka timestamps (ms) of the first record of each of ``expected`` keys, and duplicates."""
    consumer, _ = _kafka_consumer(bootstrap, topic)
    stamps: dict[bytes, int] = {}
    total = 0
    deadline = time.monotonic() + timeout
    try:
        while len(stamps) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    total += 1
                    stamps.setdefault(rec.key, rec.timestamp)
    finally:
        consumer.close()
    if len(stamps) < expected:
        raise ScorerError(f"only {len(stamps)} of {expected} records arrived on {topic}")
    return list(stamps.values()), total - len(stamps)


# --- (c) latency ---------------------------------------------------------------------------


class ArrivalClock(threading.Thread):
    """Polls the output topic continuously and notes when each key first arrives."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="bench-arrivals", daemon=True)
        self.bootstrap = bootstrap
        self.topic = topic
        self.arrivals: dict[bytes, float] = {}
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            consumer, tps = _kafka_consumer(self.bootstrap, self.topic, fetch_max_wait_ms=5)
        except BaseException as exc:
            self.error = exc
            self.ready.set()
            return
        try:
            for tp in tps:  # resolve the start offsets now, not when the first record is due
                consumer.position(tp)
            self.ready.set()
            arrivals = self.arrivals
            while not self._stop_event.is_set():
                polled = consumer.poll(timeout_ms=100)
                now = time.time()
                for batch in polled.values():
                    for rec in batch:
                        arrivals.setdefault(rec.key, now)
        except BaseException as exc:
            self.error = exc
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def latency_phase(run: _Run) -> LatencyResult:
    """Offer ``rate`` records/s to a fresh worker; Kafka timestamp in → prediction arrival.

    The producer is a separate process (``stream-worker produce --rate``, i.e.
    ``tools.produce``) so that it does not share this interpreter's GIL with the consumer
    thread that notes arrivals. Input timestamps are read back from the input topic: the
    Kafka timestamp of each input record, set by the producer when it sends.
    """
    opts = run.opts
    total = max(1, round(opts.rate * opts.latency_seconds))
    with run.phase_env("latency") as env:
        proc = run.launch(run.worker(env, "latency-worker"))
        clock = ArrivalClock(run.bootstrap, env["SCORER_OUTPUT_TOPIC"])
        try:
            proc.wait_ready(START_TIMEOUT)
            clock.start()
            clock.ready.wait(60)
            if clock.error is not None:
                raise ScorerError(f"cannot consume {clock.topic}: {clock.error}")
            argv = [console_script("stream-worker"), "produce", "--rate", f"{opts.rate:g}"]
            argv += ["--limit", str(total)]
            log_path = run.logs / "latency-producer.log"
            producer = run.launch(ManagedProcess("latency-producer", argv, None, log_path, env))
            assert producer.process is not None
            code = producer.process.wait(timeout=opts.latency_seconds * 4 + 120)
            run.stop(producer)
            if code != 0:
                raise ScorerError(f"the latency producer failed: {producer.tail()}")
            _wait_for(lambda: len(clock.arrivals), total, [proc], "predictions arrived")
            rss = peak_rss_mb(proc)
        finally:
            clock.stop()
            run.stop(proc)
        sent = _input_timestamps(run.bootstrap, env["SCORER_INPUT_TOPIC"], total)
    latencies = np.asarray(
        [clock.arrivals[k] * 1000.0 - ts for k, ts in sent.items()], dtype=np.float64
    )
    stamps = np.asarray(list(sent.values()), dtype=np.float64)
    achieved = (len(stamps) - 1) / max((stamps.max() - stamps.min()) / 1000.0, 1e-3)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return LatencyResult(
        records=len(latencies),
        achieved_rps=round(float(achieved), 1),
        p50_ms=round(float(p50), 2),
        p95_ms=round(float(p95), 2),
        p99_ms=round(float(p99), 2),
        max_ms=round(float(latencies.max()), 2),
        rss_mb=rss,
    )


def _input_timestamps(bootstrap: str, topic: str, expected: int) -> dict[bytes, int]:
    consumer, _ = _kafka_consumer(bootstrap, topic)
    stamps: dict[bytes, int] = {}
    deadline = time.monotonic() + 120
    try:
        while len(stamps) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for rec in batch:
                    stamps.setdefault(rec.key, rec.timestamp)
    finally:
        consumer.close()
    if len(stamps) < expected:
        raise ScorerError(f"only {len(stamps)} of {expected} input records found on {topic}")
    return stamps


# --- (e) memory, profile, machine ----------------------------------------------------------


def peak_rss_mb(proc: ManagedProcess) -> float:
    """VmHWM (peak resident set) of the process, in MiB; read while it still runs."""
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return round(int(match.group(1)) / 1024.0, 1) if match else 0.0


def _start_profiler(run: _Run, target: ManagedProcess, out: Path) -> ManagedProcess:
    """py-spy on the worker (sampling, non-blocking); the format follows the file suffix."""
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(out.suffix, "raw")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        py_spy = console_script("py-spy")
    except ScorerError as exc:
        raise ScorerError(
            f"--profile needs py-spy: pip install 'income-stream-scorer[dev]' ({exc})"
        ) from exc
    argv = [
        py_spy, "record",
        "--pid", str(target.pid),
        "--output", str(out.resolve()),
        "--format", fmt,
        "--rate", "100",
        "--nonblocking",
    ]  # fmt: skip
    spy = run.launch(ManagedProcess("py-spy", argv, None, run.logs / "py-spy.log"))
    time.sleep(1.0)  # attaching takes a moment
    return spy


def _stop_profiler(spy: ManagedProcess) -> None:
    """SIGINT makes py-spy write its output and exit."""
    if spy.process is not None and spy.running:
        spy.process.send_signal(signal.SIGINT)
        with contextlib.suppress(Exception):
            spy.process.wait(timeout=60)
    spy.stop()


def cpu_info() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


def git_commit(start: Path | None = None) -> str:
    """The checked-out commit, read from ``.git`` (HEAD, refs, packed-refs, then the reflog)."""
    here = (start or Path(__file__)).resolve()
    for folder in [here, *here.parents]:
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: <path>"
            text = git.read_text().strip()
            git = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if git.is_dir():
            return _resolve_head(git)
    return "unknown"


def _resolve_head(git: Path) -> str:
    sha = re.compile(r"^[0-9a-f]{40}$")
    try:
        head = (git / "HEAD").read_text().strip()
    except OSError:
        return "unknown"
    if sha.match(head):
        return head
    ref = head.removeprefix("ref:").strip()
    with contextlib.suppress(OSError):
        value = (git / ref).read_text().strip()
        if sha.match(value):
            return value
    with contextlib.suppress(OSError):
        for line in (git / "packed-refs").read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and sha.match(parts[0]):
                return parts[0]
    with contextlib.suppress(OSError, IndexError):
        last = (git / "logs" / "HEAD").read_text().strip().splitlines()[-1].split()
        if sha.match(last[1]):
            return last[1]
    return "unknown"


# --- output --------------------------------------------------------------------------------


def table(r: dict[str, Any]) -> list[str]:
    t = r["targets"]

    def ok(flag: bool) -> str:
        return "yes" if flag else "NO"

    two = f"{r['two_worker_rps']:,.0f} records/s" if r.get("two_worker_rps") else "skipped"
    shares = ", ".join(f"{k} {v:.0%}" for k, v in r["cost_share"].items())
    rows = [
        ("(a) throughput, one worker", f"{r['throughput_rps']:,.0f} records/s", "≥ 10,000 (goal 20,000)", ok(t["throughput_ge_10k"])),  # noqa: E501
        ("    CPU worker / broker", _cpu(r.get("throughput_cpu_cores")), "", ""),
        ("(b) Faust pass-through", f"{r['passthrough_rps']:,.0f} records/s", "", ""),
        ("    CPU agent / broker", _cpu(r.get("passthrough_cpu_cores")), "", ""),
        ("    ratio to pass-through", f"{r['ratio_to_passthrough']:.2f}×", "≥ 0.8×", ok(t["passthrough_ratio_ge_0_8"])),  # noqa: E501
        ("(d) naive one-record scorer", f"{r['naive_rps']:,.0f} records/s", "", ""),
        ("    speedup over naive", f"{r['speedup']:,.1f}×", "≥ 50×", ok(t["speedup_ge_50x"])),
        ("(c) latency p50 / p95", f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} ms", "", ""),
        ("    latency p99 / max", f"{r['p99_ms']:.1f} / {r['max_ms']:.1f} ms", "p99 ≤ 50 ms", ok(t["p99_le_50ms"])),  # noqa: E501
        ("    offered / achieved", f"{r['offered_rps']:,.0f} / {r['achieved_offered_rps']:,.0f} records/s", "", ""),  # noqa: E501
        ("(e) worker peak RSS", f"{r['worker_rss_mb']:,.0f} MiB", "", ""),
        ("two workers, one group", two, "", ""),
        ("BatchScorer.process alone", f"{r['scoring_only_rps']:,.0f} records/s", "", ""),
        ("decode: msgspec", f"{r['decode_msgspec_rps']:,.0f} records/s", "", ""),
        ("decode: orjson + checks", f"{r['decode_orjson_rps']:,.0f} records/s", "", ""),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    lines = ["", f"records {r['records']:,}  ·  {r['cpu']}  ·  commit {r['commit'][:12]}"]
    lines.append(f"load average {r['load_average_start']} at start, {r['load_average_end']} at end")
    lines.append("")
    for name, value, target, verdict in rows:
        lines.append(f"  {name:<{width}}  {value:>26}  {target:<22} {verdict}")
    lines.append(f"  cost share of process(): {shares}")
    lines.append(f"  all bars met: {ok(r['targets_met'])}")
    return lines


def _cpu(cores: dict[str, float] | None) -> str:
    """``"0.97 / 0.41 cores"``: the phase's own processes, then the broker."""
    if not cores:
        return "n/a"
    own = sum(v for k, v in cores.items() if k != "broker")
    return f"{own:.2f} / {cores.get('broker', 0.0):.2f} cores"
