"""Loading, verifying and cleaning the bundled UCI Adult snapshot."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from trainer import dataset
from trainer.exceptions import DataError
from trainer.model import columns


@pytest.fixture(scope="module")
def adult() -> dataset.AdultData:
    return dataset.load_bundled()


def _copy_bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "adult"
    shutil.copytree(dataset.bundled_dir(), folder)
    return folder


def test_bundled_snapshot_has_official_row_counts(adult: dataset.AdultData) -> None:
    assert len(adult.train) == 32561
    assert len(adult.test) == 16281
    assert list(adult.train.columns) == list(dataset.RAW_COLUMNS)


def test_cleaning_strips_dots_and_maps_question_marks(adult: dataset.AdultData) -> None:
    assert set(adult.test["income"]) == {"<=50K", ">50K"}
    assert set(adult.train["income"]) == {"<=50K", ">50K"}
    # UCI marks missing as '?': about 1,836 workclass values in adult.data
    assert adult.train["workclass"].isna().sum() == 1836
    assert "?" not in set(adult.train["occupation"].dropna())
    assert all(v == v.strip() for v in adult.train["education"].dropna().unique())


def test_dtypes_are_enforced(adult: dataset.AdultData) -> None:
    for col in columns.NUMERIC_COLUMNS:
        assert adult.train[col].dtype == "float64"
    assert adult.train["age"].min() >= 17


def test_positive_rate_matches_uci(adult: dataset.AdultData) -> None:
    rate = dataset.labels(adult.train).mean()
    assert rate == pytest.approx(0.2408, abs=1e-3)


def test_checksum_is_stable(adult: dataset.AdultData) -> None:
    assert dataset.load_bundled().checksum == adult.checksum


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    with (folder / "adult.data").open("a") as fh:
        fh.write(
            "39, State-gov, 1, Bachelors, 13, Never-married, x, y, White, Male, 0, 0, 40, US, "
            "<=50K\n"
        )
    with pytest.raises(DataError, match=r"checksum mismatch for .*adult\.data"):
        dataset.load_bundled(folder)


def test_truncated_file_is_refused_even_with_matching_checksum(tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    data = folder / "adult.data"
    data.write_text("39, State-gov, 77516, Bachelors, 13\n")
    _rewrite_sums(folder)
    with pytest.raises(DataError, match="truncated"):
        dataset.load_bundled(folder)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    (folder / "adult.test").write_text("")
    _rewrite_sums(folder)
    with pytest.raises(DataError, match="empty"):
        dataset.load_bundled(folder)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    folder = _copy_bundle(tmp_path)
    (folder / "adult.test").unlink()
    with pytest.raises(DataError, match="missing"):
        dataset.load_bundled(folder)


def test_split_is_stratified_and_seeded(adult: dataset.AdultData) -> None:
    a = dataset.split(adult, 0.2, seed=7)
    b = dataset.split(adult, 0.2, seed=7)
    pd.testing.assert_frame_equal(a.valid, b.valid)
    assert len(a.valid) == pytest.approx(0.2 * 32561, abs=1)
    assert dataset.labels(a.valid).mean() == pytest.approx(dataset.labels(a.train).mean(), abs=2e-3)
    assert a.test is adult.test


def test_ucimlrepo_frame_is_converted(adult: dataset.AdultData) -> None:
    # ucimlrepo returns both files concatenated with hyphenated names and raw labels
    raw = pd.concat([adult.train, adult.test]).rename(columns=lambda c: c.replace("_", "-"))
    features = raw.drop(columns=["income"])
    targets = raw[["income"]].replace({">50K": ">50K.", "<=50K": "<=50K"})
    converted = dataset.from_ucimlrepo(features, targets)
    assert len(converted.train) == 32561
    assert len(converted.test) == 16281
    assert converted.train["workclass"].isna().sum() == 1836
    assert set(converted.test["income"]) == {"<=50K", ">50K"}


def _rewrite_sums(folder: Path) -> None:
    import hashlib

    lines = [
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}"
        for n in ("adult.data", "adult.test")
    ]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
