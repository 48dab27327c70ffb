"""MLflow pyfunc view of the bundle, so any MLflow user can load and call the model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from trainer.bundle import ModelBundle, records_to_columns


class AdultIncomeModel(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """Applicants in (snake_case or UCI hyphenated columns), probability and label out."""

    def load_context(self, context: Any) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

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
