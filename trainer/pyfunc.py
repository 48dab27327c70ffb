"""MLflow pyfunc view of the bundle, so any MLflow user can load and call the model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import AnyType, ColSpec, DataType, Schema

from trainer.model.bundle import BUNDLE_ARTIFACT, ModelBundle, records_to_columns
from trainer.model.columns import CATEGORICAL_COLUMNS, FEATURE_COLUMNS


def model_signature() -> ModelSignature:
    """Inputs: the 14 snake_case features; outputs: probability and label.

    Written out rather than inferred from a sample: inference types the numbers ``long`` and
    marks a categorical required whenever the sample happens to have no gap, and MLflow's
    schema enforcement then refuses float inputs and missing categories that the model scores
    fine. Numbers are ``any`` because JSON callers send ints and pandas callers floats, and
    MLflow will not convert int64 to double; the encoder casts both to float32.
    """
    inputs = Schema(
        [
            ColSpec(DataType.string, c, required=False)
            if c in CATEGORICAL_COLUMNS
            else ColSpec(AnyType(), c)
            for c in FEATURE_COLUMNS
        ]
    )
    outputs = Schema([ColSpec(DataType.double, "probability"), ColSpec(DataType.string, "label")])
    return ModelSignature(inputs=inputs, outputs=outputs)


class AdultIncomeModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """Applicants in (snake_case or UCI hyphenated columns), probability and label out."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts[BUNDLE_ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        frame = model_input.rename(columns=lambda c: str(c).replace("-", "_"))
        records = frame.to_dict(orient="records")
        for record in records:
            for key, value in record.items():
                if isinstance(value, float) and math.isnan(value):
                    record[key] = None
        probabilities = self.bundle.predict(records_to_columns(records))
        return pd.DataFrame(
            {"probability": probabilities, "label": self.bundle.labels(probabilities)}
        )
