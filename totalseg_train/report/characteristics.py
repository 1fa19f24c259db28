"""The dataset characteristics table (as in the paper's Table 1): counts and percentages of the subjects."""

from __future__ import annotations

import numpy as np
import pandas as pd

# characteristic (row group title) -> subjects.csv column
CHARACTERISTICS = {
    "Sex": "sex",
    "Age (years)": "age_bin",
    "Study year": "study_year",
    "Site": "site",
    "Manufacturer": "manufacturer",
    "Contrast phase": "contrast_phase",
    "Body region": "body_region",
    "Kernel": "kernel",
    "Slice thickness (mm)": "thickness_bin",
}


def _bin_labels(edges: list[float], right: bool) -> list[str]:
    """'<30', '30-40', ..., '>=80' for bins closed on the left; '<=1', '1-1.5', ..., '>5' closed on the right."""
    labels = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo == edges[0]:
            labels.append(f"<={hi:g}" if right else f"<{hi:g}")
        elif hi == edges[-1]:
            labels.append(f">{lo:g}" if right else f">={lo:g}")
        else:
            labels.append(f"{lo:g}-{hi:g}")
    return labels


def binned(values: pd.Series, edges: list[float], right: bool) -> pd.Series:
    """Values in labelled bins (see _bin_labels); missing values become 'unknown'."""
    cut = pd.cut(pd.to_numeric(values, errors="coerce"), bins=edges, labels=_bin_labels(edges, right), right=right,
                 include_lowest=True)
    return cut.astype(object).where(cut.notna(), "unknown")


def characteristics_table(subjects: pd.DataFrame, age_bins: list[float], thickness_bins: list[float]) -> pd.DataFrame:
    """One row per characteristic value: characteristic, value, n, percent (of all subjects)."""
    df = subjects.copy()
    # Ages in [lo, hi); slice thickness in (lo, hi]: '1-1.5' holds 1.5 mm but not 1 mm.
    df["age_bin"] = binned(df["age"], age_bins, right=False)
    df["thickness_bin"] = binned(df["slice_thickness"], thickness_bins, right=True)
    total = len(df)
    rows = [{"characteristic": "Subjects (CT series)", "value": "all", "n": total, "percent": 100.0 if total else 0.0},
            {"characteristic": "Patients", "value": "all", "n": int(df["patient"].nunique()),
             "percent": np.nan}]
    for title, column in CHARACTERISTICS.items():
        values = df[column].astype(object).where(df[column].notna() & (df[column].astype(str) != ""), "unknown")
        counts = values.astype(str).value_counts()
        if column == "age_bin":
            order = _bin_labels(age_bins, right=False) + ["unknown"]
        elif column == "thickness_bin":
            order = _bin_labels(thickness_bins, right=True) + ["unknown"]
        else:
            order = sorted(counts.index)
        for value in order:
            if value in counts:
                n = int(counts[value])
                rows.append({"characteristic": title, "value": value, "n": n, "percent": round(100.0 * n / total, 1)})
    return pd.DataFrame(rows, columns=["characteristic", "value", "n", "percent"])


def to_markdown(table: pd.DataFrame, title: str = "Dataset characteristics", level: int = 1) -> str:
    lines = [f"{'#' * level} {title}", "", "| characteristic | value | n | % |", "| --- | --- | ---: | ---: |"]
    previous = None
    for row in table.itertuples():
        name = row.characteristic if row.characteristic != previous else ""
        previous = row.characteristic
        percent = "" if row.percent != row.percent else f"{row.percent:.1f}"
        lines.append(f"| {name} | {row.value} | {row.n} | {percent} |")
    return "\n".join(lines) + "\n"
