"""The one definition of the feature encoding, shared by training and serving.

Numeric columns pass through as float32; each categorical column becomes a one-hot
block over the vocabulary seen in training. A missing (None / NaN) or unseen category
encodes as an all-zero block, which the model learned from UCI's own ``?`` values.
The path is vectorised numpy: one dict lookup per categorical value, no pandas.

``codes`` always covers all 14 input features (the drift profile watches every one);
``matrix`` leaves out the columns in ``excluded``, which the model does not use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from trainer.model.columns import CATEGORICAL_COLUMNS, NUMERIC_COLUMNS

FloatMatrix = npt.NDArray[np.float32]
CodeMatrix = npt.NDArray[np.int32]

MODEL_EXCLUDED: tuple[str, ...] = ("education", "fnlwgt")
"""Columns kept out of the model matrix by default (the drift profile still watches them).

``education`` is a relabelling of ``education_num`` (one value per level): its 16 one-hot
columns add nothing but more ways to split on noise. ``fnlwgt`` is the census sampling
weight, how many people a row stands for, not a property of the applicant. Decided on
adult.data only: in 5-fold cross-validation of the whole tuning pipeline, dropping both gave
the same ROC-AUC and accuracy/F1 no worse, with 17 fewer columns to train and score
(figures: docs/decisions.md). Never decided on adult.test.
"""


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
        excluded: Iterable[str] = (),
    ) -> None:
        self.numeric = tuple(numeric)
        self.categorical = tuple(categorical)
        self.vocabularies = {c: tuple(vocabularies[c]) for c in self.categorical}
        self.excluded = tuple(c for c in (*self.numeric, *self.categorical) if c in set(excluded))
        unknown = set(excluded) - set(self.excluded)
        if unknown:
            raise ValueError(f"cannot exclude unknown columns: {sorted(unknown)}")
        self._lookup = {c: {v: i for i, v in enumerate(vs)} for c, vs in self.vocabularies.items()}
        # Model-matrix layout: kept numeric columns, then a one-hot block per kept categorical.
        self._numeric_kept = np.asarray(
            [i for i, c in enumerate(self.numeric) if c not in self.excluded], dtype=np.intp
        )
        self._categorical_kept = np.asarray(
            [j for j, c in enumerate(self.categorical) if c not in self.excluded], dtype=np.intp
        )
        offsets = []
        pos = len(self._numeric_kept)
        for j in self._categorical_kept:
            offsets.append(pos)
            pos += len(self.vocabularies[self.categorical[j]])
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.n_features = pos

    @classmethod
    def fit(
        cls, columns: Mapping[str, Sequence[Any]], excluded: Iterable[str] = MODEL_EXCLUDED
    ) -> FeatureEncoder:
        """Learn the vocabularies (sorted, missing left out) from training columns."""
        vocab = {
            c: sorted({str(v) for v in columns[c] if _present(v)}) for c in CATEGORICAL_COLUMNS
        }
        return cls(vocab, excluded=excluded)

    @property
    def feature_names(self) -> list[str]:
        """Names of the model-matrix columns, in order."""
        names = [self.numeric[i] for i in self._numeric_kept]
        for j in self._categorical_kept:
            col = self.categorical[j]
            names.extend(f"{col}__{value}" for value in self.vocabularies[col])
        return names

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
        """The dense model matrix: kept numeric columns, then one one-hot block per categorical."""
        n = len(batch)
        n_numeric = len(self._numeric_kept)
        out = np.zeros((n, self.n_features), dtype=np.float32)
        if n_numeric == len(self.numeric):
            out[:, :n_numeric] = batch.numeric
        else:
            out[:, :n_numeric] = batch.numeric[:, self._numeric_kept]
        codes = batch.codes
        if len(self._categorical_kept) != len(self.categorical):
            codes = codes[:, self._categorical_kept]
        rows, cols = np.nonzero(codes >= 0)
        out[rows, self._offsets[cols] + codes[rows, cols]] = 1.0
        return out

    def encode(self, columns: Mapping[str, Sequence[Any]]) -> FloatMatrix:
        return self.matrix(self.codes(columns))

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "categorical": list(self.categorical),
            "vocabularies": {c: list(v) for c, v in self.vocabularies.items()},
            "excluded": list(self.excluded),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureEncoder:
        return cls(
            data["vocabularies"],
            data["numeric"],
            data["categorical"],
            excluded=data.get("excluded", ()),
        )


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
