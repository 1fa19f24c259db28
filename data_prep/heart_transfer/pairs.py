"""The contrast / native pairs of the curated cohort: two series of one exam, marked by curation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

NATIVE = "native"


@dataclass(frozen=True)
class Pair:
    contrast: str          # subject id of the contrast-enhanced series
    native: str            # subject id of the native series of the same exam
    same_frame: bool | None  # both in one frame of reference (None: curation did not say)


def read_pairs(subjects_csv: str | Path) -> list[Pair]:
    """Every pair of curation's ``subjects.csv`` once, contrast first; ordered by the native subject id."""
    path = Path(subjects_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no curated subjects table (run python -m data_prep.curate first)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"subject_id", "paired_subject_id", "contrast_phase"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: lacks the column(s) {sorted(missing)}; re-run curation")
    phase = dict(zip(table.subject_id, table.contrast_phase))
    same = dict(zip(table.subject_id, table.get("pair_same_frame", pd.Series("", index=table.index))))
    pairs = []
    for row in table[table.paired_subject_id != ""].itertuples():
        partner = row.paired_subject_id
        if row.contrast_phase == NATIVE and phase.get(partner, NATIVE) != NATIVE:
            flag = same.get(row.subject_id, "")
            pairs.append(Pair(partner, row.subject_id, None if flag == "" else flag == "true"))
    return sorted(pairs, key=lambda p: p.native)
