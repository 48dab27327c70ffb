"""Static checks of the production stack: compose file, Dockerfile, Grafana and Prometheus.

No Docker engine runs here, so these tests hold the files to what a ``docker compose up``
would need: services present, mounted host paths present, pinned images, health checks behind
every ``service_healthy``, env names that the services' settings classes really read, and
dashboards that only query metrics of the worker's contract.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings
from settings_env import env_names

from trainer.model.columns import FEATURE_COLUMNS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
MONITORING = ROOT / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
GRAFANA_DIR = MONITORING / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"

EXPECTED_SERVICES = {
    "kafka",
    "postgres",
    "mlflow",
    "prefect-server",
    "trainer",
    "worker-1",
    "worker-2",
    "monitor",
    "prometheus",
    "grafana",
}
EXPECTED_DASHBOARDS = {
    "scorer-operations.json",
    "scorer-model-health.json",
    "scorer-model-performance.json",
}
SCRAPE_JOB = "income-scorer"
MONITOR_JOB = "income-scorer-monitor"  # `stream-worker monitor`, live performance

# The worker's metrics contract (DESIGN.md, "Metrics"): name -> (type, {label: values}).
# None as values means the label's values are open (features, versions, topics, ...).
FEATURES = set(FEATURE_COLUMNS)
CONTRACT_METRICS: dict[str, tuple[str, dict[str, set[str] | None]]] = {
    "scorer_records_total": ("counter", {"outcome": {"scored", "invalid", "error"}}),
    "scorer_predictions_total": ("counter", {"label": {">50K", "<=50K"}}),
    "scorer_event_latency_seconds": ("histogram", {}),
    "scorer_batch_size": ("histogram", {}),
    "scorer_inference_seconds": ("histogram", {}),
    "scorer_score": ("histogram", {}),
    "scorer_feature_drift_psi": ("gauge", {"feature": FEATURES}),
    "scorer_prediction_drift_psi": ("gauge", {}),
    "scorer_model_info": ("gauge", {"model_name": None, "model_version": None}),
    "scorer_model_reloads_total": ("counter", {"result": {"success", "failure"}}),
    "scorer_dead_letters_total": (
        "counter",
        {
            "reason": {
                "not_json",
                "not_object",
                "invalid_utf8",
                "too_large",
                "schema",
                "scoring_error",
            }
        },
    ),
    "scorer_consumer_lag": ("gauge", {"topic": None, "partition": None}),
    "scorer_model_loaded": ("gauge", {}),
    "scorer_drift_window_records": ("gauge", {}),
    "scorer_http_predict_requests_total": (
        "counter",
        {"result": {"ok", "invalid", "unavailable", "error"}},
    ),
    "scorer_http_predict_seconds": ("histogram", {}),
}
# The monitor's contract (README, "Live model performance"): per model version, from the capture.
VERSION = {"model_name": None, "model_version": None}
MONITOR_METRICS: dict[str, tuple[str, dict[str, set[str] | None]]] = {
    **{
        f"scorer_live_{name}": ("gauge", VERSION)
        for name in (
            "roc_auc",
            "log_loss",
            "brier",
            "accuracy",
            "calibration_error",
            "labelled_records",
            "scored_records",
            "label_coverage",
            "last_label_timestamp_seconds",
        )
    },
    "scorer_live_estimated_accuracy": ("gauge", {**VERSION, "population": {"scored", "labelled"}}),
    "scorer_live_label_delay_seconds": ("histogram", VERSION),
    "scorer_offline_roc_auc": ("gauge", VERSION),
    "scorer_offline_accuracy": ("gauge", VERSION),
    "scorer_capture_duplicate_outcomes": ("gauge", {}),
    "scorer_capture_unmatched_outcomes": ("gauge", {}),
    "scorer_capture_unreadable_files_total": ("counter", {}),
    "scorer_monitor_runs_total": ("counter", {"result": {"success", "failure"}}),
    "scorer_monitor_last_success_timestamp_seconds": ("gauge", {}),
    "scorer_monitor_last_duration_seconds": ("gauge", {}),
}
CONTRACT_METRICS |= MONITOR_METRICS
# Labels Prometheus adds itself (target labels, histogram buckets).
TARGET_LABELS = {"job", "instance", "le"}


def _series_names() -> set[str]:
    names = {"up"}
    for name, (kind, _) in CONTRACT_METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


ALLOWED_SERIES = _series_names()
LABEL_VALUES: dict[str, set[str] | None] = {
    label: values for _, labels in CONTRACT_METRICS.values() for label, values in labels.items()
}
ALLOWED_LABELS = set(LABEL_VALUES) | TARGET_LABELS


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment as a dict, from either Compose syntax."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def resolve_interpolation(value: str) -> str:
    """Resolve ``${VAR:-default}`` / ``${VAR-default}`` to their defaults, as with no .env."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(map(str, command))


def console_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(pyproject["project"]["scripts"])


def settings_classes_of_script(entry_point: str) -> list[type[BaseSettings]]:
    """The settings classes of the package behind a console script (``pkg.cli:main``).

    Each service package keeps all its settings in ``<package>/settings.py``.
    """
    package = entry_point.split(":", 1)[0].split(".", 1)[0]
    module = importlib.import_module(f"{package}.settings")
    classes = [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, BaseSettings)
        and obj is not BaseSettings
        and obj.__module__ == module.__name__
    ]
    assert classes, f"{module.__name__} defines no pydantic-settings class"
    return classes


def default_stage() -> str | None:
    """Name of the Dockerfile's last stage, the one ``docker build`` builds without a target."""
    froms = re.findall(r"(?im)^FROM\s+.*$", DOCKERFILE.read_text(encoding="utf-8"))
    last = re.search(r"(?i)\s+AS\s+(\S+)\s*$", froms[-1]) if froms else None
    return last.group(1) if last else None


def project_services(services: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services running the project's own image (the Dockerfile's default stage)."""
    chosen = {}
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        target = None if isinstance(build, str) else build.get("target")
        if target in {None, default_stage()}:
            chosen[name] = service
    return chosen


def project_commands(service: dict[str, Any]) -> list[str]:
    """The project's console scripts that the service's command runs."""
    text = command_text(service)
    return [s for s in console_scripts() if re.search(rf"(?<![\w-]){re.escape(s)}\b", text)]


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """``[registry[:port]/]name[:tag][@digest]`` -> (name, tag, digest)."""
    digest = None
    if "@" in image:
        image, digest = image.split("@", 1)
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :], digest
    return image, None, digest


def assert_pinned(image: str, where: str) -> None:
    name, tag, digest = split_image(image)
    assert "$" not in image, f"{where}: image {image!r} depends on a variable"
    assert digest or tag, f"{where}: image {image!r} has no tag"
    assert tag not in {"latest", "stable", "main", "master", "edge", "nightly"}, (
        f"{where}: image {image!r} uses a moving tag"
    )
    if tag is not None:
        assert re.search(r"\d", tag), f"{where}: tag of {image!r} names no version"
    assert name, f"{where}: image {image!r} has no name"


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(type, source, target) of each volume entry, short or long syntax."""
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
            yield kind, source, target
        else:
            yield volume["type"], volume.get("source", ""), volume["target"]


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARD_DIR.glob("*.json"))
    }


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))  # panels collapsed into a row


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query target of a Grafana dashboard."""
    return [
        (panel.get("title", "?"), target["expr"])
        for panel in iter_panels(dashboard.get("panels", []))
        for target in panel.get("targets", [])
        if "expr" in target
    ]


def all_dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, PromQL) of every target of every shipped dashboard."""
    return [
        (file_name, title, expr)
        for file_name, board in dashboards().items()
        for title, expr in panel_exprs(board)
    ]


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(PROMETHEUS_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_MATCHER = re.compile(rf"([A-Za-z_]\w*)\s*(=~|!~|!=|=)\s*({_STRING})")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE
)
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "offset",
    "bool",
    "inf",
    "nan",
}


def promql_references(expr: str) -> tuple[set[str], set[str], list[tuple[str, str]]]:
    """Series names, label names and (label, value) equality matchers that a PromQL expr uses.

    A small lexer rather than a parser: enough for the expressions of dashboards and alerts,
    whose syntax promtool checks in tests/integration/test_prometheus_rules.py.
    """
    labels: set[str] = set()
    matchers: list[tuple[str, str]] = []
    for block in re.findall(r"\{([^{}]*)\}", expr):
        for label, op, quoted in _MATCHER.findall(block):
            labels.add(label)
            if op == "=":
                matchers.append((label, quoted[1:-1]))
    stripped = re.sub(r"\{[^{}]*\}", " ", expr)
    stripped = re.sub(r"\[[^\[\]]*\]", " ", stripped)
    for group in _GROUPING.findall(stripped):
        labels |= {name.strip() for name in group.split(",") if name.strip()}
    stripped = _GROUPING.sub(" ", stripped)
    stripped = re.sub(_STRING, " ", stripped)
    series = {
        name
        for name, call in _IDENTIFIER.findall(stripped)
        if not call and name.lower() not in _KEYWORDS
    }
    return series, labels, matchers


def assert_uses_contract(expr: str, where: str) -> None:
    series, labels, matchers = promql_references(expr)
    assert series, f"{where}: no metric found in {expr!r}"
    unknown = series - ALLOWED_SERIES
    assert not unknown, f"{where}: {sorted(unknown)} not in the metrics contract: {expr!r}"
    unknown_labels = labels - ALLOWED_LABELS
    assert not unknown_labels, f"{where}: labels {sorted(unknown_labels)} unknown: {expr!r}"
    for label, value in matchers:
        allowed = LABEL_VALUES.get(label)
        if allowed is not None:
            assert value in allowed, f"{where}: {label}={value!r} is not a contract value"
        if label == "job":
            assert value in {SCRAPE_JOB, MONITOR_JOB}, (
                f"{where}: job={value!r}, the jobs are {SCRAPE_JOB} (workers), {MONITOR_JOB}"
            )


# ---------------------------------------------------------------- the lexer itself


def test_promql_references_finds_series_labels_and_matchers() -> None:
    expr = (
        'sum by (le) (rate(scorer_score_bucket{job="income-scorer"}[1m])) / '
        'on (instance) group_left sum(up offset 5m) or vector(1e-9) and foo:bar{label=">50K"}'
    )
    series, labels, matchers = promql_references(expr)
    assert series == {"scorer_score_bucket", "up", "foo:bar"}
    assert labels == {"le", "job", "instance", "label"}
    assert matchers == [("job", "income-scorer"), ("label", ">50K")]


# ------------------------------------------------------------------------ compose


def test_compose_parses_and_has_every_service(compose: dict[str, Any]) -> None:
    assert isinstance(compose, dict)
    assert set(compose["services"]) >= EXPECTED_SERVICES


def test_every_service_has_an_image_with_a_pinned_tag(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "image" in service, f"{name}: no image (name the built image too)"
        assert_pinned(service["image"], f"service {name}")


def test_built_images_come_from_the_dockerfile(services: dict[str, Any]) -> None:
    stages = re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"))
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        build = {"context": build} if isinstance(build, str) else build
        context = (ROOT / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), name
        if "target" in build:
            assert build["target"] in stages, f"{name}: no stage {build['target']!r}"


def test_every_bind_mounted_host_path_exists(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    binds = 0
    for name, service in compose["services"].items():
        for kind, source, target in mounts(service):
            assert target.startswith("/"), f"{name}: mount target {target!r} is not absolute"
            if kind == "bind":
                binds += 1
                assert (ROOT / source).exists(), f"{name}: bind-mounted {source} does not exist"
            elif kind == "volume":
                assert source in declared_volumes, f"{name}: volume {source!r} not declared"
    assert binds, "expected the monitoring files to be bind-mounted"


def test_depends_on_conditions_are_satisfiable(services: dict[str, Any]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on") or {}
        if isinstance(depends_on, list):
            depends_on = {dep: {"condition": "service_started"} for dep in depends_on}
        for dep, spec in depends_on.items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            condition = (spec or {}).get("condition", "service_started")
            if condition == "service_healthy":
                healthcheck = services[dep].get("healthcheck")
                assert healthcheck, f"{name} waits for {dep} to be healthy: no healthcheck"
                assert not healthcheck.get("disable"), f"{dep}: healthcheck disabled"
                assert healthcheck.get("test"), f"{dep}: healthcheck without a test"
            elif condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") in {"no", "on-failure"}, (
                    f"{name} waits for {dep} to complete, but {dep} is restarted forever"
                )
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_project_services_each_run_one_console_script(services: dict[str, Any]) -> None:
    chosen = project_services(services)
    assert set(chosen) >= {"trainer", "worker-1", "worker-2"}
    for name, service in chosen.items():
        assert len(project_commands(service)) == 1, f"{name}: runs {project_commands(service)}"


PROJECT_SERVICE_NAMES = sorted(project_services(load_yaml(COMPOSE_FILE)["services"]))


@pytest.mark.parametrize("service_name", PROJECT_SERVICE_NAMES)
def test_service_env_names_are_read_by_its_settings(
    services: dict[str, Any], service_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = services[service_name]
    (command,) = project_commands(service)
    classes = settings_classes_of_script(console_scripts()[command])
    readable: dict[str, tuple[type[BaseSettings], str]] = {}
    for cls in classes:
        readable |= {env: (cls, field) for env, field in env_names(cls).items()}

    environment = service_environment(service)
    assert environment, f"{service_name} sets no environment"
    unread = sorted(env for env in environment if env.upper() not in readable)
    assert not unread, (
        f"{service_name} sets {unread}, which {[c.__name__ for c in classes]} never read; "
        f"names read: {sorted(readable)}"
    )

    # The values must also validate: build each settings class from exactly this environment.
    for env in readable:
        monkeypatch.delenv(env, raising=False)
    for env, value in environment.items():
        monkeypatch.setenv(env, resolve_interpolation(value))
    for cls in classes:
        settings = cls(_env_file=None)  # type: ignore[call-arg]
        for env, value in environment.items():
            owner, field = readable[env.upper()]
            if owner is cls:
                expected = TypeAdapter(cls.model_fields[field].annotation).validate_python(
                    resolve_interpolation(value)
                )
                assert getattr(settings, field) == expected, (
                    f"{service_name}: {env}={value!r} did not reach {cls.__name__}.{field}"
                )


def test_worker_web_port_matches_the_scrape_targets(services: dict[str, Any]) -> None:
    prometheus = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == SCRAPE_JOB]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    worker_settings = settings_classes_of_script(console_scripts()["stream-worker"])[0]
    port_env = next(env for env, field in env_names(worker_settings).items() if field == "web_port")
    default_port = worker_settings.model_fields["web_port"].default
    workers = [
        name
        for name, service in project_services(services).items()
        if command_text(service).split()[:2] == ["stream-worker", "run"]
    ]
    assert len(workers) >= 2
    expected = set()
    for name in workers:
        environment = service_environment(services[name])
        port = environment.get(port_env, str(default_port))
        expected.add(f"{name}:{port}")
        assert environment.get(port_env.replace("PORT", "HOST")) == "0.0.0.0", (
            f"{name} must listen on all interfaces for Prometheus to reach it"
        )
    assert targets == expected


def test_monitor_is_scraped_on_its_port_and_reads_the_capture(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    prometheus = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == MONITOR_JOB]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    monitors = [
        name
        for name, service in project_services(services).items()
        if command_text(service).split()[:2] == ["stream-worker", "monitor"]
    ]
    assert monitors == ["monitor"]
    environment = service_environment(services["monitor"])
    assert environment["SCORER_MONITOR_HOST"] == "0.0.0.0", "Prometheus must reach it"
    assert targets == {f"monitor:{environment['SCORER_MONITOR_PORT']}"}
    # The capture it reads is a named volume, mounted where SCORER_CAPTURE_URI points.
    capture = {target: source for kind, source, target in mounts(services["monitor"])}
    assert capture.get(environment["SCORER_CAPTURE_URI"]) in set(compose["volumes"])


def test_the_prefect_server_fires_the_trainer_schedule(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``flow.serve`` needs a Prefect server with a scheduler: the trainer points at the service,
    whose settings are Prefect's and whose database the postgres service creates."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))  # importing prefect creates its home
    import prefect.settings

    server = services["prefect-server"]
    environment = service_environment(server)
    unknown = []
    for env in environment:
        try:
            getattr(prefect.settings, env)
        except AttributeError:
            unknown.append(env)
    assert not unknown, f"prefect-server sets {unknown}, which Prefect never reads"
    command = command_text(server)
    assert re.search(r"\bprefect server start\b.*--host 0\.0\.0\.0", command), command
    port = re.search(r"--port (\d+)", command)
    api_url = f"http://prefect-server:{port.group(1) if port else '4200'}/api"

    trainer = services["trainer"]
    assert service_environment(trainer)["PREFECT_API_URL"] == api_url
    assert trainer["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert "trainer schedule" in command_text(trainer)

    (url,) = [
        resolve_interpolation(value)
        for env, value in environment.items()
        if env in {"PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"}
    ]
    parts = re.fullmatch(r"postgresql\+asyncpg://([^:@]+):([^@]*)@([\w-]+):5432/(\w+)", url)
    assert parts, url
    user, password, host, database = parts.groups()
    assert split_image(services[host]["image"])[0] == "postgres"
    assert server["depends_on"][host]["condition"] == "service_healthy"
    postgres_env = service_environment(services[host])
    assert user == postgres_env["POSTGRES_USER"]
    assert password == resolve_interpolation(postgres_env["POSTGRES_PASSWORD"])
    assert database != postgres_env["POSTGRES_DB"], "Prefect needs a database of its own"
    init_scripts = [
        ROOT / source
        for kind, source, target in mounts(services[host])
        if kind == "bind" and target.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert any(
        re.search(rf"(?im)^\s*CREATE DATABASE\s+\"?{database}\b", script.read_text())
        for script in init_scripts
    ), f"no init script of {host} creates the database {database!r}"


def test_prometheus_and_grafana_mounts_match_their_config(services: dict[str, Any]) -> None:
    prometheus_mounts = {src: dst for _, src, dst in mounts(services["prometheus"])}
    assert prometheus_mounts.get("./monitoring/prometheus") == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]

    grafana_mounts = {src: dst for _, src, dst in mounts(services["grafana"])}
    providers = load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"]
    assert [p["options"]["path"] for p in providers] == [
        grafana_mounts["./monitoring/grafana/dashboards"]
    ]
    assert grafana_mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"

    (datasource,) = load_yaml(DATASOURCES_FILE)["datasources"]
    assert datasource["type"] == "prometheus"
    host_port = re.fullmatch(r"http://([\w-]+):(\d+)/?", datasource["url"])
    assert host_port, datasource["url"]
    assert host_port.group(1) in services
    assert host_port.group(2) == "9090"


# ---------------------------------------------------------------------- Dockerfile


def test_dockerfile_bases_are_pinned_and_the_image_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    bases = re.findall(r"(?im)^FROM\s+(?:--\S+\s+)*(\S+)", text)
    assert bases, "Dockerfile has no FROM"
    stages = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", text))
    for base in bases:
        if base not in stages:
            assert_pinned(base, "Dockerfile FROM")
    assert any(
        split_image(b)[0].endswith("python") and "3.11" in (split_image(b)[1] or "") for b in bases
    )
    users = re.findall(r"(?im)^USER\s+(\S+)", text)
    assert users, "the image must switch to a non-root user"
    assert users[-1] not in {"root", "0"}
    assert re.search(r"(?im)^RUN\s+.*pip install\s+\.", text), "the project must be pip-installed"


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "mlruns"} <= ignored


# ------------------------------------------------------------------------- Grafana


def test_dashboards_are_shipped() -> None:
    assert set(dashboards()) == EXPECTED_DASHBOARDS


def test_dashboards_are_grafana_json_models() -> None:
    uids = set()
    for file_name, board in dashboards().items():
        assert board["schemaVersion"] == 39, file_name
        assert board["uid"] not in uids, f"{file_name}: duplicate uid"
        uids.add(board["uid"])
        assert board["title"]
        panels = list(iter_panels(board["panels"]))
        ids = [panel["id"] for panel in panels]
        assert len(ids) == len(set(ids)), f"{file_name}: duplicate panel ids"
        for panel in panels:
            assert panel["type"] in {"timeseries", "stat", "heatmap", "row"}, panel["type"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{file_name}: {panel['title']} overflows"


def test_every_panel_queries_the_provisioned_datasource() -> None:
    (datasource,) = load_yaml(DATASOURCES_FILE)["datasources"]
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for file_name, board in dashboards().items():
        for panel in iter_panels(board["panels"]):
            if panel["type"] == "row":
                continue
            where = f"{file_name}: {panel['title']}"
            targets = panel.get("targets", [])
            assert any(target.get("expr", "").strip() for target in targets), (
                f"{where}: no target with an expr"
            )
            assert panel["datasource"] == expected, where
            for target in targets:
                assert target.get("datasource", expected) == expected, where
                assert target.get("expr", "").strip(), f"{where}: target {target['refId']} empty"


def test_dashboard_exprs_only_use_the_metrics_contract() -> None:
    exprs = all_dashboard_exprs()
    assert exprs
    used = set()
    for file_name, title, expr in exprs:
        assert_uses_contract(expr, f"{file_name}: {title}")
        assert "$" not in expr, f"{file_name}: {title}: template variables are not resolvable"
        used |= promql_references(expr)[0]
    # Every contract metric appears on some dashboard.
    shown = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert shown >= set(CONTRACT_METRICS), sorted(set(CONTRACT_METRICS) - shown)


def test_alert_exprs_only_use_the_metrics_contract() -> None:
    for rule in alert_rules():
        assert_uses_contract(rule["expr"], f"alert {rule['alert']}")
