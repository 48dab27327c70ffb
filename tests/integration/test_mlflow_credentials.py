"""Trainer, worker and monitor against an MLflow server that requires credentials.

The server is MLflow's own ``basic-auth`` app on loopback (users in a SQLite database of its
own, the admin made at its first start, two users made through its REST API). Clients pass the
standard ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, which MLflow's client
sends itself: these tests prove nothing in the project's code gets in the way, that a refused
password ends the trainer in one line with nothing promoted, that a worker whose password stops
working keeps serving what it has (and says why, once, without hammering the server), and that
the password shows up nowhere: logs, views, metrics, exception texts, MLflow's records.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka_helpers import TopicFactory, consume_all
from mlflow_auth_helpers import AuthServer, clean_environment, start_auth_server

from stream_worker.devtools.broker import free_port
from stream_worker.devtools.processes import ManagedProcess, console_script, worker_process
from stream_worker.scoring.schema import example_request

pytestmark = pytest.mark.integration

ADMIN_PASSWORD = "Adm1n-" + uuid.uuid4().hex
TRAINER_USER, TRAINER_PASSWORD = "trainer-bot", "Tr41n-" + uuid.uuid4().hex
SCORER_USER, SCORER_PASSWORD = "scorer-bot", "Sc0re-" + uuid.uuid4().hex
WRONG_PASSWORD = "Wr0ng-" + uuid.uuid4().hex
SCORER_TOKEN = "t0ken-" + uuid.uuid4().hex  # MLFLOW_TRACKING_TOKEN, also the scorer's
MODEL = "adult-income"
REFUSED = "registry refused the credentials: not authenticated (HTTP 401)"

# The quick training settings of the tests (tests/stack_helpers.py, ModelStore.settings).
QUICK_TRAINING = {
    "TRAINER_TRIALS": "1",
    "TRAINER_MAX_ROUNDS": "120",
    "TRAINER_EARLY_STOPPING_ROUNDS": "10",
    "TRAINER_TIMEOUT_SECONDS": "60",
    "TRAINER_GATE_MIN_ROC_AUC": "0.5",
    "TRAINER_GATE_TOLERANCE": "1.0",
}


@dataclass
class Trained:
    """The first ``trainer run`` (the Prefect flow, as compose runs it) and what it printed."""

    result: subprocess.CompletedProcess[str]
    outcome: dict[str, Any]
    prefect_home: Path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    auth = start_auth_server(
        tmp_path_factory.mktemp("mlflow-auth"), ADMIN_PASSWORD, token=(SCORER_USER, SCORER_TOKEN)
    )
    try:
        auth.create_user(TRAINER_USER, TRAINER_PASSWORD)
        auth.create_user(SCORER_USER, SCORER_PASSWORD)  # READ on everything (the default)
        yield auth
    finally:
        auth.stop()


def trainer_env(server: AuthServer, folder: Path, password: str) -> dict[str, str]:
    return clean_environment(
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_TRACKING_USERNAME=TRAINER_USER,
        MLFLOW_TRACKING_PASSWORD=password,
        PREFECT_HOME=str(folder / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        **QUICK_TRAINING,
    )


def run_trainer(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("trainer"), "run", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )


@pytest.fixture(scope="module")
def trained(server: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    folder = tmp_path_factory.mktemp("trainer")
    outcome_file = folder / "outcome.json"
    env = trainer_env(server, folder, TRAINER_PASSWORD)
    result = run_trainer(env, folder, "--result-json", str(outcome_file))
    assert result.returncode == 0, result.stderr[-3000:]
    return Trained(result, json.loads(outcome_file.read_text()), folder / "prefect")


@pytest.fixture
def as_admin(server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """An MlflowClient of the admin (credentials through the standard variables)."""
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", ADMIN_PASSWORD)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def champion(client: Any) -> str:
    return str(client.get_model_version_by_alias(MODEL, "champion").version)


# ------------------------------------------------------------------------------- trainer


def test_trainer_with_credentials_registers_and_promotes(trained: Trained, as_admin: Any) -> None:
    assert trained.outcome["promoted"] is True
    version = trained.outcome["version"]
    assert champion(as_admin) == version
    run = as_admin.get_run(trained.outcome["run_id"])
    # The auth app records who wrote the run: the trainer's user, not an anonymous one.
    assert run.data.tags.get("mlflow.user") == TRAINER_USER
    # Artifacts went through the server (--serve-artifacts), under the same credentials.
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert "plots" in {a.path for a in as_admin.list_artifacts(run.info.run_id)}


def test_trainer_with_a_wrong_password_ends_in_one_line_and_promotes_nothing(
    server: AuthServer, trained: Trained, as_admin: Any, tmp_path: Path
) -> None:
    before = sorted(int(mv.version) for mv in as_admin.search_model_versions(f"name='{MODEL}'"))
    result = run_trainer(trainer_env(server, tmp_path, WRONG_PASSWORD), tmp_path, "--no-flow")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("trainer: ")
    assert "refused the credentials: not authenticated (HTTP 401)" in lines[0]
    assert "MLFLOW_TRACKING_PASSWORD" in lines[0]  # says what to check
    assert "Traceback" not in result.stdout + result.stderr
    after = sorted(int(mv.version) for mv in as_admin.search_model_versions(f"name='{MODEL}'"))
    assert after == before, "a refused trainer registered a version"
    assert champion(as_admin) == trained.outcome["version"]


# -------------------------------------------------------------------------------- worker


def health(proc: ManagedProcess) -> tuple[int, dict[str, Any]]:
    """Status and body of the worker's /health, 503 included."""
    assert proc.ready_url is not None
    try:
        with urllib.request.urlopen(proc.ready_url, timeout=5) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def view(proc: ManagedProcess, path: str) -> str:
    assert proc.ready_url is not None
    url = proc.ready_url.replace("/health", path)
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return str(resp.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def log_lines(proc: ManagedProcess, needle: str) -> list[str]:
    return [
        line for line in proc.log_path.read_text(errors="replace").splitlines() if needle in line
    ]


@dataclass
class Scoring:
    env: dict[str, str]
    folder: Path
    kafka_bootstrap: str
    produced: int = 0

    def worker(self, password: str, wait_ready: bool = True, **extra: str) -> ManagedProcess:
        env = {**self.env, "MLFLOW_TRACKING_PASSWORD": password, **extra}
        proc = worker_process(env, free_port(), self.folder / f"worker-{uuid.uuid4().hex[:6]}.log")
        if wait_ready:
            return proc.start(timeout=120)
        url, proc.ready_url = proc.ready_url, None
        proc.start()
        proc.ready_url = url
        return proc

    def score(self, producer: Any, count: int) -> list[Any]:
        """Produce ``count`` applicants; every prediction so far once they are all scored."""
        for i in range(count):
            record = {**example_request(), "applicant_id": f"a-{self.produced + i}"}
            producer.send(self.env["SCORER_INPUT_TOPIC"], json.dumps(record).encode())
        producer.flush(timeout=30)
        self.produced += count
        out = consume_all(self.kafka_bootstrap, self.env["SCORER_OUTPUT_TOPIC"], self.produced, 90)
        assert len(out) >= self.produced
        return out


@pytest.fixture
def scoring(
    server: AuthServer,
    trained: Trained,
    kafka_bootstrap: str,
    topic_factory: TopicFactory,
    tmp_path: Path,
) -> Iterator[Scoring]:
    partitions = 2
    env = clean_environment(
        KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_TRACKING_USERNAME=SCORER_USER,
        SCORER_INPUT_TOPIC=topic_factory(partitions, prefix="applicants"),
        SCORER_OUTPUT_TOPIC=topic_factory(partitions, prefix="predictions"),
        SCORER_DLQ_TOPIC=topic_factory(partitions, prefix="dlq"),
        SCORER_OUTCOMES_TOPIC=topic_factory(partitions, prefix="outcomes"),
        SCORER_OUTCOMES_DLQ_TOPIC=topic_factory(partitions, prefix="outcomes-dlq"),
        SCORER_APP_ID=f"scorer-{uuid.uuid4().hex[:12]}",
        SCORER_DATA_DIR=str(tmp_path / "faust"),
        SCORER_RELOAD_INTERVAL_SECONDS="1",
        SCORER_TOPIC_PARTITIONS=str(partitions),
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    stack = Scoring(env, tmp_path, kafka_bootstrap)
    procs: list[ManagedProcess] = []
    original = stack.worker

    def tracked(password: str, wait_ready: bool = True, **extra: str) -> ManagedProcess:
        proc = original(password, wait_ready, **extra)
        procs.append(proc)
        return proc

    stack.worker = tracked  # type: ignore[method-assign]
    try:
        yield stack
    finally:
        for proc in procs:
            proc.stop()
        server.set_password(SCORER_USER, SCORER_PASSWORD)  # as the other tests expect it


def test_worker_scores_and_keeps_serving_when_its_password_stops_working(
    server: AuthServer, trained: Trained, scoring: Scoring, kafka_producer: Any
) -> None:
    worker = scoring.worker(SCORER_PASSWORD)
    version = trained.outcome["version"]
    status, body = health(worker)
    assert (status, body["model_version"], body["registry_error"]) == (200, version, None)
    predictions = scoring.score(kafka_producer, 50)
    assert {json.loads(r.value)["model_version"] for r in predictions} == {version}

    # The admin rotates the scorer's password while it runs: every alias check is now refused.
    server.set_password(SCORER_USER, "R0tated-" + uuid.uuid4().hex)
    body = wait_for(
        lambda: REFUSED in ((b := health(worker)[1])["registry_error"] or "") and b,
        20,
        "the refusal in /health",
    )
    refused_at_start = server.refused_requests()
    time.sleep(6)  # six reload intervals
    refused = server.refused_requests() - refused_at_start
    assert refused <= 9, f"{refused} refused requests in 6 s at a 1 s interval: a retry storm"
    status, body = health(worker)
    assert status == 200, body  # it still serves: refusing the registry is no reason to stop
    assert body["model_version"] == version
    # One line for the refusal. MLflow's auth app (3.17) answers the first request after a
    # password change with a 500 (it authenticates twice per request and the second check
    # sees the new password): that answer is a different reason, so at most one line more.
    (line,) = log_lines(worker, REFUSED)
    assert f"registry check failed, still serving {version}" in line
    assert len(log_lines(worker, "registry check failed")) <= 2, worker.tail(20)
    info = json.loads(view(worker, "/model_info"))
    assert info["version"] == version
    assert "not authenticated" in info["registry_error"]
    predictions = scoring.score(kafka_producer, 50)  # still scoring with the version it has
    assert {json.loads(r.value)["model_version"] for r in predictions} == {version}

    # The password is set back: the next check answers, and the worker says so.
    server.set_password(SCORER_USER, SCORER_PASSWORD)
    wait_for(lambda: health(worker)[1]["registry_error"] is None, 20, "the recovery")
    assert log_lines(worker, "registry answers again"), worker.tail(20)
    assert health(worker)[1]["last_error"] is None


def test_worker_with_a_wrong_password_waits_says_why_and_does_not_hammer(
    server: AuthServer, scoring: Scoring
) -> None:
    refused_at_start = server.refused_requests()
    worker = scoring.worker(WRONG_PASSWORD, wait_ready=False)
    status, body = wait_for(
        lambda: (h := _health_or_none(worker)) and h[1].get("last_error") and h,
        90,
        "the refusal in /health",
    )
    assert status == 503
    assert body["model_loaded"] is False
    assert REFUSED in body["last_error"]
    assert "MLFLOW_TRACKING_PASSWORD" in body["last_error"]  # what to check
    time.sleep(8)  # backoff 1, 2, 4, 8 s: at most a handful of attempts
    assert server.refused_requests() - refused_at_start <= 6
    assert len(log_lines(worker, "no model yet")) == 1, worker.tail(20)
    assert health(worker)[0] == 503
    assert worker.running  # it waits for the credentials to work, it does not exit


def test_worker_loads_and_scores_with_a_token(
    server: AuthServer,
    trained: Trained,
    scoring: Scoring,
    kafka_producer: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MLFLOW_TRACKING_TOKEN alone (no user, no password): sent as a bearer token."""
    worker = scoring.worker("", MLFLOW_TRACKING_USERNAME="", MLFLOW_TRACKING_TOKEN=SCORER_TOKEN)
    version = trained.outcome["version"]
    predictions = scoring.score(kafka_producer, 20)
    assert {json.loads(r.value)["model_version"] for r in predictions} == {version}
    texts = [view(worker, p) for p in ("/health", "/model_info", "/metrics")]
    texts.append(worker.log_path.read_text(errors="replace"))

    from trainer.exceptions import CredentialsError
    from trainer.registry import connect

    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SCORER_TOKEN)
    assert connect(server.uri).get_model_version_by_alias(MODEL, "champion").version == version
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SCORER_TOKEN + "x")
    with pytest.raises(CredentialsError, match="not authenticated") as refused:
        connect(server.uri)
    texts.append(f"{refused.value!s} {refused.value!r} {refused.value.__cause__!r}")
    assert not [t for t in texts if SCORER_TOKEN in t], "the token leaked"


def _health_or_none(proc: ManagedProcess) -> tuple[int, dict[str, Any]] | None:
    try:
        return health(proc)
    except (OSError, ValueError):
        return None


# -------------------------------------------------------------------------------- secrets


def test_no_password_in_logs_views_metrics_exceptions_or_mlflow_records(
    server: AuthServer,
    trained: Trained,
    scoring: Scoring,
    kafka_producer: Any,
    as_admin: Any,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    from stream_worker.exceptions import ModelUnavailableError
    from stream_worker.model_watcher import MlflowModelSource
    from stream_worker.monitor.offline import MlflowOfflineSource, RegistryUnavailableError
    from trainer.exceptions import RegistryError
    from trainer.registry import connect

    texts: dict[str, str] = {
        "trainer stdout": trained.result.stdout,
        "trainer stderr": trained.result.stderr,
    }
    # The Prefect flow's own records (its API database, logs) beside the trainer.
    for path in trained.prefect_home.rglob("*"):
        if path.is_file():
            texts[f"prefect {path.name}"] = path.read_bytes().decode("latin-1")
    wrong = run_trainer(trainer_env(server, tmp_path, WRONG_PASSWORD), tmp_path, "--no-flow")
    texts["refused trainer"] = wrong.stdout + wrong.stderr

    worker = scoring.worker(SCORER_PASSWORD)
    scoring.score(kafka_producer, 20)
    for path in ("/health", "/model_info", "/metrics", "/example_request"):
        texts[f"worker {path}"] = view(worker, path)
    server.set_password(SCORER_USER, "R0tated-" + uuid.uuid4().hex)
    wait_for(lambda: REFUSED in (health(worker)[1]["registry_error"] or ""), 20, "the refusal")
    for path in ("/health", "/model_info", "/metrics"):
        texts[f"refused worker {path}"] = view(worker, path)
    texts["worker log"] = worker.log_path.read_text(errors="replace")

    # The monitor's offline metrics, and the exceptions every client raises when refused.
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", SCORER_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", WRONG_PASSWORD)
    for call in (
        lambda: connect(server.uri),
        lambda: MlflowModelSource(server.uri, MODEL, "champion").target(),
        lambda: MlflowOfflineSource(server.uri, "champion").metrics(MODEL, "1"),
    ):
        with pytest.raises((RegistryError, ModelUnavailableError, RegistryUnavailableError)) as e:
            call()
        texts[f"exception {type(e.value).__name__}"] = "".join(
            f"{type(x).__name__}: {x!s} {x!r}" for x in (e.value, e.value.__cause__)
        )
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", TRAINER_PASSWORD)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", TRAINER_USER)
    offline = MlflowOfflineSource(server.uri, "champion").metrics(MODEL, trained.outcome["version"])
    assert offline["test_roc_auc"] > 0.5  # the monitor reads offline metrics with credentials

    # MLflow's records: every run's params and tags, the model's and its versions' tags.
    for run in as_admin.search_runs(
        [as_admin.get_experiment_by_name(MODEL).experiment_id], max_results=100
    ):
        texts[f"run {run.info.run_id}"] = json.dumps(
            {"params": run.data.params, "tags": run.data.tags}
        )
    texts["registered model"] = json.dumps(as_admin.get_registered_model(MODEL).tags)
    for mv in as_admin.search_model_versions(f"name='{MODEL}'"):
        texts[f"version {mv.version}"] = json.dumps(
            {"tags": mv.tags, "source": mv.source, "description": mv.description}
        )

    assert len(texts) > 15
    for secret in (TRAINER_PASSWORD, SCORER_PASSWORD, WRONG_PASSWORD, ADMIN_PASSWORD):
        leaks = [where for where, text in texts.items() if secret in text]
        assert not leaks, f"a password appears in {leaks}"
    # The searched texts are the real ones: the refusal and the version are in them.
    assert "refused the credentials" in texts["refused trainer"]
    assert trained.outcome["version"] in texts["worker /model_info"]
