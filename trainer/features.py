"""The one definition of the feature encoding, shared by training and serving.

Numeric columns pass through as float32; each categorical column becomes a one-hot
block over the vocabulary seen in training. A missing (None / NaN) or unseen category
encodes as an all-zero block, which the model learned from UCI's own ``?`` values.
The path is vectorised numpy: one dict lookup per categorical value, no pandas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.dataset import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS

FloatMatrix = npt.NDArray[np.float32]
CodeMatrix = npt.NDArray[np.int32]


@dataclass(frozen=True)
class EncodedBatch:
    """Numeric values (n × numeric) and category codes (n × categorical, -1 = missing/unseen)."""

    numeric: FloatMatrix
    codes: CodeMatrix

    def __len__(self) -> int:
        return int(self.numeric.shape[0])


class FeatureEncoder:
    """Vocabularies and column order; ``encode`` maps raw columns to the model matrix."""

    def __init__(
        self,
        vocabularies: Mapping[str, Sequence[str]],
        numeric: Sequence[str] = NUMERIC_COLUMNS,
        categorical: Sequence[str] = CATEGORICAL_COLUMNS,
    ) -> None:
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.vocabularies = {c: tuple(vocabularies[c]) for c in self.categorical}
        self._lookup = {c: {v: i for i, v in enumerate(vs)} for c, vs in self.vocabularies.items()}
        offsets = []
        pos = len(self.numeric)
        for col in self.categorical:
            offsets.append(pos)
            pos += len(self.vocabularies[col])
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.n_features = pos

    @classmethod
    def fit(cls, columns: Mapping[str, Sequence[Any]]) -> FeatureEncoder:
        vocab = {
            c: sorted({str(v) for v in columns[c] if _present(v)}) for c in CATEGORICAL_COLUMNS
        }
        return cls(vocab)

    @property
    def feature_names(self) -> list[str]:
        names = list(self.numeric)
        for col in self.categorical:
            names.extend(f"{col}__{value}" for value in self.vocabularies[col])
        return names

    @property
    def numeric_indices(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.numeric)}

    def codes(self, columns: Mapping[str, Sequence[Any]]) -> EncodedBatch:
        """Convert raw columns (lists or arrays) to numeric values and category codes."""
        numeric = np.column_stack(
            [np.asarray(columns[c], dtype=np.float32) for c in self.numeric]
        ).astype(np.float32, copy=False)
        n = numeric.shape[0]
        codes = np.empty((n, len(self.categorical)), dtype=np.int32)
        for j, col in enumerate(self.categorical):
            get = self._lookup[col].get
            codes[:, j] = [get(v, -1) if isinstance(v, str) else -1 for v in columns[col]]
        return EncodedBatch(numeric, codes)

    def matrix(self, batch: EncodedBatch) -> FloatMatrix:
        """The dense model matrix: numeric block, then one one-hot block per categorical."""
        n = len(batch)
        out = np.zeros((n, self.n_features), dtype=np.float32)
        out[:, : len(self.numeric)] = batch.numeric
        rows, cols = np.nonzero(batch.codes >= 0)
        out[rows, self._offsets[cols] + batch.codes[rows, cols]] = 1.0
        return out

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> FloatMatrix:
        return self.matrix(self.codes(columns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "vocabularies": {c: list(v) for c, v in self.vocabularies.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        return cls(data["vocabularies"], data["numeric"], data["categorical"])


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def frame_columns(frame: Any) -> dict[str, list[Any]]:
    """Columns of a cleaned DataFrame as plain lists (missing categoricals as None)."""
    out: dict[str, list[Any]] = {}
    for col in (*NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS):
        values = frame[col].tolist()
        if col in CATEGORICAL_COLUMNS:
            values = [v if isinstance(v, str) else None for v in values]
        out[col] = values
    return out
