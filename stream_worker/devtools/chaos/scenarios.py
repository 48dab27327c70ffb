"""The scenarios of issue 10: each one a fault injected into real processes under steady load.

A scenario starts its workers, starts the load and the output tail, runs its fault at points
of the load's duration, waits until every acknowledged record has an output (or the drain
timeout), checks /health, and counts (:func:`.tally.count`) against its duplicate bound.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from stream_worker.devtools.broker import LocalBroker, free_port
from stream_worker.devtools.chaos import stack as chaos_stack
from stream_worker.devtools.chaos.load import LoadGenerator, LoadPlan, OutputTail, input_keys
from stream_worker.devtools.chaos.stack import ModelVersions, Say, ScenarioStack
from stream_worker.devtools.chaos.tally import (
    DuplicateBound,
    Figures,
    count,
    first_version_after,
    handover_failures,
)
from stream_worker.devtools.processes import ManagedProcess, mlflow_server

#: The workers' dead-letter value limit (WorkerSettings.dlq_max_value_bytes, default).
DLQ_MAX_VALUE_BYTES = 1_000_000
#: Seconds to wait, after the load ends, for every acknowledged record to come out.
DRAIN_SECONDS = 90.0
#: ... or until no new output has come for this long (a stuck worker).
STALL_SECONDS = 15.0
#: Seconds a new version may take to serve once the registry answers (poll, download, smoke test).
SWAP_SECONDS = 45.0


@dataclass
class RunResources:
    """What the scenarios of one run share: the memory broker, the store, options."""

    folder: Path
    broker: LocalBroker
    versions: ModelVersions
    rate: float
    seconds: float
    poison_fraction: float
    seed: int
    say: Say


@dataclass
class Scenario:
    """A fault and what to expect of it."""

    name: str
    title: str
    workers: int
    fault: Callable[[Context], None]
    bound: Callable[[RunResources], DuplicateBound]
    plan: Callable[[LoadPlan], LoadPlan] = lambda plan: plan
    #: its own broker on durable storage (a broker restart) or its own registry server
    durable_broker: bool = False
    registry_server: bool = False


@dataclass
class Context:
    """What a fault function works with; it appends the fault moments and extra checks."""

    res: RunResources
    stack: ScenarioStack
    load: LoadGenerator
    tail: OutputTail
    broker: LocalBroker
    faults: list[float] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    registry: ManagedProcess | None = None
    registry_uri: str = ""

    def at(self, share: float) -> None:
        """Sleep until ``share`` of the load's duration has passed."""
        due = self.load.started_at + share * self.res.seconds
        time.sleep(max(due - time.monotonic(), 0.0))

    def fault(self) -> float:
        now = time.monotonic()
        self.faults.append(now)
        return now


# --- faults --------------------------------------------------------------------------------


def kill_one_of_two(ctx: Context) -> None:
    ctx.at(0.35)
    ctx.fault()
    ctx.stack.workers[1].kill()
    ctx.notes.append("worker-1 SIGKILLed; worker-0 takes its partitions after the session timeout")


def sigterm_one_of_two(ctx: Context) -> None:
    ctx.at(0.35)
    ctx.fault()
    leaving = ctx.stack.workers[1]
    leaving.stop(grace=30)
    code = leaving.process.returncode if leaving.process else None
    ctx.notes.append(f"worker-1 SIGTERMed, exit status {code}")


def scale_one_three_one(ctx: Context) -> None:
    ctx.at(0.2)
    ctx.fault()
    ctx.stack.start_workers(2)
    ctx.at(0.6)
    ctx.fault()
    for proc in ctx.stack.workers[1:3]:
        proc.stop(grace=30)
    ctx.notes.append("1 worker, 2 joined at 20 % of the load, both SIGTERMed at 60 %")


def repeated_kills(ctx: Context) -> None:
    rng = np.random.default_rng(ctx.res.seed)
    moments = sorted(float(x) for x in rng.uniform(0.15, 0.7, size=3))
    for i, share in enumerate(moments):
        ctx.at(share)
        candidates = [w for w in ctx.stack.running if w.ready_url]
        victim = candidates[int(rng.integers(len(candidates)))]
        ctx.fault()
        victim.kill()
        ctx.notes.append(f"kill {i + 1} at {share:.0%}: {victim.name}")
        ctx.stack.start_workers(1)  # the replacement joins (a rebalance on top of the kill)


def broker_restart(ctx: Context) -> None:
    ctx.at(0.35)
    ctx.fault()
    took = ctx.broker.restart()
    ctx.notes.append(f"broker kill -9 and restart on S3 storage: answering again after {took:.1f}s")


def registry_down_during_promotion(ctx: Context) -> None:
    assert ctx.registry is not None
    ctx.at(0.25)
    ctx.fault()
    ctx.registry.kill()
    new = ctx.res.versions.copy_of_good
    ctx.res.versions.promote(new, ctx.registry_uri)
    ctx.notes.append(f"mlflow server killed, version {new} promoted in its store meanwhile")
    ctx.at(0.5)
    ctx.registry.start(timeout=120)
    back = time.monotonic()
    deadline = back + SWAP_SECONDS
    while time.monotonic() < deadline and not _all_serve(ctx, new):
        time.sleep(0.5)
    loaded = time.monotonic()
    ctx.checks[f"version {new} serves once the registry is back"] = _all_serve(ctx, new)
    early = [v for t, v in ctx.tail.observed.timeline if v == new and t < back]
    ctx.checks[f"version {ctx.res.versions.good} kept serving while it was down"] = not early
    firsts = first_version_after(ctx.tail.observed.timeline, back)
    ctx.notes.append(
        f"registry answering again {back - ctx.faults[0]:.1f}s after the kill; version {new} "
        f"loaded {loaded - back:.1f}s later"
        + (f", first predicted {firsts[new] - back:.1f}s after" if new in firsts else "")
    )


def _all_refuse(ctx: Context, version: str) -> bool:
    infos = [ctx.stack.model_info(w) for w in ctx.stack.running]
    refused = [info.get("refused_versions") for info in infos]
    return bool(infos) and all(isinstance(r, dict) and version in r for r in refused)


def _all_serve(ctx: Context, version: str) -> bool:
    infos = [ctx.stack.model_info(w) for w in ctx.stack.running]
    return bool(infos) and all(str(info.get("version")) == version for info in infos)


def _refused_version(ctx: Context, version: str, what: str) -> None:
    good = ctx.res.versions.good
    ctx.at(0.3)
    ctx.fault()
    ctx.res.versions.promote(version)
    ctx.notes.append(f"version {version} ({what}) promoted at 30 % of the load")
    deadline = time.monotonic() + SWAP_SECONDS
    while time.monotonic() < deadline and not _all_refuse(ctx, version):
        time.sleep(0.5)
    ctx.at(0.9)
    bad = ctx.tail.observed.versions.get(version, 0)
    ctx.checks[f"version {version} never predicted"] = bad == 0
    ctx.checks[f"version {version} refused by every worker"] = _all_refuse(ctx, version)
    serving = {str(ctx.stack.model_info(w).get("version")) for w in ctx.stack.running}
    ctx.checks[f"version {good} still serving"] = serving == {good}
    ctx.res.versions.promote(good)


def cannot_predict(ctx: Context) -> None:
    _refused_version(ctx, ctx.res.versions.cannot_predict, "non-finite scores")


def profile_misfit(ctx: Context) -> None:
    _refused_version(ctx, ctx.res.versions.profile_misfit, "drift profile one bin short")


def no_fault(ctx: Context) -> None:
    """Traffic faults only (the plan carries them): nothing is done to the processes."""


# --- bounds --------------------------------------------------------------------------------


def _crashes(n: int, retries: int = 0, why: str = "") -> Callable[[RunResources], DuplicateBound]:
    def bound(res: RunResources) -> DuplicateBound:
        return DuplicateBound(n, retries, res.rate, chaos_stack.BATCH_MAX, why)

    return bound


def _none(why: str) -> Callable[[RunResources], DuplicateBound]:
    return lambda res: DuplicateBound(why=why)


KILL_WHY = "per kill: 1 s of traffic (commit interval) + 2 batches in flight"

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("kill9", "kill -9 of one of two workers", 2, kill_one_of_two,
                 _crashes(1, why=KILL_WHY)),
        Scenario("sigterm", "SIGTERM of one of two workers", 2, sigterm_one_of_two,
                 _none("SIGTERM drains and commits before leaving: 0")),
        Scenario("scale", "scale 1 → 3 → 1 workers mid-stream", 1, scale_one_three_one,
                 _none("rebalances drain and commit before partitions move: 0")),
        Scenario("kill9x3", "three kill -9 at seeded random points", 2, repeated_kills,
                 _crashes(3, why=f"3 kills, {KILL_WHY}")),
        Scenario("broker_restart", "broker kill -9 + restart on durable storage", 2,
                 broker_restart,
                 _crashes(1, 1, "deliveries cut once (1 s + 2 batches) + one produce retry (1 s)"),
                 durable_broker=True),
        Scenario("registry_down", "registry (mlflow server) down during a promotion", 1,
                 registry_down_during_promotion,
                 _none("the model swap happens between batches: 0"), registry_server=True),
        Scenario("cannot_predict", "promoted version that cannot predict", 1, cannot_predict,
                 _none("refused by the smoke test, nothing redone: 0")),
        Scenario("profile_misfit", "promoted version whose drift profile does not fit", 1,
                 profile_misfit, _none("refused by the smoke test, nothing redone: 0")),
        Scenario("oversize", "flood of oversize records (1.1–1.9 MB)", 1, no_fault,
                 _none("record faults only: 0"),
                 plan=lambda p: replace(p, oversize_rate=max(2.0, p.rate / 100))),
        Scenario("poison50", "50 % poison traffic", 1, no_fault, _none("record faults only: 0"),
                 plan=lambda p: replace(p, poison_fraction=0.5)),
    )
}  # fmt: skip


#: The workers' fetch wait on the durable broker (SCORER_FETCH_MAX_WAIT_MS).
DURABLE_FETCH_MAX_WAIT_MS = 500

# --- running one -----------------------------------------------------------------------------


def run_scenario(scenario: Scenario, res: RunResources) -> Figures:
    """Run one scenario on fresh topics; its figures (the processes are stopped after)."""
    began = time.monotonic()
    folder = res.folder / scenario.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with contextlib.ExitStack() as cleanup:
        broker = res.broker
        if scenario.durable_broker:
            broker = chaos_stack.start_broker(folder, durable=True)
            cleanup.callback(broker.stop)
        res.versions.promote(res.versions.good)
        registry, tracking = None, res.versions.uri
        if scenario.registry_server:
            registry, tracking = _registry(folder, res.versions)
            cleanup.callback(registry.stop)
        stack = ScenarioStack(scenario.name, broker.bootstrap, tracking, folder)
        if scenario.durable_broker:
            # Tansu's S3 engine answers the default 10 ms fetch wait empty (README, --durable).
            stack.env["SCORER_FETCH_MAX_WAIT_MS"] = str(DURABLE_FETCH_MAX_WAIT_MS)
        cleanup.callback(stack.close)
        res.say(f"[{scenario.name}] {scenario.title}: starting {scenario.workers} worker(s)")
        stack.start_workers(scenario.workers)
        plan = scenario.plan(
            LoadPlan(
                res.rate, res.seconds, res.poison_fraction, seed=res.seed, prefix=scenario.name
            )
        )
        tail = OutputTail(broker.bootstrap, stack.output_topic, stack.dlq_topic)
        tail.start()
        cleanup.callback(tail.halt)
        load = LoadGenerator(broker.bootstrap, stack.input_topic, plan, records())
        load.start()
        cleanup.callback(load.halt)
        while not load.started_at:
            time.sleep(0.01)
        ctx = Context(res, stack, load, tail, broker, registry=registry)
        if registry is not None:
            ctx.registry_uri = _store_uri(folder)
        scenario.fault(ctx)
        load.join()
        if plan.oversize_rate:
            _oversize_checks(ctx, plan)
        _drain(load, tail)
        healthy = stack.healthy()
        tail.halt()
        tail.join(timeout=10)
        produced = load.produced
        total = len(produced.valid) + len(produced.poison)
        keys = input_keys(broker.bootstrap, stack.input_topic, total)
        for err, who in ((load.error, "load generator"), (tail.error, "output tail")):
            if err is not None:
                ctx.notes.append(f"{who} failed: {type(err).__name__}: {err}")
                ctx.checks[f"{who} ran to the end"] = False
        bound = scenario.bound(res)
        failed = handover_failures([_log_text(w.log_path) for w in stack.workers])
        if failed:  # README: a drain that times out, a refused commit: redone as after a kill
            ctx.notes.append(
                f"{failed} failed handover(s) in the worker logs (abandoned drain or refused "
                "commit): each is allowed what a kill -9 is"
            )
            bound = replace(
                bound,
                crashes=bound.crashes + failed,
                rate=bound.rate or res.rate,
                batch_max=bound.batch_max or chaos_stack.BATCH_MAX,
                why=f"{bound.why}; plus {failed} failed handover(s) logged, each as a kill -9",
            )
        figures = count(
            scenario.name,
            produced,
            tail.observed,
            input_keys=keys,
            faults=ctx.faults,
            healthy_after=healthy,
            bound=bound,
            extra_checks=ctx.checks,
        )
        figures.notes = ctx.notes
        figures.seconds = round(time.monotonic() - began, 1)
        verdict = "pass" if figures.passed else "FAIL"
        res.say(
            f"[{scenario.name}] {verdict}: lost {figures.lost}, duplicates {figures.duplicates} "
            f"(bound {figures.duplicate_bound}), valid dead-lettered "
            f"{figures.valid_dead_lettered}, recovery {figures.recovery_seconds}s"
        )
        return figures


def _log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _oversize_checks(ctx: Context, plan: LoadPlan) -> None:
    big = [k for k in ctx.load.produced.poison if "-big-" in k]
    low, high = plan.oversize_bytes
    ctx.notes.append(f"{len(big)} oversize records of {low:,}–{high:,} bytes among the poison")
    ctx.checks["dead letters cut to SCORER_DLQ_MAX_VALUE_BYTES"] = (
        0 < ctx.tail.observed.largest_dead_letter <= DLQ_MAX_VALUE_BYTES
    )


_RECORDS: list[dict[str, Any]] = []


def records() -> list[dict[str, Any]]:
    """adult.test as applicant records (loaded once per process)."""
    if not _RECORDS:
        from stream_worker.devtools import replay

        _RECORDS.extend(replay.test_records())
    return _RECORDS


def _drain(load: LoadGenerator, tail: OutputTail) -> None:
    """Until every acknowledged record has an output, the output stalls for STALL_SECONDS, or
    DRAIN_SECONDS pass."""
    want = set(load.produced.valid) | set(load.produced.poison)
    deadline = time.monotonic() + DRAIN_SECONDS
    seen, moved = 0, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - moved < STALL_SECONDS:
        got = tail.snapshot()
        if want <= got:
            break
        if len(got) > seen:
            seen, moved = len(got), time.monotonic()
        time.sleep(0.5)
    time.sleep(2.0)  # late duplicates arrive too


def _store_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'registry' / 'mlflow.db'}"


def _registry(folder: Path, versions: ModelVersions) -> tuple[ManagedProcess, str]:
    """An ``mlflow server`` on a copy of the run's store (artifacts stay where they are)."""
    store = folder / "registry"
    store.mkdir(parents=True)
    shutil.copy2(versions.uri.removeprefix("sqlite:///"), store / "mlflow.db")
    port = free_port()
    server = mlflow_server(store, port)
    server.start(timeout=120)
    return server, f"http://127.0.0.1:{port}"
