"""``stream-worker``: run the broker, the worker, the replay/tail tools, the benchmark, the demo."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from stream_worker.exceptions import ScorerError
from stream_worker.settings import WorkerSettings
from trainer.cliutil import run_cli

app = typer.Typer(
    help="Score applicant records from Kafka. Every option can also be set with its "
    "environment variable: KAFKA_BOOTSTRAP_SERVERS, MLFLOW_TRACKING_URI, SCORER_*.",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
)

BootstrapOpt = Annotated[
    str | None, typer.Option("--bootstrap", help="Kafka bootstrap [env: KAFKA_BOOTSTRAP_SERVERS]")
]
TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]"),
]


def settings_from(**overrides: Any) -> WorkerSettings:
    return WorkerSettings(**{k: v for k, v in overrides.items() if v is not None})


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for noisy in ("alembic", "mlflow", "urllib3", "kafka", "aiokafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def broker(
    port: Annotated[int, typer.Option(min=1, max=65535, help="port on 127.0.0.1")] = 9092,
    log_file: Annotated[Path | None, typer.Option(help="broker output file")] = None,
    durable: Annotated[
        bool,
        typer.Option(
            help="keep topics, records and offsets in S3 (moto's S3 server on 127.0.0.1) "
            "instead of memory; a broker process that dies is started again on them"
        ),
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="with --durable: record moto's requests here and replay them at start, so "
            "the data outlives this command too"
        ),
    ] = None,
) -> None:
    """Start the embedded Tansu broker on 127.0.0.1 and keep it running until interrupted."""
    from stream_worker.devtools.broker import DurableStorage, LocalBroker

    if data_dir is not None and not durable:
        raise typer.BadParameter("--data-dir needs --durable", param_hint="'--data-dir'")
    storage = DurableStorage(data_dir) if durable else None
    local = LocalBroker(port=port, log_path=log_file, storage=storage)
    local.start()
    where = f"; storage {storage.storage_engine} at {storage.endpoint}" if storage else ""
    if storage is not None and data_dir is not None:
        where += f", recorded in {storage.recording}"
    typer.echo(f"Tansu broker ready at {local.bootstrap} (pid {local.pid}){where}; Ctrl-C stops it")
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        restarted, backoff = float("-inf"), 10.0  # seconds
        while True:
            while local.running and (storage is None or storage.running):
                time.sleep(0.5)
            if storage is not None and not storage.running:
                raise ScorerError(
                    "the S3 storage (moto) exited unexpectedly: " + storage.output_tail()
                )
            # A durable broker that died is started again on its storage; one that dies
            # again right away is not.
            if storage is None or time.monotonic() - restarted < backoff:
                raise ScorerError("the broker exited unexpectedly: " + local.output_tail())
            typer.echo(f"Tansu broker pid {local.pid} exited; starting it again", err=True)
            local.restart()
            restarted = time.monotonic()
            typer.echo(f"Tansu broker ready again at {local.bootstrap} (pid {local.pid})")
    finally:
        local.stop()


@app.command()
def run(
    web_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="[env: SCORER_WEB_PORT]")
    ] = None,
    bootstrap: BootstrapOpt = None,
    tracking_uri: TrackingOpt = None,
    batch_max: Annotated[int | None, typer.Option(min=1, help="[env: SCORER_BATCH_MAX]")] = None,
    batch_window: Annotated[
        float | None, typer.Option(min=0.001, help="seconds [env: SCORER_BATCH_WINDOW_SECONDS]")
    ] = None,
) -> None:
    """Run the scoring worker (creates the topics first if they are missing)."""
    settings = settings_from(
        web_port=web_port,
        kafka_bootstrap_servers=bootstrap,
        mlflow_tracking_uri=tracking_uri,
        batch_max=batch_max,
        batch_window_seconds=batch_window,
    )
    from stream_worker.runtime.worker import run_worker

    setup_logging(settings.log_level)
    run_worker(settings)


@app.command()
def produce(
    rate: Annotated[float, typer.Option(min=0, help="records per second, 0 = flat out")] = 0.0,
    limit: Annotated[int | None, typer.Option(min=1, help="records to send")] = None,
    start: Annotated[
        int, typer.Option(min=0, help="skip this many first; beyond the split, ids get -rN")
    ] = 0,
    synthetic: Annotated[bool, typer.Option(help="synthetic applicants, not adult.test")] = False,
    drift: Annotated[bool, typer.Option(help="shift age, hours, marital status, gains")] = False,
    seed: Annotated[int, typer.Option()] = 0,
    outcomes: Annotated[
        bool, typer.Option(help="later, send each record's true label to the outcomes topic")
    ] = False,
    outcome_delay: Annotated[
        float, typer.Option(min=0, help="seconds from a record to its outcome")
    ] = 5.0,
    outcome_fraction: Annotated[
        float, typer.Option(min=0, max=1, help="share of records that ever get an outcome")
    ] = 1.0,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Replay the bundled test split (or synthetic applicants) into the input topic."""
    from stream_worker.devtools import replay as tools
    from stream_worker.runtime.admin import ensure_topics

    if synthetic and outcomes:
        raise typer.BadParameter(
            "synthetic applicants have no true label; --outcomes needs the adult.test replay",
            param_hint="'--outcomes'",
        )
    settings = settings_from(kafka_bootstrap_servers=bootstrap)
    setup_logging("warning")
    plan = (
        tools.OutcomePlan(settings.outcomes_topic, outcome_delay, outcome_fraction, seed)
        if outcomes
        else None
    )
    records = tools.synthetic_records(limit or 10000, seed) if synthetic else tools.test_records()
    if drift:
        records = tools.apply_drift(records, seed)
    ensure_topics(
        settings.kafka_bootstrap_servers,
        settings.topics(),
        settings.topic_partitions,
        security=settings.kafka_security,
    )
    stats = tools.produce(
        settings.kafka_bootstrap_servers,
        settings.input_topic,
        records,
        rate=rate,
        limit=limit,
        outcomes=plan,
        start=start,
        security=settings.kafka_security,
    )
    typer.echo(
        f"sent {stats.sent} records to {settings.input_topic} in {stats.seconds:.1f}s "
        f"({stats.sent / max(stats.seconds, 1e-9):,.0f}/s)"
        + (f", {stats.outcomes} outcomes to {settings.outcomes_topic}" if plan else "")
    )


@app.command()
def capture(
    bootstrap: BootstrapOpt = None,
    capture_uri: Annotated[
        str | None,
        typer.Option(help="capture folder or fsspec URI [env: SCORER_CAPTURE_URI]"),
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="[env: SCORER_CAPTURE_PORT]")
    ] = None,
) -> None:
    """Archive applicants, predictions and outcomes as Parquet (own consumer group)."""
    settings = settings_from(
        kafka_bootstrap_servers=bootstrap, capture_uri=capture_uri, capture_port=port
    )
    from stream_worker.capture.archiver import run_capture

    setup_logging(settings.log_level)
    run_capture(settings)


@app.command()
def consume(
    limit: Annotated[int | None, typer.Option(min=1, help="stop after N predictions")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="stop after S seconds of silence")] = 10.0,
    quiet: Annotated[bool, typer.Option(help="summary only")] = False,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Tail the predictions topic; for replayed test records, report accuracy on known labels."""
    from stream_worker.devtools import replay as tools

    settings = settings_from(kafka_bootstrap_servers=bootstrap)
    setup_logging("warning")
    labels = {r["applicant_id"]: r["_label"] for r in tools.test_records()}

    def show(pred: dict[str, Any]) -> None:
        if not quiet:
            typer.echo(json.dumps(pred))

    summary = tools.consume(
        settings.kafka_bootstrap_servers,
        settings.output_topic,
        limit=limit,
        timeout=timeout,
        labels=labels,
        on_record=show,
        security=settings.kafka_security,
    )
    acc = f"{summary.accuracy:.4f}" if summary.accuracy is not None else "n/a"
    typer.echo(
        f"{summary.predictions} predictions, {summary.unique_ids} applicants, "
        f"accuracy on {summary.labelled} labelled: {acc}, versions: {summary.versions}"
    )


@app.command()
def monitor(
    capture_uri: Annotated[
        str | None,
        typer.Option(help="capture folder or fsspec URI [env: SCORER_CAPTURE_URI]"),
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="[env: SCORER_MONITOR_PORT]")
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="seconds between recomputations [env: SCORER_MONITOR_INTERVAL_SECONDS]"
        ),
    ] = None,
    tracking_uri: TrackingOpt = None,
) -> None:
    """Live performance per model version from the capture; Prometheus metrics and /health."""
    settings = settings_from(
        capture_uri=capture_uri,
        monitor_port=port,
        monitor_interval_seconds=interval,
        mlflow_tracking_uri=tracking_uri,
    )
    from stream_worker.monitor.service import run_monitor

    setup_logging(settings.log_level)
    run_monitor(settings)


@app.command()
def demo(
    trials: Annotated[int, typer.Option(min=1, help="Optuna trials for the demo model")] = 5,
    limit: Annotated[int | None, typer.Option(min=1, help="records to replay (all 16,281)")] = None,
    workdir: Annotated[Path, typer.Option(help="logs, stores and data of the run")] = Path(".demo"),
    keep_running: Annotated[bool, typer.Option(help="leave everything running")] = False,
) -> None:
    """End to end on loopback: broker, MLflow, train, worker, Prometheus, replay, summary."""
    from stream_worker.devtools.demo import DemoOptions, run_demo

    setup_logging("warning")
    run_demo(
        DemoOptions(workdir=workdir, trials=trials, limit=limit, keep_running=keep_running),
        typer.echo,
    )


@app.command()
def bench(
    records: Annotated[int, typer.Option(min=1, help="pre-produced records for (a), (b)")] = 100000,
    rate: Annotated[float, typer.Option(min=1, help="records/s offered in (c)")] = 2000.0,
    latency_seconds: Annotated[float, typer.Option(min=0.1, help="duration of (c)")] = 15.0,
    naive_records: Annotated[int, typer.Option(min=1, help="records for (d)")] = 2000,
    two_workers: Annotated[bool, typer.Option(help="repeat (a) with two workers")] = True,
    capture: Annotated[
        bool, typer.Option(help="repeat (a) with the capture process alongside")
    ] = True,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow store: alone, its champion is benched; with --model models:/NAME@ALIAS, "
            "that model"
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="quick (one trial), default (trainer run's defaults, production size, cached "
            "by a content key in the workdir) or models:/NAME@ALIAS [default: default]"
        ),
    ] = None,
    curve_rates: Annotated[
        str,
        typer.Option(help="offered rates of the latency curve; N% = share of the measured max"),
    ] = "1000,2000,5000,10000,80%",
    breakdown: Annotated[
        bool, typer.Option(help="per-stage latency breakdown with a traced worker")
    ] = True,
    json_path: Annotated[Path, typer.Option("--json", help="result file")] = Path(
        "bench/latest.json"
    ),
    workdir: Annotated[Path, typer.Option(help="logs and stores of the run")] = Path(".bench"),
    profile: Annotated[
        Path | None, typer.Option(help="py-spy the worker in (a): .svg, .json or raw text")
    ] = None,
) -> None:
    """Benchmark on loopback: throughput, baselines (Faust pass-through, raw forwarder, naive
    scorer), latency curve and breakdown, RSS."""
    from stream_worker.devtools.bench.runner import BenchOptions, run_bench

    setup_logging("warning")
    run_bench(
        BenchOptions(
            records=records,
            rate=rate,
            latency_seconds=latency_seconds,
            naive_records=naive_records,
            two_workers=two_workers,
            capture=capture,
            tracking_uri=tracking_uri,
            model=model,
            curve_rates=curve_rates,
            breakdown=breakdown,
            json_path=json_path,
            workdir=workdir,
            profile=profile,
        ),
        typer.echo,
    )


@app.command()
def chaos(
    scenario: Annotated[
        list[str] | None,
        typer.Option(help="run only these (repeatable; default all, see docs/reliability.md)"),
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="result file")] = None,
    markdown: Annotated[
        Path | None, typer.Option(help="write the report here (docs/reliability.md)")
    ] = None,
    duration: Annotated[float, typer.Option(min=10, help="seconds of load per scenario")] = 40.0,
    rate: Annotated[float, typer.Option(min=10, help="records/s offered")] = 400.0,
    seed: Annotated[int, typer.Option(help="seeds the poison mix and the kill points")] = 10,
    workdir: Annotated[Path, typer.Option(help="logs and stores of the run")] = Path(".chaos"),
) -> None:
    """Chaos suite on loopback: kills, SIGTERM, scaling, broker and registry outages, broken
    versions, oversize and poison traffic under steady load; counts lost and duplicates."""
    from stream_worker.devtools.chaos import ChaosOptions, run_chaos

    setup_logging("warning")
    result = run_chaos(
        ChaosOptions(
            scenarios=scenario or (),
            seconds=duration,
            rate=rate,
            seed=seed,
            json_path=json_path,
            markdown_path=markdown,
            workdir=workdir,
        ),
        typer.echo,
    )
    if not result["passed"]:
        raise ScorerError("chaos: at least one scenario failed its checks (see the report)")


@app.command(hidden=True)
def passthrough(
    web_port: Annotated[int | None, typer.Option(min=1, max=65535)] = None,
) -> None:
    """A Faust agent that forwards records unscored (the benchmark's framework ceiling)."""
    from stream_worker.devtools.passthrough import run_passthrough

    settings = settings_from(web_port=web_port)
    setup_logging(settings.log_level)
    run_passthrough(settings)


@app.command(hidden=True)
def forward(
    web_port: Annotated[int, typer.Option(min=1, max=65535, help="/health and /stats port")],
) -> None:
    """A raw aiokafka forwarder, input to output unchanged (the benchmark's client ceiling)."""
    from stream_worker.devtools.forwarder import run_forwarder

    settings = settings_from()
    setup_logging(settings.log_level)
    run_forwarder(settings, web_port)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure ends as one readable line and a non-zero exit code."""
    return run_cli(app, "stream-worker", argv, (ScorerError,))


if __name__ == "__main__":
    sys.exit(main())
