"""Follow the registry's serving alias: load, smoke-test and swap in new versions.

All MLflow calls are blocking and run in a thread; the swap is one attribute assignment, and
the agent reads ``current`` once per batch, so a batch is always scored by one version.

A new version serves only once it passed the smoke test through the full scoring path
(:func:`~stream_worker.scoring.scorer.smoke_test`). If it still fails on live records, the
scorer asks :meth:`ModelWatcher.fall_back`: the version it replaced serves again and the
failed one is refused, so the alias pointing at it does not swap it back in.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stream_worker.exceptions import ModelUnavailableError, one_line
from stream_worker.scoring.metrics import ScorerMetrics
from stream_worker.scoring.scorer import LoadedModel, smoke_test
from trainer.model.bundle import ModelBundle
from trainer.registry import auth_failure, download_version

log = logging.getLogger(__name__)

#: How stores answer for an alias (or a model) that does not exist (REST server, SQL store).
MISSING_ALIAS_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}


@dataclass(frozen=True)
class AliasTarget:
    version: str
    run_id: str


class MlflowModelSource:
    """Where versions come from: the MLflow registry at ``tracking_uri``."""

    def __init__(self, tracking_uri: str, name: str, alias: str) -> None:
        self.tracking_uri = tracking_uri
        self.name = name
        self.alias = alias
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def target(self) -> AliasTarget:
        try:
            mv = self._client.get_model_version_by_alias(self.name, self.alias)
        except MlflowException as exc:
            refused = auth_failure(exc)
            if refused is not None:
                raise ModelUnavailableError(f"registry refused the credentials: {refused}") from exc
            if exc.error_code in MISSING_ALIAS_CODES:
                raise ModelUnavailableError(
                    f"no {self.name}@{self.alias}: {one_line(exc)}"
                ) from exc
            # a server error, or retries given up: not a statement about the alias
            raise ModelUnavailableError(f"registry error: {one_line(exc)}") from exc
        except Exception as exc:  # connection errors surface as many types
            raise ModelUnavailableError(f"registry unreachable: {one_line(exc)}") from exc
        return AliasTarget(str(mv.version), str(mv.run_id or ""))

    def download(self, version: str, dest: Path) -> Path:
        """The version's bundle folder under ``dest`` (the trainer's own download helper)."""
        try:
            return download_version(self._client, self.name, version, dest)
        except Exception as exc:
            why = auth_failure(exc) or one_line(exc)
            raise ModelUnavailableError(f"cannot download version {version}: {why}") from exc

    def run_metrics(self, run_id: str) -> dict[str, float]:
        if not run_id:
            return {}
        try:
            return dict(self._client.get_run(run_id).data.metrics)
        except Exception:
            return {}


class ModelWatcher:
    """Holds the model in service; ``poll`` loads a newly aliased version if there is one."""

    def __init__(
        self, source: MlflowModelSource, metrics: ScorerMetrics, nthread: int | None = None
    ) -> None:
        self.source = source
        self.metrics = metrics
        self.nthread = nthread
        self.current: LoadedModel | None = None
        self.refused: dict[str, str] = {}  # version -> why it was refused
        self.last_error: str | None = None
        # Why the last alias check failed (registry down, credentials refused); None once it
        # answers. The model in service keeps serving meanwhile.
        self.registry_error: str | None = None
        self.run_metrics: dict[str, float] = {}
        self._previous: LoadedModel | None = None  # what ``current`` replaced: the fallback
        self._lock = threading.Lock()  # one poll at a time (held while a version downloads)
        # Guards current/_previous/refused: taken briefly, also from the event loop's thread.
        self._swap_lock = threading.Lock()
        self._workdir = Path(tempfile.mkdtemp(prefix="scorer-models-"))

    @property
    def ready(self) -> bool:
        return self.current is not None

    def poll(self) -> LoadedModel | None:
        """Check the alias once; return the new model if one was swapped in, else None.

        Raises ModelUnavailableError if the registry cannot be asked; the current model (if
        any) keeps serving either way.
        """
        with self._lock:
            try:
                target = self.source.target()
            except ModelUnavailableError as exc:
                self.last_error = self.registry_error = str(exc)
                raise
            if self.registry_error is not None:  # the registry answers again
                if self.last_error == self.registry_error:
                    self.last_error = None
                self.registry_error = None
            if self.current is not None and target.version == self.current.version:
                return None
            if target.version in self.refused:
                return None
            return self._load(target)

    def _load(self, target: AliasTarget) -> LoadedModel | None:
        dest = self._workdir / f"v{target.version}"
        shutil.rmtree(dest, ignore_errors=True)
        try:
            folder = self.source.download(target.version, dest)
            bundle = ModelBundle.load(folder, nthread=self.nthread)
            candidate = LoadedModel(
                bundle=bundle,
                name=self.source.name,
                version=target.version,
                run_id=target.run_id,
                loaded_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            smoke_test(candidate)  # decode, encode, predict, drift, output: the stream's path
        except ModelUnavailableError as exc:
            # The registry failed mid-download: not the version's fault; try again next poll.
            self.last_error = str(exc)
            self.metrics.reloads.labels(result="failure").inc()
            log.warning("model version %s not loaded: %s", target.version, exc)
            return None
        except Exception as exc:
            reason = one_line(exc)
            self.refused[target.version] = reason
            self.last_error = f"version {target.version} refused: {reason}"
            self.metrics.reloads.labels(result="failure").inc()
            log.error(
                "model version %s refused, keeping %s: %s",
                target.version,
                self.current.version if self.current else "none",
                reason,
            )
            return None
        finally:
            # The bundle is in memory once loaded: its files are not kept, so the disk used
            # does not grow with every promotion.
            shutil.rmtree(dest, ignore_errors=True)
        loaded = dataclasses.replace(candidate, fallback=self)
        self.run_metrics = self.source.run_metrics(target.run_id)
        with self._swap_lock:
            previous = self.current
            self._previous = previous
            self.current = loaded  # the atomic swap: the next batch uses the new version
            self.last_error = None
            self.metrics.set_model(loaded.name, loaded.version)  # with the swap: see fall_back
        self.metrics.reloads.labels(result="success").inc()
        log.info(
            "serving %s version %s (was %s)",
            loaded.name,
            loaded.version,
            previous.version if previous else "none",
        )
        return loaded

    def fall_back(self, failed: LoadedModel, reason: str) -> LoadedModel | None:
        """The model to score with now that ``failed`` failed on valid records, or None.

        If ``failed`` serves, the version it replaced serves again (once: that one has no
        fallback of its own) and ``failed`` is refused, so the alias still pointing at it does
        not swap it back in (a refusal lasts for the process, like a failed smoke test). If
        another version serves already, that one. None if ``failed`` serves and replaced
        nothing: the scorer then stops the worker rather than blame the records.
        """
        with self._swap_lock:
            current = self.current
            if current is not failed:
                if self._previous is failed:
                    self._previous = None
                return current
            replacement = self._previous
            if replacement is None:
                return None
            self.refused[failed.version] = f"failed in service: {reason}"
            self.current = replacement
            self._previous = None
            self.last_error = f"version {failed.version} refused: failed in service: {reason}"
            self.metrics.reloads.labels(result="failure").inc()
            self.metrics.set_model(replacement.name, replacement.version)
        log.error(
            "model version %s failed in service, serving %s again: %s",
            failed.version,
            replacement.version,
            reason,
        )
        return replacement

    def info(self) -> dict[str, Any]:
        model = self.current
        if model is None:
            return {"loaded": False, "error": self.last_error}
        return {
            "loaded": True,
            "name": model.name,
            "version": model.version,
            "run_id": model.run_id,
            "threshold": model.bundle.threshold,
            "loaded_at": model.loaded_at,
            "test_metrics": {k: v for k, v in self.run_metrics.items() if k.startswith("test_")},
            "refused_versions": dict(self.refused),
            "last_error": self.last_error,
            "registry_error": self.registry_error,
        }

    def close(self) -> None:
        """Remove the download folder once no poll is writing to it (waits for one running)."""
        with self._lock:
            shutil.rmtree(self._workdir, ignore_errors=True)
