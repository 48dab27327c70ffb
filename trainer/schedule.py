"""Serve the training flow on a schedule that fires: against a Prefect server with a scheduler.

Prefect starts a deployment's scheduled runs from its server's scheduler service. Without
``PREFECT_API_URL``, ``flow.serve`` talks to the ephemeral API Prefect runs in-process, which
has no scheduler: it registers the deployment and then waits forever ("Cannot schedule flows on
an ephemeral server"). So ``serve_on_schedule`` serves against the server ``PREFECT_API_URL``
names (compose: the ``prefect-server`` service) or, when none is set, against a
``prefect server start`` on 127.0.0.1 that it runs as a child process for as long as it serves,
with its own home and SQLite database in ``TRAINER_PREFECT_HOME``.

The server's scheduler loop (60 s) needs no shortening for short schedules: a new or changed
deployment is picked up within 5 s (Prefect's recent-deployments scheduler) and runs are created
an hour ahead. The runner polls every 10 s and starts runs due in the next 10 s, so only an
interval below 10 s needs a shorter poll.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Self

from trainer.exceptions import TrainerError
from trainer.settings import TrainerSettings

LOOPBACK = "127.0.0.1"
DEPLOYMENT_NAME = "adult-income-scheduled"
#: Prefect's default runner poll (PREFECT_RUNNER_POLL_FREQUENCY), seconds.
RUNNER_POLL_SECONDS = 10
STOP_GRACE_SECONDS = 15.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Schedule:
    """When the flow runs: a cron expression or a fixed interval in seconds, never both."""

    cron: str | None = None
    interval_seconds: float | None = None

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> Schedule:
        """The interval when one is set, else the cron expression (validated)."""
        from croniter import croniter

        if settings.schedule_interval_seconds is not None:
            if "schedule_cron" in settings.model_fields_set:
                raise TrainerError(
                    "a cron expression and an interval are both set (--cron or "
                    "TRAINER_SCHEDULE_CRON, --interval or TRAINER_SCHEDULE_INTERVAL_SECONDS): "
                    "give one"
                )
            return cls(interval_seconds=settings.schedule_interval_seconds)
        if not croniter.is_valid(settings.schedule_cron):
            raise TrainerError(f"not a valid cron expression: {settings.schedule_cron!r}")
        return cls(cron=settings.schedule_cron)

    def serve_arguments(self) -> dict[str, Any]:
        if self.interval_seconds is not None:
            return {"interval": datetime.timedelta(seconds=self.interval_seconds)}
        return {"cron": self.cron}

    def runner_poll_seconds(self) -> int | None:
        """A runner poll shorter than Prefect's default when the interval is shorter than it."""
        if self.interval_seconds is not None and self.interval_seconds < RUNNER_POLL_SECONDS:
            return max(1, int(self.interval_seconds))
        return None

    def __str__(self) -> str:
        if self.interval_seconds is not None:
            return f"every {self.interval_seconds:g} s"
        return f"on cron {self.cron!r}"


class LocalPrefectServer:
    """``prefect server start`` on 127.0.0.1 with its own home and database, as a child process.

    It runs in a session of its own so that a Ctrl-C or SIGTERM for the trainer's process group
    reaches the trainer only: the runner shuts down (pausing its schedule needs the server), then
    ``stop`` ends the server.
    """

    def __init__(self, home: Path, startup_timeout: float) -> None:
        self.home = home.resolve()
        self.startup_timeout = startup_timeout
        self.port = _free_loopback_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.ready = False

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def start(self) -> Self:
        argv = [
            sys.executable, "-m", "prefect", "server", "start",
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--analytics-off",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("wb") as server_log:  # the child keeps its own handle
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,  # never an interactive prompt
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                    env=self._environment(),
                    start_new_session=True,
                )
        except OSError as exc:
            raise TrainerError(
                f"cannot start a local Prefect server in {self.home}: {exc}"
            ) from exc
        try:
            self._wait_healthy(started)
        except BaseException:
            self.stop()
            raise
        self.ready = True
        log.info(
            "local Prefect server (pid %d) ready at %s after %.1f s (log: %s)",
            self.process.pid,
            self.api_url,
            time.monotonic() - started,
            self.log_path,
        )
        return self

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(
            {
                "PREFECT_HOME": str(self.home),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": (
                    f"sqlite+aiosqlite:///{self.home / 'prefect.db'}"
                ),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_UI_ENABLED": "false",
                # No access log line per runner poll; start-up errors are still logged.
                "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
            }
        )
        return env

    def _wait_healthy(self, started: float) -> None:
        assert self.process is not None
        url = f"{self.api_url}/health"
        deadline = started + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise TrainerError(
                    f"the local Prefect server exited with code {code} before it was ready: "
                    f"{self.tail()}"
                )
            if _http_ok(url):
                return
            if time.monotonic() > deadline:
                raise TrainerError(
                    f"the local Prefect server was not ready at {url} after "
                    f"{self.startup_timeout:.0f} s "
                    f"(TRAINER_PREFECT_SERVER_STARTUP_TIMEOUT_SECONDS): {self.tail()}"
                )
            time.sleep(0.5)

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        # Lines with words only: a traceback's ^^^^ markers say nothing in one line.
        kept = [line.strip() for line in text if any(c.isalnum() for c in line)]
        return (" | ".join(kept[-lines:]) or "(empty server log)")[-800:]

    def stop(self) -> None:
        """SIGTERM its process group, SIGKILL after a grace period; signals wait until done."""
        process = self.process
        if process is None:
            return
        # A second Ctrl-C or SIGTERM must not cut this short and leave the server running.
        blocked = {signal.SIGINT, signal.SIGTERM}
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=STOP_GRACE_SECONDS)
                except ProcessLookupError:
                    pass
            if self.ready:  # a failed start says so in its error, in one line
                log.info("local Prefect server stopped")
        finally:
            self.process = None
            self.ready = False
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_on_schedule(
    settings: TrainerSettings, schedule: Schedule, parameters: dict[str, Any]
) -> None:
    """Serve the training flow on ``schedule`` until Ctrl-C or SIGTERM; return after cleanup."""
    with ExitStack() as stack:
        # Until the runner installs its own SIGTERM handler, a SIGTERM must unwind through
        # the ExitStack so the local server is stopped too.
        stack.enter_context(_sigterm_as_interrupt())
        api_url = settings.prefect_api_url
        if api_url is None:
            server = LocalPrefectServer(
                Path(settings.prefect_home), settings.prefect_server_startup_timeout_seconds
            )
            api_url = stack.enter_context(server).api_url
        try:
            _serve(api_url, schedule, parameters)
        except TrainerError:
            raise
        except Exception as exc:  # Prefect itself failed (its server, its API): one line
            first = (str(exc).strip().splitlines() or [""])[0]
            raise TrainerError(
                f"serving the schedule failed: {type(exc).__name__}: {first}"
            ) from exc


def _serve(api_url: str, schedule: Schedule, parameters: dict[str, Any]) -> None:
    prefect_env = {"PREFECT_API_URL": api_url}
    poll = schedule.runner_poll_seconds()
    if poll is not None:
        prefect_env["PREFECT_RUNNER_POLL_FREQUENCY"] = str(poll)
    # Prefect reads its settings from the environment when it is first imported, and the flow
    # runs' processes inherit the environment; a Prefect imported before now has read them
    # already, which the temporary settings cover.
    os.environ.update(prefect_env)
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.settings import temporary_settings

    from trainer.flow import training_flow

    log.info("serving %s/%s %s via %s", training_flow.name, DEPLOYMENT_NAME, schedule, api_url)
    with temporary_settings(updates=prefect_env):
        training_flow.serve(
            name=DEPLOYMENT_NAME,
            parameters=parameters,
            # One training at a time: a run due while the last one still trains is cancelled
            # rather than queued behind it (two fits on two cores would both crawl).
            global_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
            print_starting_message=False,
            **schedule.serve_arguments(),
        )


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _http_ok(url: str) -> bool:
    # No proxy for a loopback address, whatever HTTP_PROXY says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
