"""One benchmark run: its options, its broker, fresh topics per phase and every process.

Everything runs on loopback and is started here; every process is stopped by PID when the
run ends, whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_worker.devtools.bench.offer import offer
from stream_worker.devtools.broker import LocalBroker, free_port
from stream_worker.devtools.processes import (
    LOOPBACK,
    ManagedProcess,
    console_script,
    worker_process,
)
from stream_worker.exceptions import ScorerError
from stream_worker.runtime.admin import delete_topics, ensure_topics
from stream_worker.settings import WorkerSettings

Say = Callable[[str], None]

PARTITIONS = 6


@dataclass(frozen=True)
class BenchOptions:
    records: int = 100_000
    rate: float = 2000.0
    latency_seconds: float = 15.0
    naive_records: int = 2000
    two_workers: bool = True
    capture: bool = True
    tracking_uri: str | None = None
    #: ``quick``, ``default`` or ``models:/NAME@ALIAS``; None: ``default``, or the champion of
    #: ``tracking_uri`` when one is given (see :mod:`.model`).
    model: str | None = None
    #: Offered rates of the latency curve (``N%``: of the process's measured maximum).
    curve_rates: str = "1000,2000,5000,10000,80%"
    #: Run the traced worker for the per-stage latency breakdown.
    breakdown: bool = True
    json_path: Path = Path("bench/latest.json")
    workdir: Path = Path(".bench")
    profile: Path | None = None


class BenchRun:
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
        self.model_name = self.settings.model_name
        self.model_alias = self.settings.model_alias
        self.records: list[dict[str, Any]] = []
        #: The fastest flat-out pre-produce of the run (records/s): what one producer process
        #: can offer here, so the latency curve never asks a producer for more.
        self.producer_rps = 0.0

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def close(self) -> None:
        for proc in reversed(self.started):
            with contextlib.suppress(Exception):
                proc.stop()
        self.broker.stop()

    @contextlib.contextmanager
    def phase_env(self, tag: str) -> Iterator[dict[str, str]]:
        """Fresh topics and a fresh consumer group for one phase; the topics are deleted after."""
        run = uuid.uuid4().hex[:12]
        kinds = ("applicants", "predictions", "dlq", "outcomes", "outcomes-dlq")
        topics = [f"bench-{tag}-{kind}-{run}" for kind in kinds]
        ensure_topics(self.bootstrap, topics, PARTITIONS)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "SCORER_MODEL_NAME": self.model_name,
            "SCORER_MODEL_ALIAS": self.model_alias,
            "SCORER_INPUT_TOPIC": topics[0],
            "SCORER_OUTPUT_TOPIC": topics[1],
            "SCORER_DLQ_TOPIC": topics[2],
            "SCORER_OUTCOMES_TOPIC": topics[3],
            "SCORER_OUTCOMES_DLQ_TOPIC": topics[4],
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

    def forwarder(self, env: dict[str, str], name: str) -> ManagedProcess:
        """The raw aiokafka forwarder (:mod:`..forwarder`), input to output unchanged."""
        port = free_port()
        return ManagedProcess(
            name,
            [console_script("stream-worker"), "forward", "--web-port", str(port)],
            f"http://{LOOPBACK}:{port}/health",
            self.logs / f"{name}.log",
            env=dict(env),
        )

    def traced_worker(self, env: dict[str, str], name: str) -> ManagedProcess:
        """``stream-worker run`` with per-stage timestamps on a sample (:mod:`.trace`)."""
        port = free_port()
        return ManagedProcess(
            name,
            [sys.executable, "-m", "stream_worker.devtools.bench.trace", "--web-port", str(port)],
            f"http://{LOOPBACK}:{port}/health",
            self.logs / f"{name}.log",
            env=dict(env),
        )

    def capture(self, env: dict[str, str], name: str) -> ManagedProcess:
        """``stream-worker capture`` into a fresh folder of the workdir, its own group."""
        port = free_port()
        phase_env = {
            **env,
            "SCORER_CAPTURE_URI": str(self.work / "capture" / env["SCORER_APP_ID"]),
            "SCORER_CAPTURE_GROUP": f"{env['SCORER_APP_ID']}-capture",
        }
        return ManagedProcess(
            name,
            [console_script("stream-worker"), "capture", "--port", str(port)],
            f"http://{LOOPBACK}:{port}/health",
            self.logs / f"{name}.log",
            env=phase_env,
        )

    def stop(self, *procs: ManagedProcess) -> None:
        for proc in procs:
            proc.stop()
            if proc in self.started:
                self.started.remove(proc)

    def produce(self, topic: str, n: int) -> float:
        """Send ``n`` of the run's records to ``topic`` flat out (the latency phases' producer,
        :mod:`.offer`, in this process); the rate achieved."""
        rate = asyncio.run(offer(self.bootstrap, topic, 0.0, n, records=self.records))
        self.producer_rps = max(self.producer_rps, rate)
        return rate
