"""``trainer``: run the training flow, serve it on a schedule, inspect and move the champion."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from trainer.cliutil import run_cli
from trainer.exceptions import TrainerError
from trainer.settings import DataSource, TrainerSettings

app = typer.Typer(
    help="Train, register and promote the Adult income model. Every option can also be set "
    "with its TRAINER_* environment variable (MLFLOW_TRACKING_URI for the store).",
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    no_args_is_help=True,
)

TrackingOpt = Annotated[
    str | None,
    typer.Option("--tracking-uri", help="MLflow tracking URI [env: MLFLOW_TRACKING_URI]"),
]


def _settings(**overrides: Any) -> TrainerSettings:
    return TrainerSettings(**_overrides(**overrides))


class _LogFormatter(logging.Formatter):
    """Log lines without tracebacks for the failures the CLI reports itself in one line.

    Prefect logs a failed task or flow with its traceback; for a ``TrainerError`` (bad data,
    unreachable registry) that is noise above the one readable line that ends the run.
    Unexpected exceptions keep their traceback.
    """

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info and isinstance(record.exc_info[1], TrainerError)):
            return super().format(record)
        # Prefect's own API handler may already have cached the traceback text on the record.
        cached = record.exc_text
        record.exc_text = None
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's API name
        if ei and isinstance(ei[1], TrainerError):
            return ""
        return super().formatException(ei)


def _setup(settings: TrainerSettings) -> None:
    from trainer.registry import configure_http_client

    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    for noisy in ("alembic", "mlflow", "httpx", "prefect"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # "Retrying ..." before the real error
    configure_http_client()


def _overrides(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@app.command()
def run(
    trials: Annotated[
        int | None, typer.Option(min=1, help="Optuna trials [env: TRAINER_TRIALS]")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(min=1, help="tuning budget, seconds [env: TRAINER_TIMEOUT_SECONDS]"),
    ] = None,
    source: Annotated[
        DataSource | None, typer.Option(help="bundled snapshot or live UCI [env: TRAINER_SOURCE]")
    ] = None,
    tracking_uri: TrackingOpt = None,
    capture_uri: Annotated[
        str | None,
        typer.Option(
            "--capture-uri",
            help="also train and evaluate on the labelled capture at this folder or fsspec URI "
            "[env: TRAINER_CAPTURE_URI]",
        ),
    ] = None,
    no_flow: Annotated[
        bool, typer.Option("--no-flow", help="run the steps without Prefect")
    ] = False,
    result_json: Annotated[
        Path | None, typer.Option(help="also write the outcome (version, metrics) to this file")
    ] = None,
) -> None:
    """Run the training flow once: tune, evaluate, register, gate, promote.

    Evaluation is on adult.test; with a capture, on the part of it training never saw plus the
    newest labelled captured rows (the champion is scored on the same rows).
    """
    overrides = _overrides(
        trials=trials,
        timeout_seconds=timeout,
        source=source,
        mlflow_tracking_uri=tracking_uri,
        capture_uri=capture_uri,
    )
    settings = _settings(**overrides)
    _setup(settings)
    if no_flow:
        from trainer.pipeline import run_once

        outcome = run_once(settings)
        result = {
            "run_id": outcome.run_id,
            "version": outcome.version,
            "promoted": outcome.decision.passed,
            "reason": outcome.decision.reason,
            "metrics": outcome.metrics,
        }
    else:
        # Prefect's own INFO chatter (temporary server, run names) would bury the result and
        # the one-line error; its warnings and errors still show. Read when prefect loads.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        from trainer.flow import training_flow

        flow_overrides = {
            k: (v.value if isinstance(v, DataSource) else v) for k, v in overrides.items()
        }
        try:
            result = training_flow(flow_overrides)
        except TrainerError:
            raise
        except Exception as exc:  # Prefect itself failed (its server, its state): one line too
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TrainerError(f"the training flow failed: {type(exc).__name__}: {first}") from exc
    text = json.dumps(result, indent=2, sort_keys=True)
    if result_json is not None:
        result_json.write_text(text)
    typer.echo(text)


@app.command()
def schedule(
    cron: Annotated[
        str | None,
        typer.Option(help='cron expression, e.g. "0 3 * * *" [env: TRAINER_SCHEDULE_CRON]'),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="a fixed interval in seconds instead of the cron expression "
            "[env: TRAINER_SCHEDULE_INTERVAL_SECONDS]",
        ),
    ] = None,
    trials: Annotated[
        int | None, typer.Option(min=1, help="Optuna trials [env: TRAINER_TRIALS]")
    ] = None,
) -> None:
    """Serve the training flow on a schedule (Prefect ``flow.serve``) until stopped.

    Against the Prefect server PREFECT_API_URL names, else a local one started on 127.0.0.1
    for as long as this runs (its home: TRAINER_PREFECT_HOME).
    """
    import click

    from trainer.schedule import Schedule, serve_on_schedule

    if cron is not None and interval is not None:
        raise click.UsageError("--cron and --interval exclude each other: give one of them")
    settings = _settings(schedule_cron=cron, schedule_interval_seconds=interval, trials=trials)
    plan = Schedule.from_settings(settings)
    _setup(settings)
    serve_on_schedule(settings, plan, parameters={"overrides": _overrides(trials=trials)})


@app.command()
def models(tracking_uri: TrackingOpt = None) -> None:
    """List registered versions with their aliases, gate outcome and key metrics."""
    registry = _registry(tracking_uri)
    rows = registry.versions()
    if not rows:
        typer.echo(f"no versions of {registry.name} yet")
        return
    typer.echo(
        f"{'version':>7} {'alias':<10} {'gate':<9} "
        f"{'roc_auc':>8} {'acc@0.5':>8} {'f1':>7} {'thresh':>7}"
    )
    for r in rows:
        typer.echo(
            f"{r['version']:>7} {r['aliases'] or '-':<10} {r['gate'] or '-':<9} "
            f"{_fmt(r['test_roc_auc']):>8} {_fmt(r['test_accuracy_at_0_5']):>8} "
            f"{_fmt(r['test_f1']):>7} {_fmt(r['threshold']):>7}"
        )


@app.command()
def promote(version: str, tracking_uri: TrackingOpt = None) -> None:
    """Give the serving alias to VERSION (bypasses the gate: a deliberate human decision)."""
    registry = _registry(tracking_uri)
    registry.promote(version, "promoted by hand")
    typer.echo(f"{registry.name} version {version} is now @{registry.alias}")


@app.command()
def rollback(tracking_uri: TrackingOpt = None) -> None:
    """Move the serving alias back to the previous champion."""
    registry = _registry(tracking_uri)
    version = registry.rollback()
    typer.echo(f"{registry.name} @{registry.alias} rolled back to version {version}")


def _registry(tracking_uri: str | None) -> Any:
    from trainer.registry import Registry, connect

    settings = _settings(mlflow_tracking_uri=tracking_uri)
    _setup(settings)
    return Registry(
        connect(settings.mlflow_tracking_uri), settings.model_name, settings.model_alias
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    """Entry point: every failure ends as one readable line and a non-zero exit code."""
    # OpenMP threads (XGBoost's, when n_jobs > 1) spin-wait between parallel sections by
    # default. When anything else wants the same cores (the worker: this is a 2-core machine)
    # the spinning threads starve each other and a fit gets many times slower (timings:
    # docs/decisions.md).
    # Passive waiting is slower on an idle machine but never pathological. It must be set
    # before xgboost is first imported, which the commands below do lazily.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Prefect's temporary server migrates its database on first start: 20 s, its default
    # patience, is not enough on a busy 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    # A self-hosted service does not report usage to vendors unless asked to.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return run_cli(app, "trainer", argv, (TrainerError,))


if __name__ == "__main__":
    sys.exit(main())
