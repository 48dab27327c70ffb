"""Processes the demo, the benchmark and the tests start on loopback, and stop by PID.

A ``ManagedProcess`` is a command, a readiness URL and a log file; the factories below build
the MLflow server, Prometheus and worker processes from settings.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from stream_worker.exceptions import ScorerError

LOOPBACK = "127.0.0.1"


class ProcessError(ScorerError):
    """A managed process did not start or stopped unexpectedly."""


def http_text(url: str, timeout: float = 5.0) -> str:
    """The body of a GET on loopback; OSError when it does not answer."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return str(resp.read().decode())


def http_json(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """A JSON object from a GET on loopback; OSError when it does not answer."""
    body = json.loads(http_text(url, timeout))
    return body if isinstance(body, dict) else {}


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return 200 <= int(resp.status) < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class ManagedProcess:
    name: str
    argv: Sequence[str]
    ready_url: str | None
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 60.0) -> Self:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            list(self.argv),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.cwd,
            start_new_session=True,  # its own process group: stop() reaches its children
        )
        if self.ready_url:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        assert self.ready_url is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise ProcessError(f"{self.name} exited early: {self.tail()}")
            if http_ok(self.ready_url):
                return
            time.sleep(0.25)
        raise ProcessError(
            f"{self.name} not ready at {self.ready_url} after {timeout:.0f}s: {self.tail()}"
        )

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])[-800:]

    def kill(self) -> None:
        """SIGKILL the process group: the crash a test of at-least-once needs."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def console_script(name: str) -> str:
    """A console script of this environment (next to the running interpreter)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ProcessError(f"{name} is not installed in this environment")
    return found


def mlflow_server(folder: Path, port: int) -> ManagedProcess:
    """``mlflow server`` on loopback with a SQLite store and a local artifact folder."""
    folder.mkdir(parents=True, exist_ok=True)
    argv = [
        console_script("mlflow"), "server",
        "--host", LOOPBACK,
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination", str(folder / "artifacts"),
        "--serve-artifacts",
        "--workers", "1",
    ]  # fmt: skip
    return ManagedProcess(
        "mlflow", argv, f"http://{LOOPBACK}:{port}/health", folder / "mlflow-server.log"
    )


def prometheus_server(config: Path, folder: Path, port: int) -> ManagedProcess:
    """A real Prometheus (Debian's package) on loopback with the given scrape config."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise ProcessError("prometheus is not installed: apt-get install prometheus")
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'tsdb'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    return ManagedProcess(
        "prometheus", argv, f"http://{LOOPBACK}:{port}/-/ready", folder / "prometheus.log"
    )


def stream_worker_process(
    command: str, port_option: str, env: Mapping[str, str], port: int, log_path: Path
) -> ManagedProcess:
    """``stream-worker COMMAND PORT_OPTION PORT``, ready when its /health answers 200."""
    return ManagedProcess(
        command,
        [console_script("stream-worker"), command, port_option, str(port)],
        f"http://{LOOPBACK}:{port}/health",
        log_path,
        env=dict(env),
    )


def worker_process(env: Mapping[str, str], web_port: int, log_path: Path) -> ManagedProcess:
    """``stream-worker run``; ready when /health says broker and model are up."""
    proc = stream_worker_process("run", "--web-port", env, web_port, log_path)
    proc.name = "worker"
    return proc


def monitor_process(env: Mapping[str, str], port: int, log_path: Path) -> ManagedProcess:
    """``stream-worker monitor`` (capture and registry from ``env``); ready once a
    computation succeeded."""
    return stream_worker_process("monitor", "--port", env, port, log_path)


def capture_process(env: Mapping[str, str], port: int, log_path: Path) -> ManagedProcess:
    """``stream-worker capture`` (broker, topics and capture URI from ``env``); ready once it
    has joined its consumer group."""
    return stream_worker_process("capture", "--port", env, port, log_path)
