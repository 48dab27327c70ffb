"""MLflow model registry: the promotion gate, promote, rollback and listing.

The serving alias (``champion`` by default) is the only thing the worker follows. The versions
that held it are kept, newest last, in the registered model's ``champion_history`` tag so that
``rollback`` can hand it back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from trainer.exceptions import RegistryError

HISTORY_TAG = "champion_history"
GATE_METRIC = "test_roc_auc"
KEY_METRICS = ("test_roc_auc", "test_accuracy_at_0_5", "test_f1", "threshold")


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def gate(
    candidate_auc: float, champion_auc: float | None, floor: float, tolerance: float
) -> GateDecision:
    """Promote only above an absolute floor and no worse than the champion minus a tolerance."""
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


def configure_http_client(timeout_seconds: int = 10, retries: int = 1) -> None:
    """Fail fast against an unreachable tracking server instead of MLflow's minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_seconds))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def connect(tracking_uri: str) -> MlflowClient:
    """A client for the store, checked to answer; RegistryError with one line if it does not."""
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise RegistryError(
            f"MLflow tracking server {tracking_uri} is unreachable: {_first_line(exc)}"
        ) from exc
    return client


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
