"""A self-contained HTML report on the train and test splits of the Adult data.

One file, no external assets: tables are plain HTML and the histogram figure is an embedded
base64 PNG, so the report can be attached to an MLflow run and opened anywhere.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

REPORT_FILENAME = "data_report.html"
MISSING_LABEL = "(missing)"
TOP_CATEGORIES = 15
HISTOGRAM_BINS = 30
# Above this share of zeros (capital_gain, capital_loss) a histogram is one spike at 0;
# plotting only the non-zero values shows the shape that matters.
SPIKE_AT_ZERO_SHARE = 0.5
_NOT_AVAILABLE = "&ndash;"  # table cells are HTML already

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1, h2, h3 { font-weight: 600; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.name, th.name { text-align: left; }
.bar { display: inline-block; height: 0.8em; background: #4c78a8; vertical-align: middle; }
.note { color: #666; font-size: 0.9em; }
"""


def _is_positive(frame: pd.DataFrame, target: str, positive_label: str) -> pd.Series:
    return frame[target].astype(object).eq(positive_label)


def _feature_columns(frames: dict[str, pd.DataFrame], target: str) -> tuple[list[str], list[str]]:
    """Numeric and categorical feature columns, in the train frame's order."""
    train = frames["train"]
    features = [col for col in train.columns if col != target]
    numeric = [
        col
        for col in features
        if pd.api.types.is_numeric_dtype(train[col]) and not pd.api.types.is_bool_dtype(train[col])
    ]
    categorical = [col for col in features if col not in numeric]
    return numeric, categorical


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], name_columns: int = 1) -> str:
    """An HTML table; cells must already be escaped. The first ``name_columns`` are text."""

    def cell(tag: str, index: int, content: str) -> str:
        css = ' class="name"' if index < name_columns else ""
        return f"<{tag}{css}>{content}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(value: float) -> str:
    return _NOT_AVAILABLE if np.isnan(value) else f"{value:.2%}"


def _bar(share: float) -> str:
    width = 0.0 if np.isnan(share) else 100.0 * share
    return f'<span class="bar" style="width:{width:.1f}px"></span> {_pct(share)}'


def _num(value: float) -> str:
    if np.isnan(value):
        return _NOT_AVAILABLE
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.3f}"


def _esc(value: object) -> str:
    return html.escape(str(value))


def _row_counts_section(frames: dict[str, pd.DataFrame]) -> str:
    rows = [(split, f"{len(frame):,}") for split, frame in frames.items()]
    rows.append(("total", f"{sum(len(frame) for frame in frames.values()):,}"))
    return '<h2 id="row-counts">Row counts</h2>' + _table(["split", "rows"], rows)


def _class_balance_section(
    frames: dict[str, pd.DataFrame], target: str, positive_label: str
) -> str:
    labels = sorted({str(v) for frame in frames.values() for v in frame[target].dropna().unique()})
    rows = []
    for split, frame in frames.items():
        counts = frame[target].astype(object).value_counts(dropna=False)
        row = [split]
        for label in labels:
            count = int(counts.get(label, 0))
            row.append(f"{count:,} ({_pct(count / len(frame)) if len(frame) else _NOT_AVAILABLE})")
        row.append(_bar(float(_is_positive(frame, target, positive_label).mean())))
        rows.append(row)
    header = ["split", *(_esc(label) for label in labels), f"{_esc(positive_label)} share"]
    return '<h2 id="class-balance">Class balance</h2>' + _table(header, rows)


def _missing_section(frames: dict[str, pd.DataFrame]) -> str:
    columns = list(dict.fromkeys(col for frame in frames.values() for col in frame.columns))
    rates = {split: frame.reindex(columns=columns).isna().mean() for split, frame in frames.items()}
    rows = [[_esc(col), *(_bar(float(rates[split][col])) for split in frames)] for col in columns]
    note = (
        '<p class="note">Share of rows with a missing value (UCI <code>?</code>); '
        "a column absent from a split counts as fully missing there.</p>"
    )
    return (
        '<h2 id="missing-values">Missing values</h2>'
        + note
        + _table(["column", *(f"{split} missing" for split in frames)], rows)
    )


def _summary_section(frames: dict[str, pd.DataFrame], numeric: list[str]) -> str:
    stats = ["count", "mean", "std", "min", "25%", "50%", "75%", "max"]
    described = {
        split: frame.reindex(columns=numeric).astype(float).describe().T
        for split, frame in frames.items()
    }
    rows = [
        [_esc(col), split, *(_num(float(described[split].loc[col, stat])) for stat in stats)]
        for col in numeric
        for split in frames
    ]
    return '<h2 id="numeric-summary">Numeric summary</h2>' + _table(
        ["column", "split", *stats], rows, name_columns=2
    )


def _png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=80)
    finally:
        fig.clear()
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _histogram_section(frames: dict[str, pd.DataFrame], numeric: list[str]) -> str:
    if not numeric:
        return '<h2 id="histograms">Histograms</h2><p class="note">No numeric columns.</p>'
    ncols = min(3, len(numeric))
    nrows = -(-len(numeric) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, col in zip(axes, numeric, strict=False):
        values = {
            split: pd.to_numeric(frame[col], errors="coerce").dropna().to_numpy(dtype=float)
            for split, frame in frames.items()
            if col in frame
        }
        combined = np.concatenate(list(values.values()))
        title = col
        if combined.size and (combined == 0).mean() > SPIKE_AT_ZERO_SHARE:
            title = f"{col} (non-zero only; {(combined == 0).mean():.0%} zero)"
            values = {split: data[data != 0] for split, data in values.items()}
            combined = combined[combined != 0]
        if combined.size == 0:
            ax.set_title(f"{col} (no values)")
            continue
        edges = np.histogram_bin_edges(combined, bins=HISTOGRAM_BINS)
        for split, data in values.items():
            if data.size:
                ax.hist(data, bins=edges, density=True, histtype="step", linewidth=1.5, label=split)
        ax.set_title(title, fontsize="medium")
        ax.legend(fontsize="small")
    for ax in axes[len(numeric) :]:
        ax.set_axis_off()
    uri = _png_data_uri(fig)
    return (
        '<h2 id="histograms">Histograms</h2>'
        '<p class="note">Density per split, shared bins.</p>'
        f'<img alt="Histograms of numeric columns" src="{uri}">'
    )


def _target_rate_section(
    frames: dict[str, pd.DataFrame], categorical: list[str], target: str, positive_label: str
) -> str:
    parts = [
        '<h2 id="target-rate">Target rate by category</h2>',
        f'<p class="note">Share of {_esc(positive_label)} per category; the '
        f"{TOP_CATEGORIES} most frequent categories of the train split.</p>",
    ]
    for col in categorical:
        grouped = {}
        for split, frame in frames.items():
            if col not in frame:
                continue
            keys = frame[col].astype(object).fillna(MISSING_LABEL).astype(str)
            grouped[split] = (
                _is_positive(frame, target, positive_label)
                .groupby(keys.to_numpy(), sort=False)
                .agg(["size", "mean"])
            )
        reference = grouped.get("train", next(iter(grouped.values()), None))
        if reference is None:
            continue
        top = reference["size"].sort_values(ascending=False, kind="stable").index[:TOP_CATEGORIES]
        rows = []
        for category in top:
            row = [_esc(category)]
            for split in frames:
                table = grouped.get(split)
                if table is not None and category in table.index:
                    row += [
                        f"{int(table.at[category, 'size']):,}",
                        _bar(table.at[category, "mean"]),
                    ]
                else:
                    row += ["0", _NOT_AVAILABLE]
            rows.append(row)
        header = ["category"]
        for split in frames:
            header += [f"{split} rows", f"{split} {_esc(positive_label)} rate"]
        shown = f"top {len(top)} of {len(reference)}"
        parts.append(f"<h3>{_esc(col)} <small>({shown})</small></h3>" + _table(header, rows))
    return "".join(parts)


def data_report(
    train: pd.DataFrame,
    test: pd.DataFrame,
    out_dir: Path,
    *,
    target: str = "income",
    positive_label: str = ">50K",
) -> Path:
    """Write ``data_report.html`` describing both splits into ``out_dir``; return its path.

    Sections: row counts, class balance, missing rate per column, numeric summary statistics
    and histograms, and the ``positive_label`` rate by category (top 15) of every
    non-numeric column. ``out_dir`` is created if needed.
    """
    for split, frame in (("train", train), ("test", test)):
        if target not in frame:
            raise ValueError(f"{split} frame has no target column {target!r}")
    frames = {"train": train, "test": test}
    numeric, categorical = _feature_columns(frames, target)
    sections = [
        _row_counts_section(frames),
        _class_balance_section(frames, target, positive_label),
        _missing_section(frames),
        _summary_section(frames, numeric),
        _histogram_section(frames, numeric),
        _target_rate_section(frames, categorical, target, positive_label),
    ]
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>Data report</title>"
        f"<style>{_CSS}</style></head><body><h1>Data report</h1>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / REPORT_FILENAME
    path.write_text(document, encoding="utf-8")
    return path
