"""The model bundle: booster + encoding + threshold + drift profile + metadata, in one folder.

The worker loads the folder directly (no pyfunc overhead on the hot path); MLflow users can
load the same folder through :class:`AdultIncomeModel`, a pyfunc wrapper.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from trainer.exceptions import TrainerError
from trainer.model.columns import FEATURE_COLUMNS, NEGATIVE_LABEL, POSITIVE_LABEL
from trainer.model.features import EncodedBatch, FeatureEncoder
from trainer.model.profile import ReferenceProfile

FORMAT_VERSION = 1
BOOSTER_FILE = "booster.ubj"
BUNDLE_FILE = "bundle.json"
SAMPLE_FILE = "reference_sample.json"
SMOKE_TOLERANCE = 1e-5


BUNDLE_ARTIFACT = "bundle"
"""The bundle's key among the pyfunc model's artifacts (``log_model(artifacts=...)``)."""
BUNDLE_IN_MODEL = Path("artifacts") / BUNDLE_ARTIFACT
"""Where the bundle folder sits inside a logged or downloaded model version: MLflow's pyfunc
flavour keeps each artifact under ``artifacts/<key>``. The trainer logs it there and the worker
loads it from there; this is the one definition of that path."""


@dataclass
class ModelBundle:
    """Everything needed to score: ``predict`` is the one scoring function of the project.

    ``log_class_weight`` undoes the class weighting used in training (prior correction),
    so probabilities stay calibrated: p = sigmoid(margin - log(w)).
    """

    booster: xgb.Booster
    encoder: FeatureEncoder
    threshold: float
    profile: ReferenceProfile
    log_class_weight: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)
    reference_records: list[dict[str, Any]] = field(default_factory=list)
    reference_probabilities: list[float] = field(default_factory=list)

    def predict_encoded(self, batch: EncodedBatch) -> npt.NDArray[np.float64]:
        """P(>50K) for an encoded batch: one ``inplace_predict`` call."""
        if len(batch) == 0:
            return np.empty(0, dtype=np.float64)
        margin = self.booster.inplace_predict(self.encoder.matrix(batch), predict_type="margin")
        z = np.asarray(margin, dtype=np.float64) - self.log_class_weight
        return 1.0 / (1.0 + np.exp(-z))

    def predict(self, columns: Mapping[str, Sequence[Any]]) -> npt.NDArray[np.float64]:
        return self.predict_encoded(self.encoder.codes(columns))

    def labels(self, probabilities: npt.NDArray[np.float64]) -> list[str]:
        return [POSITIVE_LABEL if p >= self.threshold else NEGATIVE_LABEL for p in probabilities]

    def smoke_test(self) -> None:
        """Score the stored reference sample; compare with the probabilities saved in training."""
        if not self.reference_records:
            raise TrainerError("bundle has no reference sample to smoke-test")
        columns = records_to_columns(self.reference_records)
        got = self.predict(columns)
        want = np.asarray(self.reference_probabilities, dtype=np.float64)
        if got.shape != want.shape or not np.all(np.isfinite(got)):
            raise TrainerError("smoke test: predictions are missing or not finite")
        worst = float(np.max(np.abs(got - want)))
        if worst > SMOKE_TOLERANCE:
            raise TrainerError(f"smoke test: predictions differ from training by up to {worst:.2e}")

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        self.booster.save_model(str(folder / BOOSTER_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "encoder": self.encoder.to_dict(),
            "threshold": self.threshold,
            "log_class_weight": self.log_class_weight,
            "profile": self.profile.to_dict(),
            "metadata": self.metadata,
        }
        (folder / BUNDLE_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        sample = {"records": self.reference_records, "probabilities": self.reference_probabilities}
        (folder / SAMPLE_FILE).write_text(json.dumps(sample))
        return folder

    @classmethod
    def load(cls, folder: Path, nthread: int | None = None) -> ModelBundle:
        try:
            meta = json.loads((folder / BUNDLE_FILE).read_text())
            sample = json.loads((folder / SAMPLE_FILE).read_text())
            booster = xgb.Booster()
            booster.load_model(str(folder / BOOSTER_FILE))
        except (OSError, ValueError, xgb.core.XGBoostError) as exc:
            raise TrainerError(f"cannot load model bundle from {folder}: {exc}") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise TrainerError(f"unsupported bundle format {meta.get('format_version')!r}")
        if nthread is not None:
            booster.set_param({"nthread": nthread})
        return cls(
            booster=booster,
            encoder=FeatureEncoder.from_dict(meta["encoder"]),
            threshold=float(meta["threshold"]),
            profile=ReferenceProfile.from_dict(meta["profile"]),
            log_class_weight=float(meta.get("log_class_weight", 0.0)),
            metadata=dict(meta.get("metadata", {})),
            reference_records=list(sample["records"]),
            reference_probabilities=[float(p) for p in sample["probabilities"]],
        )


def records_to_columns(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Row dicts (snake_case keys) to the column lists the encoder takes."""
    return {col: [r.get(col) for r in records] for col in FEATURE_COLUMNS}


def class_weight_offset(weight: float) -> float:
    return math.log(weight) if weight > 0 else 0.0
