"""Load, verify and clean the UCI Adult data; make the fixed, seeded splits."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from trainer.exceptions import DataError
from trainer.model.columns import (
    CATEGORICAL_COLUMNS,
    FEATURE_COLUMNS,
    NEGATIVE_LABEL,
    NUMERIC_COLUMNS,
    POSITIVE_LABEL,
    TARGET,
)
from trainer.settings import DataSource

RAW_COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS, TARGET)
DATA_FILES: tuple[str, ...] = ("adult.data", "adult.test")


@dataclass(frozen=True)
class AdultData:
    """The official splits, cleaned; ``checksum`` identifies the exact input bytes."""

    train: pd.DataFrame
    test: pd.DataFrame
    checksum: str
    source: str


@dataclass(frozen=True)
class Splits:
    """Train/validation from adult.data (stratified, seeded) and the untouched adult.test."""

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def to_snake(name: str) -> str:
    return name.strip().replace("-", "_").lower()


def bundled_dir() -> Path:
    """The snapshot shipped as package data, found from any working directory."""
    return Path(str(resources.files("trainer") / "data"))


def _expected_checksums(folder: Path) -> dict[str, str]:
    sums = folder / "SHA256SUMS"
    if not sums.is_file():
        raise DataError(f"checksum file missing: {sums}")
    expected: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            expected[name.strip().lstrip("*")] = digest
    return expected


def verify_checksums(folder: Path) -> str:
    """Check every data file against SHA256SUMS; return one digest over them all."""
    expected = _expected_checksums(folder)
    combined = hashlib.sha256()
    for name in DATA_FILES:
        path = folder / name
        if not path.is_file():
            raise DataError(f"data file missing: {path}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if name not in expected:
            raise DataError(f"{name} is not listed in {folder / 'SHA256SUMS'}")
        if digest != expected[name]:
            raise DataError(
                f"checksum mismatch for {path}: expected {expected[name][:12]}…, got {digest[:12]}…"
            )
        combined.update(digest.encode())
    return combined.hexdigest()


def _read_raw(text: str, name: str) -> pd.DataFrame:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("|")]
    if not lines:
        raise DataError(f"{name} is empty")
    frame = pd.read_csv(
        io.StringIO("\n".join(lines)),
        header=None,
        names=list(RAW_COLUMNS),
        sep=",",
        skipinitialspace=True,
        na_values=["?"],
        dtype=str,
        keep_default_na=False,
    )
    if frame[TARGET].isna().any() or frame.iloc[:, -1].eq("").any():
        raise DataError(
            f"{name} looks truncated: some rows have fewer than {len(RAW_COLUMNS)} fields"
        )
    return frame


def clean(frame: pd.DataFrame) -> pd.DataFrame:
    """Trim, map ``?`` to missing, strip the test file's trailing dot, enforce dtypes."""
    out = frame.rename(columns=to_snake).copy()
    missing = [c for c in RAW_COLUMNS if c not in out.columns]
    if missing:
        raise DataError(f"columns missing from the data: {', '.join(missing)}")
    out = out[list(RAW_COLUMNS)]
    for col in (*CATEGORICAL_COLUMNS, TARGET):
        values = out[col].astype("string").str.strip()
        out[col] = values.mask(values.isin(["?", ""]))
    out[TARGET] = out[TARGET].str.rstrip(".")
    bad_target = ~out[TARGET].isin([POSITIVE_LABEL, NEGATIVE_LABEL])
    if bad_target.any():
        raise DataError(
            f"unexpected income labels: {sorted(out.loc[bad_target, TARGET].unique())[:5]}"
        )
    for col in NUMERIC_COLUMNS:
        numbers = pd.to_numeric(out[col], errors="coerce")
        if numbers.isna().any():
            raise DataError(f"column {col} has {int(numbers.isna().sum())} non-numeric values")
        out[col] = numbers.astype("float64")
    for col in CATEGORICAL_COLUMNS:
        out[col] = out[col].astype(object).where(out[col].notna(), None)
    out[TARGET] = out[TARGET].astype(object)
    return out.reset_index(drop=True)


def load_bundled(folder: Path | None = None) -> AdultData:
    folder = folder or bundled_dir()
    checksum = verify_checksums(folder)
    frames = {}
    for name in DATA_FILES:
        try:
            text = (folder / name).read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{folder / name} is not UTF-8 text: {exc}") from exc
        frames[name] = clean(_read_raw(text, name))
    return AdultData(frames["adult.data"], frames["adult.test"], checksum, f"bundled:{folder}")


def from_ucimlrepo(features: pd.DataFrame, targets: pd.DataFrame) -> AdultData:
    """Convert ucimlrepo's concatenated frame (32,561 train rows, then test) to our splits."""
    frame = pd.concat([features, targets], axis=1).astype(str)
    frame = frame.replace({"nan": "?", "None": "?"})
    cleaned = clean(frame)
    n_train = 32561
    if len(cleaned) <= n_train:
        raise DataError(f"UCI source returned {len(cleaned)} rows, expected 48,842")
    payload = pd.util.hash_pandas_object(cleaned, index=False).to_numpy().tobytes()
    checksum = hashlib.sha256(payload).hexdigest()
    return AdultData(
        cleaned.iloc[:n_train].reset_index(drop=True),
        cleaned.iloc[n_train:].reset_index(drop=True),
        checksum,
        "uci:id=2",
    )


def load_uci() -> AdultData:  # pragma: no cover - needs the UCI site, unreachable here
    try:
        from ucimlrepo import fetch_ucirepo
    except ImportError as exc:
        raise DataError(
            "the UCI source needs ucimlrepo: pip install 'income-stream-scorer[uci]'"
        ) from exc
    try:
        repo: Any = fetch_ucirepo(id=2)
    except Exception as exc:
        raise DataError(f"cannot fetch the UCI Adult data: {exc}") from exc
    return from_ucimlrepo(repo.data.features, repo.data.targets)


def load(source: DataSource = DataSource.bundled, data_dir: str | Path | None = None) -> AdultData:
    """The live UCI copy, or the bundled snapshot (from ``data_dir`` when given), verified."""
    if source is DataSource.uci:
        return load_uci()
    return load_bundled(Path(data_dir) if data_dir is not None else None)


def labels(frame: pd.DataFrame) -> np.ndarray[Any, np.dtype[np.int8]]:
    positive: np.ndarray[Any, np.dtype[np.bool_]] = frame[TARGET].to_numpy() == POSITIVE_LABEL
    return positive.astype(np.int8)


def split(data: AdultData, validation_fraction: float, seed: int) -> Splits:
    train, valid = train_test_split(
        data.train,
        test_size=validation_fraction,
        random_state=seed,
        stratify=data.train[TARGET],
    )
    return Splits(train.reset_index(drop=True), valid.reset_index(drop=True), data.test)
