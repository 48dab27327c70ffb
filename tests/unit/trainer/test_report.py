"""Unit tests for trainer.report.data_report."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.model.columns import FEATURE_COLUMNS
from trainer.report import REPORT_FILENAME, TOP_CATEGORIES, data_report

ADULT_DATA = Path(__file__).resolve().parents[3] / "trainer" / "data" / "adult.data"
COLUMNS = [*FEATURE_COLUMNS, "income"]
SECTION_IDS = [
    "row-counts",
    "class-balance",
    "missing-values",
    "numeric-summary",
    "histograms",
    "target-rate",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(17, 90, n),
            "workclass": rng.choice(["Private", "State-gov", "Self-emp-inc"], n),
            "fnlwgt": rng.integers(10_000, 1_000_000, n),
            "education": rng.choice(["Bachelors", "HS-grad", "Masters"], n),
            "education_num": rng.integers(1, 17, n),
            "marital_status": rng.choice(["Never-married", "Married-civ-spouse"], n),
            "occupation": rng.choice(["Sales", "Tech-support", "Craft-repair"], n),
            "relationship": rng.choice(["Husband", "Wife", "Own-child"], n),
            "race": rng.choice(["White", "Black"], n),
            "sex": rng.choice(["Male", "Female"], n),
            "capital_gain": np.where(rng.random(n) < 0.9, 0, rng.integers(1, 99_999, n)),
            "capital_loss": np.where(rng.random(n) < 0.95, 0, rng.integers(1, 4_000, n)),
            "hours_per_week": rng.integers(1, 99, n),
            # country_k appears 2 * (19 - k) + 1 times (fewer for small n): distinct
            # frequencies, decreasing with k, so the top-15 cut is well defined.
            "native_country": [f"country_{19 - int(np.sqrt(i)):02d}" for i in range(n)],
            "income": rng.choice(["<=50K", ">50K"], n, p=[0.75, 0.25]),
        }
    )
    frame.loc[: n // 10 - 1, "workclass"] = np.nan  # first 10 % missing
    for col in ("workclass", "education", "occupation", "native_country"):
        frame[col] = frame[col].astype("category")
    return frame


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    train, test = _frame(400, seed=1), _frame(200, seed=2)
    # "Private" is always >50K in train, never in test: a rate the report must show.
    train["income"] = np.where(train["workclass"] == "Private", ">50K", "<=50K")
    test["income"] = np.where(test["workclass"] == "Private", "<=50K", ">50K")
    path = data_report(train, test, tmp_path_factory.mktemp("report"))
    return path.read_text(encoding="utf-8")


def test_report_written_to_out_dir(tmp_path: Path) -> None:
    out_dir = tmp_path / "reports" / "run-1"
    path = data_report(_frame(50, seed=0), _frame(30, seed=1), out_dir)
    assert path == out_dir / REPORT_FILENAME
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_report_has_every_section(report_html: str) -> None:
    for section in SECTION_IDS:
        assert f'id="{section}"' in report_html


def test_report_embeds_a_decodable_png_and_no_external_assets(report_html: str) -> None:
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', report_html)
    assert images
    assert base64.b64decode(images[0]).startswith(PNG_MAGIC)
    assert "http://" not in report_html
    assert "https://" not in report_html
    assert not re.search(r'src="(?!data:)', report_html)


def test_report_row_counts_and_class_balance(report_html: str) -> None:
    row_counts = report_html.split('id="row-counts"')[1].split("<h2")[0]
    assert "<td>400</td>" in row_counts
    assert "<td>200</td>" in row_counts
    assert "<td>600</td>" in row_counts
    balance = report_html.split('id="class-balance"')[1].split("<h2")[0]
    assert "&gt;50K" in balance  # labels are HTML-escaped
    assert "&lt;=50K" in balance


def test_report_missing_rate(report_html: str) -> None:
    missing = report_html.split('id="missing-values"')[1].split("<h2")[0]
    workclass_row = missing.split(">workclass<")[1].split("</tr>")[0]
    assert workclass_row.count("10.00%") == 2  # 40/400 train, 20/200 test
    age_row = missing.split(">age<")[1].split("</tr>")[0]
    assert age_row.count("0.00%") == 2


def test_report_numeric_summary_lists_numeric_columns_only(report_html: str) -> None:
    summary = report_html.split('id="numeric-summary"')[1].split("<h2")[0]
    for col in ("age", "fnlwgt", "education_num", "capital_gain", "capital_loss"):
        assert f">{col}<" in summary
    assert ">workclass<" not in summary
    assert ">income<" not in summary


def test_report_target_rate_by_category(report_html: str) -> None:
    rates = report_html.split('id="target-rate"')[1]
    workclass = rates.split(">workclass ")[1].split("</table>")[0]
    private_row = workclass.split(">Private<")[1].split("</tr>")[0]
    percentages = re.findall(r"(\d+\.\d\d)%", private_row)
    assert percentages == ["100.00", "0.00"]
    assert "(missing)" in workclass
    assert ">income " not in rates  # the target is not a feature


def test_report_keeps_only_the_top_categories(report_html: str) -> None:
    countries = report_html.split(">native_country ")[1].split("</table>")[0]
    assert countries.count("<tr>") == 1 + TOP_CATEGORIES  # header + rows
    shown = set(re.findall(r">(country_\d\d)<", countries))
    assert shown == {f"country_{i:02d}" for i in range(TOP_CATEGORIES)}


def test_report_escapes_html_in_category_names(tmp_path: Path) -> None:
    train = _frame(60, seed=3)
    train["occupation"] = train["occupation"].astype(object)
    train.loc[0, "occupation"] = "<script>alert(1)</script>"
    html_text = data_report(train, _frame(30, seed=4), tmp_path).read_text(encoding="utf-8")
    assert "<script>" not in html_text
    assert "&lt;script&gt;" in html_text


def test_report_rejects_frames_without_target(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="income"):
        data_report(_frame(20, seed=0).drop(columns="income"), _frame(20, seed=1), tmp_path)


def test_report_on_the_real_adult_data(tmp_path: Path) -> None:
    frame = pd.read_csv(
        ADULT_DATA,
        header=None,
        names=COLUMNS,
        sep=",",
        skipinitialspace=True,
        na_values="?",
    )
    train, test = frame.iloc[:24_000], frame.iloc[24_000:]
    html_text = data_report(train, test, tmp_path).read_text(encoding="utf-8")

    assert "<td>24,000</td>" in html_text
    assert f"<td>{len(frame) - 24_000:,}</td>" in html_text
    missing = html_text.split('id="missing-values"')[1].split("<h2")[0]
    occupation_train_rate = frame["occupation"].iloc[:24_000].isna().mean()
    assert occupation_train_rate > 0.04  # '?' was read as missing
    assert f"{occupation_train_rate:.2%}" in missing.split(">occupation<")[1].split("</tr>")[0]
    education = html_text.split(">education ")[1].split("</table>")[0]
    assert "(top 15 of 16)" in html_text.split(">education ")[1]
    assert ">Doctorate<" in education
