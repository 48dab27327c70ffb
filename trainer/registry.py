"""MLflow model registry: the promotion gate, promote, rollback and listing.

The serving alias (``champion`` by default) is the only thing the worker follows. The versions
that held it are kept, newest last, in the registered model's ``champion_history`` tag so that
``rollback`` can hand it back.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from trainer.exceptions import CredentialsError, RegistryError

HISTORY_TAG = "champion_history"
GATE_METRIC = "test_roc_auc"
KEY_METRICS = ("test_roc_auc", "test_accuracy_at_0_5", "test_f1", "threshold")


@dataclass(frozen=True)
class ChampionScore:
    """The champion's side of the gate: its ROC-AUC, and on which rows it was measured.

    ``rows`` set: scored in this run on the candidate's evaluation rows (``metrics`` holds
    all its metrics there). ``fallback`` set instead: it could not be scored (why), and
    ``roc_auc`` is the figure its own run logged, on that run's evaluation rows.
    """

    version: str
    roc_auc: float | None
    rows: int | None = None
    fallback: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def basis(self, candidate_auc: float) -> str:
        """Both figures and what they were measured on, for the gate's reason."""
        if self.rows is not None:
            return (
                f"candidate {candidate_auc:.4f} and champion (version {self.version}) "
                f"{_fmt(self.roc_auc)}, both on the same {self.rows} evaluation rows"
            )
        return (
            f"champion (version {self.version}) could not be scored on the evaluation rows "
            f"({self.fallback}): its {GATE_METRIC} {_fmt(self.roc_auc)} as logged by its own run, "
            f"on that run's evaluation rows, against the candidate's {candidate_auc:.4f}"
        )


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str
    champion: ChampionScore | None = None


def gate(
    candidate_auc: float,
    champion: float | ChampionScore | None,
    floor: float,
    tolerance: float,
) -> GateDecision:
    """Promote only above an absolute floor and no worse than the champion minus a tolerance.

    ``champion``: a :class:`ChampionScore` (then the reason also cites both figures and the
    rows they were measured on), or the champion's bare ROC-AUC, or None without a champion.
    """
    if not isinstance(champion, ChampionScore):
        return _gate(candidate_auc, champion, floor, tolerance)
    score = champion
    decision = _gate(candidate_auc, score.roc_auc, floor, tolerance)
    reason = decision.reason
    if score.roc_auc is None or math.isnan(score.roc_auc):
        reason = reason.replace("no champion yet", f"the champion has no usable {GATE_METRIC}")
    return replace(decision, reason=f"{reason}; {score.basis(candidate_auc)}", champion=score)


def _gate(
    candidate_auc: float, champion_auc: float | None, floor: float, tolerance: float
) -> GateDecision:
    if candidate_auc != candidate_auc:  # NaN
        return GateDecision(False, f"{GATE_METRIC} is not a number")
    if candidate_auc < floor:
        return GateDecision(
            False, f"{GATE_METRIC} {candidate_auc:.4f} is below the floor {floor:.4f}"
        )
    if champion_auc is not None and candidate_auc < champion_auc - tolerance:
        return GateDecision(
            False,
            f"{GATE_METRIC} {candidate_auc:.4f} is below the champion's {champion_auc:.4f} "
            f"minus tolerance {tolerance:.4f}",
        )
    if champion_auc is None:
        return GateDecision(
            True, f"{GATE_METRIC} {candidate_auc:.4f} ≥ floor {floor:.4f}; no champion yet"
        )
    return GateDecision(
        True, f"{GATE_METRIC} {candidate_auc:.4f} ≥ champion {champion_auc:.4f} − {tolerance:.4f}"
    )


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def configure_http_client(timeout_seconds: int = 10, retries: int = 1) -> None:
    """Fail fast against an unreachable tracking server instead of MLflow's minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


#: MLflow's error codes for a request the server refused for its credentials.
AUTH_ERROR_CODES = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}
CREDENTIAL_ENV = "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN"


def display_uri(uri: str) -> str:
    """``uri`` fit for a log line: a password in its user-info part is masked."""
    return re.sub(r"^([A-Za-z][\w+.-]*://[^/@:]*):[^/@]*@", r"\1:***@", uri)


def auth_failure(exc: BaseException) -> str | None:
    """Why the server refused the request's credentials, or None for any other failure.

    MLflow's client sends MLFLOW_TRACKING_USERNAME/PASSWORD (basic) or MLFLOW_TRACKING_TOKEN
    (bearer) itself; the answer names neither, and neither does this text.
    """
    code = getattr(exc, "error_code", None)
    if code not in AUTH_ERROR_CODES:
        return None
    what = "not authenticated" if code == "UNAUTHENTICATED" else "permission denied"
    return f"{what} (HTTP {AUTH_ERROR_CODES[code]}): check {CREDENTIAL_ENV}"


def connect(tracking_uri: str) -> MlflowClient:
    """A client for the store, checked to answer; RegistryError with one line if it does not."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        refused = auth_failure(exc)
        shown = display_uri(tracking_uri)
        if refused is not None:
            raise CredentialsError(
                f"MLflow tracking server {shown} refused the credentials: {refused}"
            ) from exc
        raise RegistryError(
            f"MLflow tracking server {shown} is unreachable: {_first_line(exc)}"
        ) from exc
    return client


def download_version(client: MlflowClient, name: str, version: str, dest: Path) -> Path:
    """Download model version ``version`` of ``name`` under ``dest``; return its bundle folder.

    The one way trainer and worker fetch a registered bundle. It asks ``client`` for the
    version's physical location: a ``models:/`` URI would be resolved against the process-wide
    registry URI (MLFLOW_REGISTRY_URI), which a parent process may have set to some other store.
    """
    import mlflow.artifacts

    from trainer.model.bundle import BUNDLE_IN_MODEL  # xgboost: only when a bundle is wanted

    location = client.get_model_version_download_uri(name, version)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=location, dst_path=str(dest), tracking_uri=client.tracking_uri
    )
    return Path(path) / BUNDLE_IN_MODEL


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class Registry:
    """The registered model ``name`` and its serving ``alias``."""

    def __init__(self, client: MlflowClient, name: str, alias: str) -> None:
        self.client = client
        self.name = name
        self.alias = alias

    def champion_version(self) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(self.name, self.alias).version)
        except MlflowException:
            return None

    def metrics(self, version: str) -> dict[str, float]:
        mv = self.client.get_model_version(self.name, version)
        if not mv.run_id:
            return {}
        return dict(self.client.get_run(mv.run_id).data.metrics)

    def run_id(self, version: str) -> str | None:
        """The run that logged ``version`` (None for a version registered from elsewhere)."""
        return self.client.get_model_version(self.name, version).run_id or None

    def download(self, version: str, dest: Path) -> Path:
        """Version ``version``'s bundle folder, downloaded under ``dest``."""
        return download_version(self.client, self.name, version, dest)

    def champion_metric(self, metric: str = GATE_METRIC) -> float | None:
        version = self.champion_version()
        if version is None:
            return None
        return self.metrics(version).get(metric)

    def history(self) -> list[str]:
        model = self.client.get_registered_model(self.name)
        raw = model.tags.get(HISTORY_TAG, "")
        return [v for v in raw.split(",") if v]

    def _set_history(self, versions: list[str]) -> None:
        self.client.set_registered_model_tag(self.name, HISTORY_TAG, ",".join(versions[-50:]))

    def _require_version(self, version: str) -> None:
        try:
            self.client.get_model_version(self.name, version)
        except MlflowException as exc:
            raise RegistryError(f"model {self.name} has no version {version}") from exc

    def promote(self, version: str, reason: str = "manual promotion") -> None:
        self._require_version(version)
        self.client.set_registered_model_alias(self.name, self.alias, version)
        self.client.set_model_version_tag(self.name, version, "gate", "passed")
        self.client.set_model_version_tag(self.name, version, "gate_reason", reason)
        history = [v for v in self.history() if v != version]
        self._set_history([*history, version])

    def reject(self, version: str, reason: str) -> None:
        self.client.set_model_version_tag(self.name, version, "gate", "rejected")
        self.client.set_model_version_tag(self.name, version, "gate_reason", reason)

    def rollback(self) -> str:
        """Give the alias back to the champion before the current one; return that version."""
        history = self.history()
        current = self.champion_version()
        if current is not None and history and history[-1] == current:
            history = history[:-1]
        if not history:
            raise RegistryError(f"no earlier champion of {self.name} to roll back to")
        previous = history[-1]
        self.client.set_registered_model_alias(self.name, self.alias, previous)
        if current is not None:
            self.client.set_model_version_tag(self.name, current, "rolled_back", "true")
        self._set_history(history)
        return previous

    def versions(self) -> list[dict[str, Any]]:
        try:
            found = self.client.search_model_versions(f"name='{self.name}'")
        except MlflowException as exc:
            raise RegistryError(f"cannot list versions of {self.name}: {_first_line(exc)}") from exc
        if not found:
            return []
        champion = self.champion_version()
        # search_model_versions leaves ``aliases`` empty on some stores (SQLite among them);
        # the registered model carries the authoritative alias -> version map.
        aliases: dict[str, list[str]] = {}
        for alias, version in (self.client.get_registered_model(self.name).aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        rows = []
        for mv in sorted(found, key=lambda m: int(m.version)):
            metrics = self.metrics(str(mv.version))
            rows.append(
                {
                    "version": str(mv.version),
                    "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                    "champion": str(mv.version) == champion,
                    "gate": mv.tags.get("gate", ""),
                    "reason": mv.tags.get("gate_reason", ""),
                    "run_id": mv.run_id,
                    **{k: metrics.get(k) for k in KEY_METRICS},
                }
            )
        return rows
