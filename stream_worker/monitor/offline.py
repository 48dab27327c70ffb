"""Offline metrics of each version from MLflow, looked up once per version and kept.

A version's test metrics never change once registered, so each is fetched once. While the
registry is unreachable the monitor keeps what it knows, logs the outage once (and once again
when the registry answers), and retries the missing versions at the next interval.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from stream_worker.exceptions import ScorerError, one_line
from stream_worker.monitor.exporter import OFFLINE_METRICS, VersionKey

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)


class RegistryUnavailableError(ScorerError):
    """The registry did not answer; try again later."""


class UnknownVersionError(ScorerError):
    """The registry answered but has no such version."""


class OfflineSource(Protocol):
    def metrics(self, model_name: str, model_version: str) -> dict[str, float]:
        """The MLflow metrics of the version's training run."""
        ...


class MlflowOfflineSource:
    """Reads through ``trainer.registry``; the client is (re)made lazily after an outage."""

    def __init__(self, tracking_uri: str, alias: str) -> None:
        self.tracking_uri = tracking_uri
        self.alias = alias
        self._client: MlflowClient | None = None

    def metrics(self, model_name: str, model_version: str) -> dict[str, float]:
        from mlflow.exceptions import MlflowException

        from trainer.exceptions import RegistryError
        from trainer.registry import Registry, connect

        try:
            if self._client is None:
                self._client = connect(self.tracking_uri)
            registry = Registry(self._client, model_name, self.alias)
            return registry.metrics(model_version)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise UnknownVersionError(
                    f"{model_name} version {model_version}: {one_line(exc)}"
                ) from exc
            self._client = None
            raise RegistryUnavailableError(one_line(exc)) from exc
        except RegistryError as exc:
            raise RegistryUnavailableError(str(exc)) from exc
        except Exception as exc:  # connection errors surface as many types
            self._client = None
            raise RegistryUnavailableError(one_line(exc)) from exc


class OfflineMetrics:
    """``{(model_name, model_version): {"roc_auc": ..., "accuracy": ...}}``, filled as needed."""

    def __init__(self, source: OfflineSource | None) -> None:
        self.source = source
        self.known: dict[VersionKey, dict[str, float]] = {}
        self._outage: str | None = None

    def refresh(self, versions: Iterable[VersionKey]) -> None:
        """Fetch the versions not known yet; never raises."""
        if self.source is None:
            return
        for key in versions:
            if key in self.known:
                continue
            try:
                raw = self.source.metrics(*key)
            except UnknownVersionError as exc:
                log.warning("no offline metrics for %s %s: %s", *key, exc)
                self.known[key] = {}
                continue
            except Exception as exc:  # registry down, or anything else: keep what is known
                reason = str(exc) if isinstance(exc, RegistryUnavailableError) else one_line(exc)
                if self._outage is None:
                    log.warning(
                        "registry unavailable, offline metrics of new versions wait: %s", reason
                    )
                self._outage = reason
                return
            if self._outage is not None:
                log.info("registry answers again")
                self._outage = None
            self.known[key] = {
                figure: float(raw[source]) for figure, source in OFFLINE_METRICS.items()
                if source in raw
            }  # fmt: skip

    @property
    def outage(self) -> str | None:
        """Why the registry did not answer at the last attempt, None when it did."""
        return self._outage
