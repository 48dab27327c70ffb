"""Real capture files without Kafka: predictions and outcomes written through CaptureLocation.

``CaptureWriter`` keeps a running offset per (kind, partition), as the archiver would, and
writes each call as one immutable Parquet file in the date folder of its first record. Used
by the monitor's unit tests and by its integration test against a real Prometheus.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from stream_worker.capture.layout import OUTCOMES, PREDICTIONS, CaptureLocation
from trainer.model.columns import NEGATIVE_LABEL, POSITIVE_LABEL

MODEL = "adult-income"


@dataclass(frozen=True)
class Prediction:
    applicant_id: str
    probability: float
    model_version: str
    scored_at: datetime
    threshold: float = 0.5
    model_name: str = MODEL


@dataclass(frozen=True)
class Outcome:
    applicant_id: str
    positive: bool
    observed_at: datetime
    arrived_at: datetime | None = None  # the Kafka timestamp; observed_at when None


@dataclass
class CaptureWriter:
    root: Path
    _offsets: dict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))

    @property
    def uri(self) -> str:
        return str(self.root)

    @property
    def location(self) -> CaptureLocation:
        return CaptureLocation.from_uri(str(self.root))

    def _source(self, kind: str, partition: int, n: int) -> tuple[list[int], list[int]]:
        first = self._offsets[(kind, partition)]
        self._offsets[(kind, partition)] = first + n
        return [partition] * n, list(range(first, first + n))

    def predictions(self, rows: Sequence[Prediction], partition: int = 0) -> str:
        partitions, offsets = self._source(PREDICTIONS, partition, len(rows))
        table = pa.table(
            {
                "applicant_id": [r.applicant_id for r in rows],
                "probability": [r.probability for r in rows],
                "label": [
                    POSITIVE_LABEL if r.probability >= r.threshold else NEGATIVE_LABEL for r in rows
                ],
                "threshold": [r.threshold for r in rows],
                "model_name": [r.model_name for r in rows],
                "model_version": [r.model_version for r in rows],
                "scored_at": [r.scored_at for r in rows],
                "latency_ms": [1.0] * len(rows),
                "partition": partitions,
                "offset": offsets,
                "timestamp": [r.scored_at for r in rows],
            }
        )
        return self.location.write(PREDICTIONS, table, rows[0].scored_at.date(), partition)

    def outcomes(self, rows: Sequence[Outcome], partition: int = 0) -> str:
        partitions, offsets = self._source(OUTCOMES, partition, len(rows))
        arrived = [r.arrived_at or r.observed_at for r in rows]
        table = pa.table(
            {
                "applicant_id": [r.applicant_id for r in rows],
                "label": [POSITIVE_LABEL if r.positive else NEGATIVE_LABEL for r in rows],
                "observed_at": [r.observed_at for r in rows],
                "partition": partitions,
                "offset": offsets,
                "timestamp": arrived,
            }
        )
        return self.location.write(OUTCOMES, table, arrived[0].date(), partition)

    def corrupt_file(self, kind: str, day: datetime, name: str = "part-9-broken.parquet") -> Path:
        """A file with a Parquet name and garbage inside (a truncated upload, say)."""
        folder = self.root / kind / f"date={day.date().isoformat()}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(b"PAR1 this is not a parquet file")
        return path


def calibrated_traffic(
    n: int,
    *,
    seed: int,
    version: str,
    start: datetime,
    spacing: timedelta,
    threshold: float = 0.5,
    prefix: str | None = None,
    noise: float = 0.0,
) -> tuple[list[Prediction], npt.NDArray[np.bool_]]:
    """``n`` predictions whose labels are drawn from calibrated probabilities.

    Returns the predictions (scored ``spacing`` apart from ``start``) and the true labels.
    With ``noise`` > 0 the served probability is the calibrated one blurred on the logit
    scale: a worse model (lower ROC-AUC) on the same applicants.
    """
    rng = np.random.default_rng(seed)
    truth = rng.beta(0.2, 0.63, n).clip(1e-6, 1 - 1e-6)
    labels = rng.random(n) < truth
    served = truth
    if noise:
        logit = np.log(truth / (1 - truth)) + rng.normal(0.0, noise, n)
        served = 1 / (1 + np.exp(-logit))
    prefix = prefix or f"v{version}"
    predictions = [
        Prediction(f"{prefix}-{i}", float(served[i]), version, start + i * spacing, threshold)
        for i in range(n)
    ]
    return predictions, labels
