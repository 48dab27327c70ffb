"""The phases that run worker processes: (a) throughput, (b) pass-through and the raw
forwarder, and (a) again with the capture process archiving alongside; the pieces the
latency phases (:mod:`.latency`) share: the arrival clock, read-back and percentiles.

Each phase gets fresh topics and its own consumer group (:meth:`BenchRun.phase_env`).
Progress is read from the processes' own HTTP endpoints (cheap, so they keep the CPU);
figures come from Kafka timestamps read back after the phase.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stream_worker.devtools.bench.context import BenchRun
from stream_worker.devtools.bench.profiler import profiling
from stream_worker.devtools.bench.sysinfo import CpuMeter, peak_rss_mb
from stream_worker.devtools.processes import ManagedProcess
from stream_worker.devtools.replay import assigned_consumer
from stream_worker.exceptions import ScorerError

START_TIMEOUT = 180.0  # seconds for a worker to load its model and join its group
STALL_TIMEOUT = 60.0  # seconds without progress before a phase is declared stuck
READ_BACK_TIMEOUT = 120.0  # seconds to read a phase's records back from a topic

#: Progress of one process: records it has handled so far.
Progress = Callable[[ManagedProcess], int]


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
class CaptureResult:
    rps: float  # the worker's throughput with the capture running alongside
    span_s: float
    archive_s: float  # from the worker's first prediction until everything was archived
    tail_s: float  # from the worker's last prediction until everything was archived
    cpu: dict[str, float]


@dataclass
class LatencyResult:
    records: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    rss_mb: float


# --- (a), (b) throughput -------------------------------------------------------------------


def throughput_phase(run: BenchRun, workers: int, profile: Path | None) -> ThroughputResult:
    """N records pre-produced, then ``workers`` worker processes in one group drain them."""
    tag = "throughput" if workers == 1 else f"throughput{workers}"

    def start(env: dict[str, str]) -> list[ManagedProcess]:
        return [run.launch(run.worker(env, f"{tag}-worker-{i}")) for i in range(workers)]

    return _drain(run, tag, start, scored, "scored", profile)


def passthrough_phase(run: BenchRun) -> ThroughputResult:
    """The same N records through the Faust pass-through agent (:mod:`..passthrough`)."""

    def start(env: dict[str, str]) -> list[ManagedProcess]:
        return [run.launch(run.passthrough(env, "passthrough"))]

    return _drain(run, "passthrough", start, forwarded, "forwarded", None)


def forwarder_phase(run: BenchRun) -> ThroughputResult:
    """The same N records through the raw aiokafka forwarder (:mod:`...forwarder`)."""

    def start(env: dict[str, str]) -> list[ManagedProcess]:
        return [run.launch(run.forwarder(env, "forwarder"))]

    return _drain(run, "forwarder", start, forwarded, "forwarded", None)


def _drain(
    run: BenchRun,
    tag: str,
    start: Callable[[dict[str, str]], list[ManagedProcess]],
    progress: Progress,
    what: str,
    profile: Path | None,
) -> ThroughputResult:
    """Pre-produce N records, start the processes together, wait until they have handled N."""
    n = run.opts.records
    with run.phase_env(tag) as env:
        rate = run.produce(env["SCORER_INPUT_TOPIC"], n)
        run.say(f"    pre-produced {n} records ({rate:,.0f}/s)")
        # Started together so that they join the group in the same generation.
        procs = start(env)
        try:
            for proc in procs:
                proc.wait_ready(START_TIMEOUT)
            with profiling(run, procs[0], profile):
                meter = CpuMeter({"broker": run.broker.pid, **{p.name: p.pid for p in procs}})
                wait_for(lambda: sum(map(progress, procs)), n, procs, what, meter.start)
                cpu = meter.stop()
            rss = [peak_rss_mb(p.pid) for p in procs]
            split = [progress(p) for p in procs]
        finally:
            run.stop(*procs)
        stamps, duplicates = first_timestamps(run.bootstrap, env["SCORER_OUTPUT_TOPIC"], n)
    rps, span, first = span_rate(list(stamps.values()))
    return ThroughputResult(rps, span, first, duplicates, rss, cpu, split)


def capture_phase(run: BenchRun) -> CaptureResult:
    """(a) again, the same N records, with ``stream-worker capture`` on the same broker.

    The capture archives the input and the output topic (2 N rows); the phase ends when both
    are in its files (its ``capture_rows_total``), which includes its last flush.
    """
    n = run.opts.records
    with run.phase_env("capture") as env:
        rate = run.produce(env["SCORER_INPUT_TOPIC"], n)
        run.say(f"    pre-produced {n} records ({rate:,.0f}/s)")
        worker = run.launch(run.worker(env, "capture-worker"))
        capture = run.launch(run.capture(env, "capture"))
        procs = [worker, capture]
        try:
            for proc in procs:
                proc.wait_ready(START_TIMEOUT)
            pids = {"broker": run.broker.pid, worker.name: worker.pid, capture.name: capture.pid}
            meter = CpuMeter(pids)
            wait_for(lambda: scored(worker), n, procs, "scored", meter.start)
            wait_for(lambda: archived(capture), 2 * n, procs, "rows archived")
            done = time.time()
            cpu = meter.stop()
        finally:
            run.stop(*procs)
        stamps, _ = first_timestamps(run.bootstrap, env["SCORER_OUTPUT_TOPIC"], n)
    rps, span, _ = span_rate(list(stamps.values()))
    first, last = min(stamps.values()) / 1000.0, max(stamps.values()) / 1000.0
    return CaptureResult(rps, span, round(done - first, 2), round(max(done - last, 0.0), 2), cpu)


def span_rate(stamps_ms: Sequence[int]) -> tuple[float, float, int]:
    """``(records/s, span in s, records stamped in the first millisecond)``.

    The span runs from the Kafka timestamp of the first output record to that of the last.
    Those timestamps are set by the worker's producer when it sends, i.e. right after a batch
    is processed, so the span leaves out the consumer-group join and the model load (the
    worker is idle then) and starts when the first batch has been processed. Rate = N / span:
    the work of that first batch (at most ``batch_max`` records, ``first`` reports how many
    were stamped in the first millisecond) falls before the span, so the figure can overstate
    by up to ``batch_max / N``; at small N it is coarse.
    """
    arr = np.asarray(stamps_ms, dtype=np.int64)
    first, last = int(arr.min()), int(arr.max())
    span = max(last - first, 1) / 1000.0
    return round(len(arr) / span, 1), span, int((arr == first).sum())


# --- progress ------------------------------------------------------------------------------


def wait_for(
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


_SCORED = re.compile(r'^scorer_records_total\{outcome="scored"\} ([0-9.e+]+)$', re.MULTILINE)


def scored_in(metrics_text: str) -> int:
    """``scorer_records_total{outcome="scored"}`` from a Prometheus exposition (0 if absent)."""
    match = _SCORED.search(metrics_text)
    return int(float(match.group(1))) if match else 0


def scored(proc: ManagedProcess) -> int:
    """Records a worker has scored so far (its ``/metrics``)."""
    text = _get(proc, "/metrics")
    return scored_in(text) if text else 0


def forwarded(proc: ManagedProcess) -> int:
    """Records the pass-through agent or the forwarder has forwarded so far (``/stats``)."""
    text = _get(proc, "/stats")
    return int(json.loads(text)["forwarded"]) if text else 0


_ARCHIVED = re.compile(
    r'^capture_rows_total\{kind="(?:applicants|predictions)"\} ([0-9.e+]+)$', re.MULTILINE
)


def archived_in(metrics_text: str) -> int:
    """Applicant plus prediction rows the capture has written (its ``capture_rows_total``)."""
    return sum(int(float(v)) for v in _ARCHIVED.findall(metrics_text))


def archived(proc: ManagedProcess) -> int:
    """Rows a capture process has archived so far (its ``/metrics``)."""
    text = _get(proc, "/metrics")
    return archived_in(text) if text else 0


def _get(proc: ManagedProcess, path: str) -> str | None:
    assert proc.ready_url is not None
    url = proc.ready_url.removesuffix("/health") + path
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


# --- reading a phase back ------------------------------------------------------------------


def first_timestamps(
    bootstrap: str, topic: str, expected: int, timeout: float = READ_BACK_TIMEOUT
) -> tuple[dict[bytes, int], int]:
    """Kafka timestamp (ms) of the first record of each of ``expected`` keys, and duplicates.

    Raises ScorerError when fewer than ``expected`` keys arrive within ``timeout``.
    """
    consumer, _ = assigned_consumer(
        bootstrap,
        topic,
        client_id="income-scorer-bench",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        max_poll_records=20_000,
    )
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
    return stamps, total - len(stamps)


# --- (c) latency ---------------------------------------------------------------------------


class ArrivalClock(threading.Thread):
    """Polls the output topic continuously and notes when (wall clock) each key first arrives.

    Not :func:`first_timestamps`: that reads Kafka timestamps after the fact; this notes the
    moment a prediction reaches a consumer, while the phase runs. An aiokafka consumer
    without a group (every partition assigned by hand, 5 ms fetch wait) on its own event
    loop in this thread: an instrument, so the fastest client here (:mod:`.offer`).
    """

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
            asyncio.run(self._consume())
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()

    async def _consume(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="income-scorer-bench",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=5,
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            if not tps:
                raise ScorerError(f"topic {self.topic} has no partitions")
            consumer.assign(tps)
            for tp in tps:  # resolve the start offsets now, not when the first record is due
                await consumer.position(tp)
            self.ready.set()
            arrivals = self.arrivals
            while not self._stop_event.is_set():
                polled = await consumer.getmany(timeout_ms=100)
                now = time.time()
                for batch in polled.values():
                    for rec in batch:
                        arrivals.setdefault(rec.key, now)
        finally:
            await consumer.stop()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)


def latency_figures(
    sent_ms: Mapping[bytes, int], arrived_s: Mapping[bytes, float], rss_mb: float
) -> LatencyResult:
    """Percentiles of arrival − send per key, and the rate the producer achieved.

    ``sent_ms``: Kafka timestamps (ms) of the input records; ``arrived_s``: wall-clock time
    (s) each key's prediction reached the consumer. The achieved rate is the records after
    the first divided by the time from the first send to the last.
    """
    latencies = np.asarray(
        [arrived_s[k] * 1000.0 - ts for k, ts in sent_ms.items()], dtype=np.float64
    )
    stamps = np.asarray(list(sent_ms.values()), dtype=np.float64)
    achieved = (len(stamps) - 1) / max((stamps.max() - stamps.min()) / 1000.0, 1e-3)
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
    return LatencyResult(
        records=len(latencies),
        achieved_rps=round(float(achieved), 1),
        p50_ms=round(float(p50), 2),
        p95_ms=round(float(p95), 2),
        p99_ms=round(float(p99), 2),
        max_ms=round(float(latencies.max()), 2),
        rss_mb=rss_mb,
    )
