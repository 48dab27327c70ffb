"""The native topology runs docker-compose.yml's own commands: only addresses change.

tests/integration/test_topology.py starts what tests/topology.py derives from the compose
file. These checks hold the derivation to that: every argument and environment value equals
the compose one once host names, ports and volume paths are mapped back, so the native run
cannot drift from the file (there is no second copy of any command).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from topology import (
    Adapter,
    Addresses,
    TopologyError,
    assert_native,
    command_of,
    environment_of,
    load_compose,
    mounts,
    prometheus_service,
)

ADAPTED = ("mlflow", "prefect-server", "trainer", "worker-1", "worker-2")


def _adapter(tmp_path: Path) -> tuple[dict, Adapter]:  # type: ignore[type-arg]
    compose = load_compose()
    return compose, Adapter(compose, Addresses(tmp_path), elsewhere={"kafka:9092": "1.2.3.4:9"})


def _back(adapter: Adapter, service: dict, value: str) -> str:  # type: ignore[type-arg]
    """Undo the adaptation: loopback ports to compose host:port, folders to mount points."""
    for (host, port), native in adapter.addresses.ports.items():
        value = value.replace(f"127.0.0.1:{native}", f"{host}:{port}")
        value = value if value != str(native) else str(port)
    value = value.replace("1.2.3.4:9", "kafka:9092")
    for kind, source, target in mounts(service):
        if kind == "volume" and source in adapter.addresses.volumes:
            value = value.replace(str(adapter.addresses.volumes[source]), target)
    return value


def test_adapted_commands_are_the_compose_commands_up_to_addresses(tmp_path: Path) -> None:
    compose, adapter = _adapter(tmp_path)
    for name in ADAPTED:
        spec = compose["services"][name]
        native = adapter.service(name)
        assert [_back(adapter, spec, a) for a in native.argv] == [
            a.replace("0.0.0.0", "127.0.0.1") for a in command_of(spec)
        ], name
        assert {k: _back(adapter, spec, v) for k, v in native.env.items()} == {
            k: v.replace("0.0.0.0", "127.0.0.1") for k, v in environment_of(spec).items()
        }, name
    assert_native([adapter.service(name) for name in ADAPTED], compose)


def test_mlflow_keeps_its_postgresql_backend_and_served_artifacts(tmp_path: Path) -> None:
    _, adapter = _adapter(tmp_path)
    argv = adapter.service("mlflow").argv
    backend = argv[argv.index("--backend-store-uri") + 1]
    port = adapter.addresses.ports[("postgres", 5432)]
    assert re.fullmatch(
        rf"postgresql\+psycopg2://mlflow:mlflow@127\.0\.0\.1:{port}/mlflow", backend
    )
    assert "--serve-artifacts" in argv
    destination = Path(argv[argv.index("--artifacts-destination") + 1])
    assert destination == tmp_path / "volumes" / "mlflow-artifacts"


def test_prometheus_scrapes_the_native_workers(tmp_path: Path) -> None:
    compose, adapter = _adapter(tmp_path)
    workers = {name: adapter.service(name) for name in ("worker-1", "worker-2")}
    prom = prometheus_service(compose, adapter, tmp_path, running=set(workers))
    config = (tmp_path / "prometheus-config" / "prometheus.yml").read_text()
    for worker in workers.values():
        assert f"127.0.0.1:{worker.env['SCORER_WEB_PORT']}" in config
        assert worker.ready_url == f"http://127.0.0.1:{worker.env['SCORER_WEB_PORT']}/health"
    assert "worker-1" not in config
    assert any(a.startswith("--web.listen-address=127.0.0.1:") for a in prom.argv)
    assert (tmp_path / "prometheus-config" / "alerts.yml").exists()  # rule_files resolve


def test_a_compose_host_left_over_fails_the_run(tmp_path: Path) -> None:
    compose, adapter = _adapter(tmp_path)
    svc = adapter.service("worker-1")
    svc.env["MLFLOW_TRACKING_URI"] = "http://mlflow:5000"
    with pytest.raises(TopologyError, match="compose host 'mlflow'"):
        assert_native([svc], compose)


def test_missing_postgresql_fails_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import topology

    monkeypatch.setattr(topology.glob, "glob", lambda pattern: [])
    with pytest.raises(TopologyError, match=r"apt-get install postgresql"):
        topology.postgres_bin()
