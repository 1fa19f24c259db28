"""Section 1, the dataset [Table 1, Figures 2-3]: who is in it, what curation left out and why, the split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import pandas as pd

from totalseg_train import published
from totalseg_train.engine.split import read_split
from totalseg_train.report.document import Figure, Section, Table, png_of

INCLUDED = "included"  # curation's decision for a kept series
NO_CONSENT = "no_consent"  # the row of the series curation's consent gate stopped
SPLITS = ("train", "val", "test")
PAPER_SPLIT = {"train": "train", "val": "validation", "test": "test"}
# The characteristics the figure shows, in this order (curation's characteristic titles, plus the scanner).
PLOTTED = ("Site", "Scanner", "Manufacturer", "Contrast phase", "Kernel", "Slice thickness (mm)", "Age (years)", "Sex")


def scanner_rows(subjects: pd.DataFrame) -> pd.DataFrame:
    """Subjects per scanner (manufacturer and model), in the characteristics table's columns."""
    scanner = (subjects["manufacturer"].fillna("").astype(str) + " " + subjects["model"].fillna("").astype(str)).str.strip()
    counts = scanner.replace("", "unknown").value_counts().sort_index()
    total = max(len(subjects), 1)
    return pd.DataFrame({"characteristic": "Scanner", "value": counts.index, "n": counts.to_numpy(),
                         "percent": (100.0 * counts.to_numpy() / total).round(1)})


def characteristics_with_scanner(characteristics: pd.DataFrame, subjects: pd.DataFrame) -> pd.DataFrame:
    """Curation's characteristics table with the scanner rows after the manufacturer's."""
    scanners = scanner_rows(subjects)
    after = characteristics.index[characteristics["characteristic"] == "Manufacturer"]
    cut = int(after[-1]) + 1 if len(after) else len(characteristics)
    return pd.concat([characteristics.iloc[:cut], scanners, characteristics.iloc[cut:]], ignore_index=True)


def exclusion_table(series: pd.DataFrame, without_consent: int, paper_reasons: dict[str, list[str]]) -> pd.DataFrame:
    """Series seen, excluded by reason and kept, with the paper's count where it has one. ``without_consent``:
    series stopped by curation's consent gate (only their number is kept; reason ``no_consent``).
    ``paper_reasons``: the headline's dataset counts (excluded_extremities, ...) -> the curation reasons each
    stands for; those reasons share one row (``reason``: joined with '+'), the other reasons have a row each."""
    decided = series["decision"].astype(str)
    counts = series.loc[decided != INCLUDED, "reason"].fillna("").astype(str).value_counts()
    if without_consent:
        counts[NO_CONSENT] = without_consent
    rows = [{"step": "series seen", "reason": "", "paper_reason": "sampled", "n": len(series) + without_consent,
             "paper_n": published.value("dataset", "count", "sampled")}]
    grouped = set()
    for paper, reasons in paper_reasons.items():
        grouped |= set(reasons)
        rows.append({"step": "excluded", "reason": "+".join(reasons),
                     "paper_reason": paper.removeprefix("excluded_").replace("_", " "),
                     "n": int(sum(counts.get(r, 0) for r in reasons)),
                     "paper_n": published.value("dataset", "count", paper)})
    for reason, n in sorted(counts.items()):
        if reason not in grouped:
            rows.append({"step": "excluded", "reason": reason, "paper_reason": "", "n": int(n), "paper_n": None})
    rows.append({"step": "kept", "reason": "", "paper_reason": "kept", "n": int((decided == INCLUDED).sum()),
                 "paper_n": published.value("dataset", "count", "kept")})
    return pd.DataFrame(rows, columns=["step", "reason", "paper_reason", "n", "paper_n"]).astype({"paper_n": "Int64"})


def split_table(counts: dict[str, int]) -> pd.DataFrame:
    return pd.DataFrame([{"split": PAPER_SPLIT[g], "subjects": int(counts[g]),
                          "paper_subjects": published.value("dataset", "count", PAPER_SPLIT[g])}
                         for g in SPLITS]).astype({"paper_subjects": "Int64"})


def characteristics_figure(table: pd.DataFrame) -> bytes:
    """One bar chart per characteristic: subjects per value."""
    shown = [c for c in PLOTTED if (table["characteristic"] == c).any()]
    columns = 4
    rows = max(1, math.ceil(len(shown) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(16, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, shown):
        part = table[table["characteristic"] == name]
        y = range(len(part))  # positions, not the labels: bins such as '2-3' would be parsed as numbers
        ax.barh(y, part["n"], color="#4c72b0")
        ax.set_yticks(y, [str(v)[:36] for v in part["value"]])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("subjects")
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    return png_of(fig)


def dataset_section(subjects_csv: Path, series_table: Path, curation_summary: Path, characteristics_csv: Path,
                    split_file: Path, paper_reasons: dict[str, list[str]], workspace: str) -> Section:
    section = Section(1, "Dataset", "Table 1, Figures 2-3")
    curate = f"`python -m data_prep.curate paths.workspace={workspace}`"
    if not (Path(subjects_csv).is_file() and Path(series_table).is_file() and Path(characteristics_csv).is_file()):
        section.text.append(f"Not available: the curated cohort's tables ({subjects_csv}, {series_table}, "
                            f"{characteristics_csv}) are missing. Run {curate} first.")
        return section
    subjects = pd.read_csv(subjects_csv, dtype=str, keep_default_na=False)
    series = pd.read_parquet(series_table)
    summary = json.loads(Path(curation_summary).read_text()) if Path(curation_summary).is_file() else {}
    characteristics = characteristics_with_scanner(pd.read_csv(characteristics_csv), subjects)
    section.text.append(f"{len(subjects)} subjects (CT series) of {subjects['patient'].nunique()} patients, from "
                        "curation's tables. The paper's cohort: 1204 CT series of 1204 subjects.")
    section.tables.append(Table("dataset_characteristics", "Subjects by characteristic", characteristics,
                                note="Percent of all subjects; from curation's characteristics table and subjects.csv."))
    section.figures.append(Figure("dataset_characteristics", "Subjects by characteristic",
                                  characteristics_figure(characteristics)))
    section.tables.append(Table(
        "dataset_exclusions", "Series seen, excluded by reason, kept",
        exclusion_table(series, int(summary.get("without_consent", 0)), paper_reasons),
        note="The paper sampled 1368 CT series and excluded 37 of the extremities, 87 with missing slices and 40 too "
             "ambiguous to annotate; curation also sees the series a site exports besides (localizers, derived "
             "images, other modalities), which the paper's sample never held."))
    if Path(split_file).is_file():
        counts = read_split(Path(split_file)).counts()
        section.tables.append(Table("dataset_split", "Subjects per split (patients never cross splits)",
                                    split_table(counts)))
    else:
        section.text.append(f"No split yet ({split_file}): the first training run draws it, e.g. "
                            f"`python -m totalseg_train +experiment=highres paths.workspace={workspace}`.")
    return section
