"""docker-compose.yml's services as native processes on loopback: the same commands, adapted.

No Docker engine runs here, so the production topology runs from the compose file itself: each
service's ``command:`` and ``environment:`` are read from docker-compose.yml (the only source)
and adapted mechanically, nothing retyped:

- compose host names (``postgres:5432``, ``mlflow:5000``, ``kafka:9092``, ...) become
  ``127.0.0.1:<free port>``; a service's published container port becomes its free port;
- ``0.0.0.0`` becomes ``127.0.0.1`` (traffic stays on loopback);
- a named volume's mount point becomes a folder of the run;
- ``${VAR:-default}`` takes its default, as ``docker compose`` with no .env file does.

Images with no command of ours are started the way their image does it: PostgreSQL by initdb
and pg_ctl from Debian's packages (the image's POSTGRES_USER/PASSWORD/DB and its mounted init
scripts), Prometheus from Debian's package with the compose command and the mounted
configuration, its scrape targets rewritten the same way. Whatever the adaptation leaves
pointing at a compose host name fails the run (:func:`assert_native`).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import LOOPBACK, ManagedProcess, console_script

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
INTERPOLATION = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}")
PROMETHEUS_PORT = 9090  # the prom/prometheus image's listen port
POSTGRES_PORT = 5432  # the postgres image's port, which the compose URIs name


class TopologyError(AssertionError):
    """The compose file cannot be run natively as it stands (or a native part is missing)."""


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    with path.open(encoding="utf-8") as f:
        return dict(yaml.safe_load(f))  # merge keys (<<: *worker) resolved by PyYAML


def resolve(value: str) -> str:
    return INTERPOLATION.sub(r"\1", value)


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): resolve("" if v is None else str(v)) for k, v in env.items()}


def command_of(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command") or []
    return [
        resolve(str(part))
        for part in (shlex.split(command) if isinstance(command, str) else command)
    ]


def container_ports(service: Mapping[str, Any]) -> list[int]:
    """The container side of each published port (``127.0.0.1:6067:6066`` -> 6066)."""
    return [int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports") or []]


def healthcheck_url(service: Mapping[str, Any]) -> str | None:
    """The URL the service's compose health check fetches, if it fetches one."""
    test = " ".join(map(str, (service.get("healthcheck") or {}).get("test") or []))
    found = re.search(r"https?://[^'\"\s]+", test)
    return found.group(0) if found else None


@dataclass
class Addresses:
    """The loopback address of every compose host:port, and the folder of every volume."""

    folder: Path
    ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, port) -> port
    volumes: dict[str, Path] = field(default_factory=dict)

    def port(self, service: str, container_port: int) -> int:
        key = (service, container_port)
        if key not in self.ports:
            self.ports[key] = free_port()
        return self.ports[key]

    def volume(self, name: str) -> Path:
        if name not in self.volumes:
            path = self.folder / "volumes" / name
            path.mkdir(parents=True, exist_ok=True)
            self.volumes[name] = path
        return self.volumes[name]


@dataclass
class NativeService:
    """One compose service adapted: its argv, its environment, where it answers when ready."""

    name: str
    argv: list[str]
    env: dict[str, str]
    ready_url: str | None

    def process(self, folder: Path, extra_env: Mapping[str, str] | None = None) -> ManagedProcess:
        return ManagedProcess(
            self.name,
            self.argv,
            self.ready_url,
            folder / f"{self.name}.log",
            env={**self.env, **(extra_env or {})},
            cwd=folder,
        )


class Adapter:
    """Rewrites a service's strings from the compose network to loopback."""

    def __init__(
        self,
        compose: Mapping[str, Any],
        addresses: Addresses,
        elsewhere: Mapping[str, str] | None = None,
    ) -> None:
        self.services: dict[str, Any] = dict(compose["services"])
        self.addresses = addresses
        # compose "host:port" -> an address of a service not started here (the Kafka broker)
        self.elsewhere = dict(elsewhere or {})

    def host_port(self, host: str, port: int) -> str:
        if f"{host}:{port}" in self.elsewhere:
            return self.elsewhere[f"{host}:{port}"]
        return f"{LOOPBACK}:{self.addresses.port(host, port)}"

    def text(self, service: str, value: str) -> str:
        # host:port of another service (or of this one), then bare host names in URLs
        def swap(match: re.Match[str]) -> str:
            host, port = match.group(1), int(match.group(2))
            return self.host_port(host, port) if host in self.services else match.group(0)

        value = re.sub(r"(?<![\w.-])([a-z][\w-]*):(\d{2,5})\b", swap, value)
        value = value.replace("0.0.0.0", LOOPBACK)
        for kind, source, target in mounts(self.services[service]):
            if kind == "volume" and (value == target or value.startswith(target + "/")):
                value = str(self.addresses.volume(source)) + value[len(target) :]
        return value

    def service(self, name: str) -> NativeService:
        spec = self.services[name]
        own = container_ports(spec)
        argv = [self.text(name, part) for part in command_of(spec)]
        env = {k: self.text(name, v) for k, v in environment_of(spec).items()}
        # The service's own listening port: `--port 5000`, `SCORER_WEB_PORT: "6066"`.
        for port in own:
            native = str(self.addresses.port(name, port))
            argv = [native if part == str(port) else part for part in argv]
            env = {k: native if v == str(port) else v for k, v in env.items()}
        url = healthcheck_url(spec)
        if url is not None:
            for port in own:
                url = url.replace(f"127.0.0.1:{port}/", f"{self.host_port(name, port)}/")
        return NativeService(name, argv, env, url)


def mounts(service: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
            yield ("bind" if source.startswith((".", "/", "~")) else "volume"), source, target
        else:
            yield volume["type"], volume.get("source", ""), volume["target"]


def assert_native(services: Sequence[NativeService], compose: Mapping[str, Any]) -> None:
    """Nothing left that only resolves inside the compose network or a container."""
    hosts = set(compose["services"])
    for svc in services:
        for value in [*svc.argv, *svc.env.values(), svc.ready_url or ""]:
            for host in hosts:
                name = re.escape(host)
                if re.search(rf"(?<![\w.-]){name}:\d|//{name}(?=/|$)", value):
                    raise TopologyError(f"{svc.name}: {value!r} still names compose host {host!r}")
            if "0.0.0.0" in value:
                raise TopologyError(f"{svc.name}: {value!r} listens beyond loopback")


# ------------------------------------------------------------------------------ postgres


def postgres_bin() -> Path:
    """Debian's PostgreSQL binaries (the newest installed major version)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if not found:
        raise TopologyError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): "
            "apt-get install postgresql (.ci/run does)"
        )
    return Path(found[-1]).parent


@dataclass
class Postgres:
    """The compose ``postgres`` service as Debian's server: its user, password, database and
    init scripts, on a free loopback port, run by an unprivileged user."""

    user: str
    password: str
    database: str
    init_scripts: list[Path]
    port: int
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="topology-pg-")))
    started: bool = False

    @classmethod
    def from_compose(cls, compose: Mapping[str, Any], addresses: Addresses) -> Postgres:
        spec = compose["services"]["postgres"]
        env = environment_of(spec)
        scripts = [
            ROOT / source
            for kind, source, target in mounts(spec)
            if kind == "bind" and target.startswith("/docker-entrypoint-initdb.d/")
        ]
        return cls(
            env["POSTGRES_USER"],
            env["POSTGRES_PASSWORD"],
            env.get("POSTGRES_DB", env["POSTGRES_USER"]),
            scripts,
            addresses.port("postgres", POSTGRES_PORT),
        )

    def _as_owner(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run a server binary as the data folder's owner (PostgreSQL refuses to run as root)."""
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)

    def start(self) -> Postgres:
        binaries = postgres_bin()
        data = self.folder / "data"
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise TopologyError("no 'postgres' user: apt-get install postgresql") from exc
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        steps = [
            # As the image's entrypoint: POSTGRES_USER is the superuser, password auth over TCP.
            [str(binaries / "initdb"), "-D", str(data), "-U", self.user, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8"],
            [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(self.folder / "postgres.log"),
             "-w", "-t", "60", "start", "-o",
             f"-p {self.port} -c listen_addresses={LOOPBACK} -k {self.folder}"],
        ]  # fmt: skip
        for argv in steps:
            done = self._as_owner(argv, timeout=120)
            if done.returncode != 0:
                raise TopologyError(f"{Path(argv[0]).name} failed: {done.stdout}{done.stderr}")
            if "pg_ctl" in argv[0]:
                self.started = True
        self.psql("postgres", f'CREATE DATABASE "{self.database}"')
        for script in self.init_scripts:  # /docker-entrypoint-initdb.d/*.sql, in the database
            self.psql(self.database, file=script)
        return self

    def psql(self, database: str, command: str | None = None, file: Path | None = None) -> str:
        """Run SQL over TCP with the compose user and password (as the services connect)."""
        argv = [str(postgres_bin() / "psql"), "-v", "ON_ERROR_STOP=1", "-h", LOOPBACK,
                "-p", str(self.port), "-U", self.user, "-d", database, "-At"]  # fmt: skip
        if file is not None:
            argv += ["-f", str(file)]
        else:
            argv += ["-c", str(command)]
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "PGPASSWORD": self.password},
        )
        if done.returncode != 0:
            raise TopologyError(f"psql {database}: {done.stderr.strip()}")
        return done.stdout

    def stop(self) -> None:
        if self.started:
            self._as_owner(
                [str(postgres_bin() / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "fast",
                 "-w", "stop"],
                timeout=60,
            )  # fmt: skip
            self.started = False
        shutil.rmtree(self.folder, ignore_errors=True)


# ---------------------------------------------------------------------------- prometheus


def prometheus_service(
    compose: Mapping[str, Any],
    adapter: Adapter,
    folder: Path,
    running: set[str],
    scrape_interval: str = "2s",
) -> NativeService:
    """The compose ``prometheus`` command with its mounted configuration adapted to loopback:
    targets of the services that run here rewritten, jobs of the others left out, and a short
    scrape interval so a test need not wait 15 s for a sample."""
    spec = compose["services"]["prometheus"]
    config_dir = folder / "prometheus-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    mounted = {target: ROOT / source for kind, source, target in mounts(spec) if kind == "bind"}
    argv: list[str] = [shutil.which("prometheus") or "prometheus"]
    for arg in command_of(spec):
        option, _, value = arg.partition("=")
        for target, source in mounted.items():
            if value == target or value.startswith(target + "/"):
                copy = config_dir / Path(value).relative_to(target)
                if option == "--config.file":
                    shutil.copytree(source, config_dir, dirs_exist_ok=True)
                    value = str(copy)
        if option == "--storage.tsdb.path":
            value = str(folder / "prometheus-data")
        argv.append(f"{option}={value}" if value else option)
    port = adapter.addresses.port("prometheus", PROMETHEUS_PORT)
    argv.append(f"--web.listen-address={LOOPBACK}:{port}")  # the image listens on :9090
    config_file = Path(next(a for a in argv if a.startswith("--config.file=")).split("=", 1)[1])
    config = yaml.safe_load(config_file.read_text())
    config["global"]["scrape_interval"] = scrape_interval
    kept = []
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        hosts = {t.rsplit(":", 1)[0] for t in targets}
        if hosts == {"localhost"}:  # Prometheus itself
            job["static_configs"] = [{"targets": [f"{LOOPBACK}:{port}"]}]
        elif hosts <= running:
            job["static_configs"] = [{"targets": [adapter.text("prometheus", t) for t in targets]}]
        else:
            continue
        kept.append(job)
    config["scrape_configs"] = kept
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return NativeService("prometheus", argv, {}, f"http://{LOOPBACK}:{port}/-/ready")


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def project_console_script(argv: list[str]) -> list[str]:
    """The command with the project's (and MLflow's, Prefect's) console script of this venv."""
    return [console_script(argv[0]), *argv[1:]]
