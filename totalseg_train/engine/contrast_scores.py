"""The test split's Dice and NSD for native and contrast-enhanced subjects apart.

The paper's point about the heart model: trained on native scans with labels carried over from the
contrast scan of the same exam, it segments native scans about as well as contrast ones. The run
summary therefore reports its test scores per contrast group, taken from curation's ``contrast_phase``
(``native``; ``unknown`` or empty stays unknown; every other phase is contrast), with the evaluation's
own micro-averages (``evaluate.aggregate.group_means``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from totalseg_train.atomic import write_table
from totalseg_train.engine.labelled_subjects import read_subjects
from totalseg_train.evaluate.aggregate import BootstrapSettings, group_means

TABLE = "scores_by_contrast.csv"
PHASE_COLUMN = "contrast_phase"
NATIVE, CONTRAST, UNKNOWN = "native", "contrast", "unknown"


def contrast_group(phase: str) -> str:
    """native | contrast | unknown for one of curation's contrast phases."""
    phase = phase.strip().lower()
    if phase == NATIVE:
        return NATIVE
    return UNKNOWN if phase in ("", UNKNOWN) else CONTRAST


def contrast_groups(subjects_csv: str | Path) -> dict[str, str]:
    """subject_id -> contrast group; empty when the subjects table has no contrast phase."""
    table = read_subjects(subjects_csv)
    if PHASE_COLUMN not in table.columns:
        return {}
    return {sid: contrast_group(phase) for sid, phase in zip(table.subject_id, table[PHASE_COLUMN])}


def scores_by_contrast(scores: pd.DataFrame, groups: dict[str, str], bootstrap: BootstrapSettings) -> pd.DataFrame:
    """Per contrast group: the overall and per-class micro-averages of ``scores`` (evaluation's scores.parquet),
    only classes scored in that group; columns contrast, kind, name, n_pairs, n_subjects, dice_*, nsd_*."""
    tables = []
    for group, subjects in scores.groupby(scores.subject_id.map(groups).fillna(UNKNOWN)):
        means = group_means(subjects, bootstrap)
        means = means[(means.kind.isin(["overall", "class"])) & (means.n_pairs > 0)]
        tables.append(means.assign(contrast=group))
    if not tables:
        return pd.DataFrame(columns=["contrast", "kind", "name", "n_pairs", "n_subjects"])
    table = pd.concat(tables, ignore_index=True)
    return table[["contrast", *[c for c in table.columns if c != "contrast"]]]


def contrast_summary(table: pd.DataFrame) -> dict[str, dict]:
    """The run summary's entry: per group the subjects, mean Dice and NSD, and each class's mean Dice."""
    summary = {}
    for group, rows in table.groupby("contrast"):
        overall = rows[rows.kind == "overall"].iloc[0]
        summary[group] = {"n_subjects": int(overall.n_subjects), "dice": float(overall.dice_mean),
                          "nsd": float(overall.nsd_mean),
                          "dice_per_class": {r.name: float(r.dice_mean) for r in rows[rows.kind == "class"].itertuples()}}
    return summary


def write_scores_by_contrast(scores_file: Path, subjects_csv: str | Path, bootstrap: BootstrapSettings) -> dict:
    """Write ``scores_by_contrast.csv`` beside the scores file; returns ``contrast_summary`` ({} without phases)."""
    groups = contrast_groups(subjects_csv)
    if not groups:
        return {}
    table = scores_by_contrast(pd.read_parquet(scores_file), groups, bootstrap)
    write_table(table, Path(scores_file).parent / TABLE)
    return contrast_summary(table)
