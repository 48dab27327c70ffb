"""The model a benchmark serves: ``--model quick|default|models:/NAME@ALIAS``.

- ``default`` (the default): what ``trainer run`` trains with its default settings, the size
  production serves (700 trees). Training takes minutes, so it is kept in a cache folder
  under a *content key*: a digest of everything that decides the model (the trainer's
  settings, the training code, the bundled data's checksums, the XGBoost version). Reruns
  with the same key reuse the store; a change to any of them trains a new one.
- ``quick``: a one-trial model trained into the run's workdir (seconds; small, so throughput
  figures are flattering: the old default).
- ``models:/NAME@ALIAS``: that registered model in the store given by ``--tracking-uri``
  (or ``MLFLOW_TRACKING_URI``).

The tree count of the served booster goes into the JSON (``model_trees``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stream_worker.exceptions import ConfigError

if TYPE_CHECKING:
    from trainer.model.bundle import ModelBundle
    from trainer.settings import TrainerSettings

QUICK = "quick"
DEFAULT = "default"
MODEL_URI_PREFIX = "models:/"

#: Trainer modules whose code decides what a default run trains (relative to ``trainer/``).
TRAINING_CODE = (
    "dataset.py", "ensemble.py", "evaluate.py", "pipeline.py", "train.py", "tune.py",
    "model/bundle.py", "model/columns.py", "model/features.py", "model/profile.py",
)  # fmt: skip
#: Settings that say where things go, not what is trained: left out of the key.
NOT_IN_KEY = frozenset(
    {
        "mlflow_tracking_uri", "artifact_location", "schedule_cron", "schedule_interval_seconds",
        "prefect_api_url", "prefect_home", "prefect_server_startup_timeout_seconds",
        "capture_uri", "capture_cutoff", "data_dir",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ModelChoice:
    """What ``--model`` asked for: ``kind`` is quick, default or uri."""

    kind: str
    name: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelChoice:
        if text in (QUICK, DEFAULT):
            return cls(text)
        if text.startswith(MODEL_URI_PREFIX):
            name, sep, alias = text.removeprefix(MODEL_URI_PREFIX).partition("@")
            if not (name and sep and alias) or "/" in name:
                raise ConfigError(
                    f"--model {text!r}: expected models:/NAME@ALIAS (the worker serves an alias)"
                )
            return cls("uri", name, alias)
        raise ConfigError(f"--model {text!r}: expected quick, default or models:/NAME@ALIAS")


def default_trainer_settings(uri: str, model_name: str, model_alias: str) -> TrainerSettings:
    """``trainer run``'s settings (defaults and ``TRAINER_*``), into the store at ``uri``."""
    from trainer.settings import TrainerSettings

    return TrainerSettings(mlflow_tracking_uri=uri, model_name=model_name, model_alias=model_alias)


def content_key(settings: TrainerSettings) -> str:
    """A digest of what decides the trained model: settings, training code, data, XGBoost."""
    from trainer import dataset

    root = Path(dataset.__file__).parent
    parts: dict[str, Any] = {
        "settings": {
            k: str(v) for k, v in sorted(settings.model_dump().items()) if k not in NOT_IN_KEY
        },
        "code": {
            name: hashlib.sha256((root / name).read_bytes()).hexdigest() for name in TRAINING_CODE
        },
        "data": (root / "data" / "SHA256SUMS").read_text(),
        "xgboost": metadata.version("xgboost"),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def cached_default_model(
    cache: Path, model_name: str, model_alias: str, say: Callable[[str], None]
) -> str:
    """The tracking URI of a store holding the default model; trained now if not cached.

    The store is complete once its ``done`` marker exists; a half-written one (an interrupted
    training) is removed and trained again.
    """
    probe = default_trainer_settings("sqlite://", model_name, model_alias)
    key = content_key(probe)
    folder = (cache / key).resolve()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    if (folder / "done").is_file():
        say(f"model: default trainer run, cached under key {key} ({folder})")
        return uri
    from trainer.pipeline import run_once

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    say(f"model: training the default model (trainer run defaults, key {key}); minutes …")
    outcome = run_once(default_trainer_settings(uri, model_name, model_alias))
    if not outcome.decision.passed:
        raise ConfigError(f"the default model was not promoted: {outcome.decision}")
    (folder / "done").write_text(json.dumps({"key": key, "version": outcome.version}) + "\n")
    return uri


def quick_model(folder: Path, model_name: str, model_alias: str, say: Callable[[str], None]) -> str:
    """A one-trial champion in a fresh SQLite store in ``folder`` (as the test fixture does)."""
    from trainer.pipeline import run_once
    from trainer.settings import TrainerSettings

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    say("model: training a quick champion (1 trial) into a SQLite store …")
    settings = TrainerSettings(
        mlflow_tracking_uri=uri,
        model_name=model_name,
        model_alias=model_alias,
        trials=1,
        max_rounds=120,
        early_stopping_rounds=10,
        timeout_seconds=60,
        gate_min_roc_auc=0.5,
        gate_tolerance=1.0,
    )
    run_once(settings)
    return uri


def tree_count(bundle: ModelBundle) -> int:
    """Trees the served booster evaluates per record (every member of an ensemble)."""
    return int(bundle.booster.num_boosted_rounds()) * max(1, _trees_per_round(bundle))


def _trees_per_round(bundle: ModelBundle) -> int:
    config = json.loads(bundle.booster.save_config())
    params = config["learner"]["gradient_booster"]
    model = params.get("gbtree_model_param") or params.get("gbtree_train_param") or {}
    return int(model.get("num_parallel_tree", 1))
