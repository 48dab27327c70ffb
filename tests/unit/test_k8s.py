"""The Kubernetes manifests (``deploy/k8s``), rendered and checked offline.

Each overlay is rendered with ``kubectl kustomize`` (Debian's ``kubernetes-client``, or
``$KUBECTL``); the core objects are validated against the Kubernetes OpenAPI schema
(``kubernetes-validate``); the KEDA and Prometheus-Operator objects, which that schema does not
know, are held to the fields they need. The manifests are also held to the code: env names the
settings classes read, the ports and paths the servers serve, the drain time of the worker,
the partitions KEDA may scale to, the job names the alert rules select, and copies of
``monitoring/`` that match their source.
"""

from __future__ import annotations

import ast
import base64
import functools
import importlib
import inspect
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.version import Version
from pydantic import TypeAdapter
from pydantic_settings import BaseSettings
from settings_env import env_names

from stream_worker.devtools import k8s
from stream_worker.devtools.monitoring_files import alert_rules_path, dashboards
from stream_worker.runtime import tuning
from trainer.settings import TrainerSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
NAMESPACES = {"local": "income-scorer-dev", "production": "income-scorer"}
#: Schema versions: the oldest the manifests are written for (CronJob timeZone is GA in 1.27),
#: or the oldest kubernetes-validate still ships, and the newest it knows.
SCHEMA_VERSIONS = (
    min(
        (v for v in kubernetes_validate.utils.all_versions() if Version(v) >= Version("1.27")),
        key=Version,
    ),
    kubernetes_validate.utils.latest_version(),
)
CORE_API_VERSIONS = {"v1", "apps/v1", "batch/v1", "policy/v1"}
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}
WORKER = "scorer-worker"
#: The image's user (Dockerfile: useradd --uid).
IMAGE_UID = int(
    re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text(encoding="utf-8")).group(1)  # type: ignore[union-attr]
)
#: Each component's HTTP server: the module that serves it and its (host, port) settings.
SERVERS = {
    "worker": ("stream_worker/runtime/views.py", "web_host", "web_port"),
    "capture": ("stream_worker/capture/web.py", "capture_host", "capture_port"),
    "monitor": ("stream_worker/monitor/exporter.py", "monitor_host", "monitor_port"),
}
# The worker's shutdown after SIGTERM, besides the preStop hook and the drain: the final
# commit, LeaveGroup and the producer's flush (broker round trips), then mode's shutdown loop
# (Worker._shutdown_loop: gathering tasks ≤ 1 s, one loop stop of 1 s, the 1 s sentinel).
COMMIT_AND_LEAVE_SECONDS = 5.0
MODE_SHUTDOWN_SECONDS = 3.0
GRACE_MARGIN_SECONDS = 5.0
# KEDA's Kafka trigger names for the client's security settings.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
TLS_PROTOCOLS = {"SSL", "SASL_SSL"}
SASL_PROTOCOLS = {"SASL_PLAINTEXT", "SASL_SSL"}
#: Process variables a container may set besides settings (each on a writable volume).
PROCESS_ENV = {"HOME"}


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    overlay: str
    objects: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind} {name}, found {len(found)}"
        return found[0]

    def names(self, kind: str) -> set[str]:
        return {o["metadata"]["name"] for o in self.of_kind(kind)}

    def workloads(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(name, pod template) of every Deployment and CronJob."""
        for deployment in self.of_kind("Deployment"):
            yield deployment["metadata"]["name"], deployment["spec"]["template"]
        for cron in self.of_kind("CronJob"):
            yield cron["metadata"]["name"], cron["spec"]["jobTemplate"]["spec"]["template"]

    def containers(self) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(workload name, pod spec, container) of every container."""
        for name, template in self.workloads():
            for container in template["spec"]["containers"]:
                yield name, template["spec"], container


@functools.cache
def render(overlay: str) -> Rendered:
    try:
        return Rendered(overlay, k8s.render(overlay))
    except FileNotFoundError as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=sorted(NAMESPACES))
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(request.param)


@pytest.fixture
def production() -> Rendered:
    return render("production")


@pytest.fixture
def local() -> Rendered:
    return render("local")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- settings


def console_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(pyproject["project"]["scripts"])


@functools.cache
def settings_classes(command: str) -> list[type[BaseSettings]]:
    """The settings classes a console script can read: every pydantic-settings class its
    package defines (``settings.py``, and any other module, such as a security block), found
    in the source so only those modules are imported. ``devtools`` is tooling, not a service."""
    package = console_scripts()[command].split(".", 1)[0]
    modules = []
    for path in sorted((ROOT / package).rglob("*.py")):
        if "devtools" in path.parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(
            isinstance(node, ast.ClassDef)
            and any(isinstance(b, ast.Name) and b.id == "BaseSettings" for b in node.bases)
            for node in ast.walk(tree)
        ):
            modules.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
    found: list[type[BaseSettings]] = []
    for name in modules:
        module = importlib.import_module(name)
        found += [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, BaseSettings) and obj.__module__ == name
        ]
    assert found, f"{package} defines no pydantic-settings class"
    return found


def mlflow_client_names() -> set[str]:
    """The variables MLflow's client reads itself (credentials among them)."""
    import mlflow.environment_variables as mlflow_env

    return {name for name in dir(mlflow_env) if name.startswith("MLFLOW_")}


def container_env(rendered: Rendered, container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet would build it. Secret values of the
    production overlay (not in the render) become placeholders."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"only ConfigMaps come in whole: {source}"
        config = rendered.one("ConfigMap", source["configMapRef"]["name"])
        env |= {k: str(v) for k, v in config.get("data", {}).items()}
    for item in container.get("env", []):
        ref = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            data = rendered.one("ConfigMap", key["name"]).get("data", {})
            assert key["key"] in data, (
                f"{item['name']}: ConfigMap {key['name']} has no {key['key']}"
            )
            env[item["name"]] = str(data[key["key"]])
        elif "secretKeyRef" in ref:
            env[item["name"]] = secret_value(rendered, ref["secretKeyRef"])
        else:
            raise AssertionError(f"unexpected env source {item}")
    return env


def secret_value(rendered: Rendered, ref: dict[str, str]) -> str:
    secrets = [s for s in rendered.of_kind("Secret") if s["metadata"]["name"] == ref["name"]]
    if not secrets:
        return f"placeholder-for-{ref['name']}-{ref['key']}"
    return base64.b64decode(secrets[0]["data"][ref["key"]]).decode()


def mounted_files(
    rendered: Rendered, pod: dict[str, Any], container: dict[str, Any], tmp: Path
) -> dict[str, str]:
    """Each file the container sees from a Secret volume -> a local copy under ``tmp`` (the
    settings check that such files are readable)."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    copies: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes[mount["name"]].get("secret")
        for item in (secret or {}).get("items", []):
            inside = f"{mount['mountPath'].rstrip('/')}/{item['path']}"
            copy = tmp / secret["secretName"] / item["path"]
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_text(
                secret_value(rendered, {"name": secret["secretName"], "key": item["key"]})
            )
            copies[inside] = str(copy)
    return copies


@dataclass
class ContainerSettings:
    """Builds a container's settings from its rendered environment, Secret files copied."""

    rendered: Rendered
    monkeypatch: pytest.MonkeyPatch
    tmp_path: Path

    def env(self, pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
        copies = mounted_files(self.rendered, pod, container, self.tmp_path)
        return {k: copies.get(v, v) for k, v in container_env(self.rendered, container).items()}

    def build(
        self, pod: dict[str, Any], container: dict[str, Any]
    ) -> dict[type[BaseSettings], BaseSettings]:
        """Each settings class of the container's command, built from exactly its env."""
        env = self.env(pod, container)
        classes = settings_classes(container["command"][0])
        with self.monkeypatch.context() as patch:
            for cls in classes:
                for name in env_names(cls):
                    patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            return {cls: cls(_env_file=None) for cls in classes}  # type: ignore[call-arg]

    def with_field(self, pod: dict[str, Any], container: dict[str, Any], field: str) -> Any:
        """The one settings object that has ``field``."""
        (settings,) = (s for s in self.build(pod, container).values() if hasattr(s, field))
        return settings


@pytest.fixture
def settings_of(
    rendered: Rendered, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> ContainerSettings:
    return ContainerSettings(rendered, monkeypatch, tmp_path)


def port_of(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert port in by_name, f"{container['name']} has no port named {port!r}: {sorted(by_name)}"
    return int(by_name[port])


def component(template: dict[str, Any]) -> str:
    return str(template["metadata"]["labels"]["app.kubernetes.io/component"])


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0}
    for unit, factor in units.items():
        if quantity.endswith(unit):
            return float(quantity[: -len(unit)]) * factor
    return float(quantity) / 2**20


# --------------------------------------------------------------------------- the copies


def test_generated_copies_match_monitoring() -> None:
    """The PrometheusRule and the dashboard ConfigMaps are what the generator makes from
    monitoring/ now: an edit on either side without `make k8s` fails here."""
    assert k8s.stale() == [], "run `make k8s` (python -m stream_worker.devtools.k8s)"


def test_prometheus_rule_holds_the_alert_rules(production: Rendered) -> None:
    (rule,) = production.of_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"]["groups"] == load_yaml(alert_rules_path())["groups"]


def test_dashboard_configmaps_hold_the_dashboards(production: Rendered) -> None:
    boards = {o["metadata"]["name"]: o for o in production.of_kind("ConfigMap")}
    boards = {
        n: o for n, o in boards.items() if o["metadata"].get("labels", {}).get("grafana_dashboard")
    }
    expected = {k8s.dashboard_configmap_name(path): path for path in dashboards()}
    assert set(boards) == set(expected)
    for name, path in expected.items():
        assert boards[name]["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert boards[name]["data"] == {path.name: path.read_text(encoding="utf-8")}


# --------------------------------------------------------------------------- rendering, schema


def test_overlay_renders_the_whole_loop(rendered: Rendered) -> None:
    assert rendered.names("Deployment") == {WORKER, "scorer-capture", "scorer-monitor"}
    assert rendered.names("CronJob") == {"scorer-trainer"}
    for kind in ("Service", "PodDisruptionBudget", "ScaledObject"):
        assert rendered.names(kind) == {WORKER}, kind
    assert rendered.names("TriggerAuthentication") == {"scorer-kafka"}
    assert {"scorer-config", "scorer-trainer-config"} <= rendered.names("ConfigMap")


def test_objects_are_namespaced_by_the_overlay(rendered: Rendered) -> None:
    namespace = NAMESPACES[rendered.overlay]
    assert rendered.names("Namespace") == {namespace}
    for obj in rendered.objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]


@pytest.mark.parametrize("version", SCHEMA_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schema(
    rendered: Rendered, version: str
) -> None:
    for obj in rendered.objects:
        where = f"{rendered.overlay}: {obj['kind']} {obj['metadata']['name']}"
        if obj["apiVersion"] in CORE_API_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} against {version}: {exc.message} at {list(exc.path)}")
        else:
            assert (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS, f"{where}: unchecked kind"


# --------------------------------------------------------------------------- env and settings


def test_env_names_are_read_by_the_settings(rendered: Rendered) -> None:
    mlflow_names = mlflow_client_names()
    for workload, _, container in rendered.containers():
        command = container["command"][0]
        readable = {n for cls in settings_classes(command) for n in env_names(cls)}
        unread = sorted(
            name
            for name in container_env(rendered, container)
            if name.upper() not in readable and name not in mlflow_names | PROCESS_ENV
        )
        assert not unread, f"{rendered.overlay}: {workload} sets {unread}, which nothing reads"


def test_each_container_env_validates_as_its_settings(
    rendered: Rendered, settings_of: ContainerSettings
) -> None:
    for workload, pod, container in rendered.containers():
        env = settings_of.env(pod, container)
        for cls, settings in settings_of.build(pod, container).items():
            for name, field in env_names(cls).items():
                if name in env:
                    annotation = cls.model_fields[field].annotation
                    expected = TypeAdapter(annotation).validate_python(env[name])
                    assert getattr(settings, field) == expected, f"{workload}: {name}"


def test_absolute_paths_in_the_env_are_mounted(rendered: Rendered) -> None:
    """The root filesystem is read-only: every folder or file a setting names is a volume."""
    for workload, _, container in rendered.containers():
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for name, value in container_env(rendered, container).items():
            if value.startswith("/"):
                assert any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts), (
                    f"{rendered.overlay}: {workload} {name}={value} is on no volume ({mounts})"
                )


def test_trainer_and_monitor_share_the_capture_and_the_registry(rendered: Rendered) -> None:
    env = {name: container_env(rendered, container) for name, _, container in rendered.containers()}
    capture = env["scorer-capture"]["SCORER_CAPTURE_URI"]
    assert env["scorer-monitor"]["SCORER_CAPTURE_URI"] == capture
    assert env["scorer-trainer"]["TRAINER_CAPTURE_URI"] == capture
    uris = {e["MLFLOW_TRACKING_URI"] for n, e in env.items() if n != "scorer-capture"}
    assert len(uris) == 1, uris


# --------------------------------------------------------------------------- pods


def test_pods_run_as_the_image_user_without_privileges(rendered: Rendered) -> None:
    for workload, template in rendered.workloads():
        pod = template["spec"]
        where = f"{rendered.overlay}: {workload}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == IMAGE_UID, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod.get("automountServiceAccountToken") is False, where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, f"{where}: /tmp must be a writable volume"


def test_containers_have_requests_within_limits(rendered: Rendered) -> None:
    for workload, _, container in rendered.containers():
        resources = container["resources"]
        for resource, parse in (("cpu", cpu_cores), ("memory", mebibytes)):
            request = parse(resources["requests"][resource])
            limit = parse(resources["limits"][resource])
            assert 0 < request <= limit, f"{rendered.overlay}: {workload} {resource}"
    worker = rendered.one("Deployment", WORKER)["spec"]["template"]["spec"]["containers"][0]
    # One core: the scoring loop is one thread (tuning: one XGBoost thread, nthread=1).
    assert cpu_cores(worker["resources"]["limits"]["cpu"]) == 1.0


def test_probes_use_the_served_port_and_paths(
    rendered: Rendered, settings_of: ContainerSettings
) -> None:
    for name, template in rendered.workloads():
        if name == "scorer-trainer":
            continue
        (container,) = template["spec"]["containers"]
        module, host_field, port_field = SERVERS[component(template)]
        source = (ROOT / module).read_text(encoding="utf-8")
        settings = settings_of.with_field(template["spec"], container, port_field)
        assert getattr(settings, host_field) == "0.0.0.0", f"{name}: the kubelet probes the pod IP"
        served_port = getattr(settings, port_field)
        assert {p["containerPort"] for p in container["ports"]} == {served_port}, name
        assert container["readinessProbe"]["httpGet"]["path"] == "/health", name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe not in container:
                continue
            check = container[probe]["httpGet"]
            assert port_of(container, check["port"]) == served_port, f"{name} {probe}"
            assert f'"{check["path"]}"' in source, (
                f"{name} {probe}: {module} serves no {check['path']}"
            )
        # Liveness must not restart a process that waits for its model or for a store.
        assert container["livenessProbe"]["httpGet"]["path"] != "/health", name
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            assert int(annotations["prometheus.io/port"]) == served_port, name
            assert f'"{annotations["prometheus.io/path"]}"' in source, name


def test_worker_grace_period_covers_its_drain(rendered: Rendered) -> None:
    pod = rendered.one("Deployment", WORKER)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    pre_stop_seconds = float(pre_stop[1]) if pre_stop else 0.0
    if pre_stop:
        assert pre_stop[0] == "sleep", pre_stop
    needed = (
        pre_stop_seconds
        + tuning.DRAIN_TIMEOUT_SECONDS
        + COMMIT_AND_LEAVE_SECONDS
        + MODE_SHUTDOWN_SECONDS
        + GRACE_MARGIN_SECONDS
    )
    assert pod["terminationGracePeriodSeconds"] >= needed


def test_service_and_disruption_budget_select_the_workers(rendered: Rendered) -> None:
    worker = rendered.one("Deployment", WORKER)
    labels = worker["spec"]["template"]["metadata"]["labels"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    assert matches(worker["spec"]["selector"]["matchLabels"], labels)
    service = rendered.one("Service", WORKER)
    assert matches(service["spec"]["selector"], labels)
    for port in service["spec"]["ports"]:
        port_of(container, port["targetPort"])
    budget = rendered.one("PodDisruptionBudget", WORKER)["spec"]
    assert matches(budget["selector"]["matchLabels"], labels)
    # A drain must be able to evict a worker even at the autoscaler's minimum.
    minimum = rendered.one("ScaledObject", WORKER)["spec"]["minReplicaCount"]
    if "minAvailable" in budget:
        assert budget["minAvailable"] < minimum
    else:
        assert budget["maxUnavailable"] >= 1
    assert "replicas" not in worker["spec"], "KEDA owns the worker's replicas"


def test_trainer_cronjob_is_the_nightly_schedule(rendered: Rendered) -> None:
    cron = rendered.one("CronJob", "scorer-trainer")["spec"]
    assert cron["schedule"] == TrainerSettings.model_fields["schedule_cron"].default
    assert cron["concurrencyPolicy"] == "Forbid"
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in {"Never", "OnFailure"}
    (container,) = pod["containers"]
    assert container["command"][:2] == ["trainer", "run"]
    cli = (ROOT / "trainer" / "cli.py").read_text(encoding="utf-8")
    for flag in (arg for arg in container["command"] if arg.startswith("--")):
        assert f'"{flag}"' in cli, f"trainer run has no option {flag}"


def test_one_pinned_image_runs_the_loop(rendered: Rendered) -> None:
    images = {container["image"] for _, _, container in rendered.containers()}
    assert len(images) == 1, images
    (image,) = images
    tag = image.rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else None
    assert tag not in {None, "latest"}, f"{image}: pin a tag"


# --------------------------------------------------------------------------- KEDA


def test_scaled_object_scales_the_workers_on_their_lag(
    rendered: Rendered, settings_of: ContainerSettings
) -> None:
    scaled = rendered.one("ScaledObject", WORKER)
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    worker = rendered.one("Deployment", target["name"])
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = container_env(rendered, container)
    settings = settings_of.with_field(worker["spec"]["template"]["spec"], container, "app_id")
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= settings.topic_partitions

    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(meta)
    assert meta["bootstrapServers"] == settings.kafka_bootstrap_servers
    assert meta["consumerGroup"] == settings.app_id  # Faust's app id is the consumer group
    assert meta["topic"] == settings.input_topic
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("offsetResetPolicy") == "earliest"  # as consumer_auto_offset_reset

    protocol = env.get("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    assert meta.get("tls", "disable") == ("enable" if protocol in TLS_PROTOCOLS else "disable")
    if protocol in SASL_PROTOCOLS:
        assert meta.get("sasl") == KEDA_SASL[env["KAFKA_SASL_MECHANISM"]]
    else:
        assert meta.get("sasl", "none") == "none"


def test_trigger_authentication_uses_the_workers_secret(rendered: Rendered) -> None:
    (trigger,) = rendered.one("ScaledObject", WORKER)["spec"]["triggers"]
    auth = rendered.one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    worker = rendered.one("Deployment", WORKER)["spec"]["template"]["spec"]["containers"][0]
    by_env = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in worker["env"]
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    if trigger["metadata"].get("sasl", "none") != "none":
        assert refs["username"] == by_env["KAFKA_SASL_USERNAME"]
        assert refs["password"] == by_env["KAFKA_SASL_PASSWORD"]
    if trigger["metadata"].get("tls") == "enable":
        pod = rendered.one("Deployment", WORKER)["spec"]["template"]["spec"]
        ca_volume = next(v for v in pod["volumes"] if v["name"] == "kafka-ca")["secret"]
        assert refs["ca"] == (ca_volume["secretName"], ca_volume["items"][0]["key"])


# --------------------------------------------------------------------------- Prometheus Operator


def test_pod_monitors_scrape_each_server_under_its_alerting_job(production: Rendered) -> None:
    scrape = load_yaml(ROOT / "monitoring" / "prometheus" / "prometheus.yml")
    compose_jobs = {job["job_name"] for job in scrape["scrape_configs"]} - {"prometheus"}
    alert_jobs = set(re.findall(r'job="([^"]+)"', alert_rules_path().read_text(encoding="utf-8")))
    jobs: set[str] = set()
    for monitor in production.of_kind("PodMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        name = monitor["metadata"]["name"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = [
            template
            for _, template in production.workloads()
            if matches(selector, template["metadata"]["labels"])
        ]
        assert len(selected) == 1, f"{name} selects {len(selected)} workloads"
        (container,) = selected[0]["spec"]["containers"]
        module = SERVERS[component(selected[0])][0]
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            port_of(container, endpoint["port"])
            assert f'"{endpoint["path"]}"' in (ROOT / module).read_text(encoding="utf-8")
            (relabel,) = [r for r in endpoint["relabelings"] if r["targetLabel"] == "job"]
            jobs.add(relabel["replacement"])
    assert jobs == compose_jobs
    assert alert_jobs <= jobs


# --------------------------------------------------------------------------- Secrets


def secret_refs(rendered: Rendered) -> set[tuple[str, str]]:
    """Every (Secret, key) a pod or KEDA reads."""
    refs: set[tuple[str, str]] = set()
    for _, pod, container in rendered.containers():
        for item in container.get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                refs |= {
                    (volume["secret"]["secretName"], i["key"]) for i in volume["secret"]["items"]
                }
    for auth in rendered.of_kind("TriggerAuthentication"):
        refs |= {(r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    return refs


def test_local_secrets_are_generated_with_fake_values(local: Rendered) -> None:
    secrets = {s["metadata"]["name"]: s for s in local.of_kind("Secret")}
    for name, key in secret_refs(local):
        assert key in secrets[name]["data"], f"{name} has no {key}"
    for secret in secrets.values():
        for key, value in secret["data"].items():
            text = base64.b64decode(value).decode()
            assert "dev" in text or "not-a" in text, f"{key}: not obviously a dev value"


def test_production_expects_the_documented_secrets(production: Rendered) -> None:
    assert production.of_kind("Secret") == [], "production Secrets are created, not committed"
    documented: set[tuple[str, str]] = set()
    comment = (K8S / "overlays" / "production" / "kustomization.yaml").read_text(encoding="utf-8")
    for name, keys in re.findall(r"^#\s+(scorer-[a-z]+):\s+(.+)$", comment, re.MULTILINE):
        documented |= {(name, key.strip()) for key in keys.split(",")}
    assert secret_refs(production) == documented
