"""Section 7, annotation effort [Methods: the 10x faster workflow]: per bootstrap round, the median correction
effort against drawing from scratch (round 0), from the loop's ``reports/bootstrap_rounds.csv``."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from totalseg_train import published
from totalseg_train.report.document import Figure, Section, Table, png_of

COLUMNS = ["round", "subjects", "median_percent_changed", "median_slices_touched", "median_minutes", "mean_dice"]


def effort_table(rounds: pd.DataFrame) -> pd.DataFrame:
    """The loop's per-round medians and how many times less time a round took than drawing from scratch."""
    table = rounds[COLUMNS].sort_values("round").reset_index(drop=True)
    scratch = table.loc[table["round"] == 0, "median_minutes"]
    base = float(scratch.iloc[0]) if len(scratch) else np.nan
    minutes = table["median_minutes"].astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        table["times_faster_than_scratch"] = np.where(minutes > 0, base / minutes, np.nan)
    table["paper_times_faster"] = np.where(table["round"] > 0, published.ANNOTATION_SPEEDUP, np.nan)
    return table


def effort_figure(table: pd.DataFrame) -> bytes:
    fig, left = plt.subplots(figsize=(7, 3.8))
    x = np.arange(len(table))
    bars = left.bar(x, table["median_minutes"], color="#4c72b0")
    left.bar_label(bars, [f"{p:.0f} %" for p in table["median_percent_changed"]], fontsize=8)
    left.set_xticks(x, [str(r) for r in table["round"]])
    left.set_xlabel("bootstrap round (0 = drawn from scratch)")
    left.set_ylabel("median minutes per subject")
    left.set_title("Correction effort per round (bar labels: median % of the label map changed)", fontsize=10)
    fig.tight_layout()
    return png_of(fig)


def effort_section(rounds_csv: Path, workspace: str) -> Section:
    section = Section(7, "Annotation effort", "Methods: the 10x faster workflow")
    if not Path(rounds_csv).is_file():
        section.text.append(f"Not available: no bootstrap rounds ({rounds_csv}). Run the annotation bootstrap: "
                            f"`python -m annotation_loop.start paths.workspace={workspace}`, then "
                            f"`python -m annotation_loop.round paths.workspace={workspace}` per round "
                            "(`make demo` runs two).")
        return section
    table = effort_table(pd.read_csv(rounds_csv))
    if table.empty:
        section.text.append(f"{rounds_csv} holds no round yet: ingest corrected labels "
                            f"(`python -m annotation_loop.ingest paths.workspace={workspace}`) and run a round.")
        return section
    section.text.append(
        "Per round, the median per subject of the share of the label map the annotator changed, the slices "
        "touched and the minutes that takes, against round 0 (drawn from scratch). The paper reports the "
        "bootstrapped workflow as about ten times faster than drawing from scratch.")
    section.tables.append(Table("annotation_effort", "Correction effort per bootstrap round", table))
    section.figures.append(Figure("annotation_effort", "Correction effort per bootstrap round", effort_figure(table)))
    return section
