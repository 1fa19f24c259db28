"""How the volume and attenuation of each structure change with age: Spearman's rs, Bonferroni-corrected.

Computed on the statistics table (one row per subject and class). Subjects without an age are counted
and left out, never guessed; structures cut by the scan's edge are left out unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from totalseg_train import classes

COLUMNS = ["class_name", "measure", "n", "rs", "p", "p_corrected", "significant"]


@dataclass(frozen=True)
class AgingSettings:
    measures: tuple[str, ...] = ("volume_ml", "mean_hu")
    threshold: float = 1e-4        # on the Bonferroni-corrected p (the paper: P < .0001)
    min_subjects: int = 10         # fewer subjects with a structure: no test
    complete_only: bool = True     # leave out structures cut by the scan's edge


@dataclass(frozen=True)
class CohortCounts:
    subjects: int
    without_age: int               # left out of the analysis
    rows_incomplete: int           # subject-structure rows left out: cut by the scan's edge


def usable_rows(stats: pd.DataFrame, settings: AgingSettings) -> tuple[pd.DataFrame, CohortCounts]:
    """The rows the analysis uses and what was left out."""
    age = pd.to_numeric(stats["age"], errors="coerce")
    subjects = stats["subject_id"].nunique()
    without_age = stats.loc[age.isna(), "subject_id"].nunique()
    rows = stats[age.notna()].assign(age=age[age.notna()])
    incomplete = int((~rows["complete"].astype(bool)).sum())
    if settings.complete_only:
        rows = rows[rows["complete"].astype(bool)]
    return rows, CohortCounts(int(subjects), int(without_age), incomplete)


def correlate(rows: pd.DataFrame, settings: AgingSettings) -> pd.DataFrame:
    """One row per class and measure (v1 class order): n, rs and p of Spearman's test with age, the
    Bonferroni-corrected p over every test done here, and whether it passes the threshold. A structure
    seen in fewer than ``min_subjects`` subjects, or with a constant measure, gets no test (NaN)."""
    out = []
    groups = dict(tuple(rows.groupby("class_name", sort=False)))
    for name in classes.class_names():
        group = groups.get(name)
        for measure in settings.measures:
            n = 0 if group is None else int(group[measure].notna().sum())
            rs = p = np.nan
            if n >= settings.min_subjects:
                valid = group[group[measure].notna()]
                if valid[measure].nunique() > 1 and valid["age"].nunique() > 1:
                    rs, p = spearmanr(valid["age"], valid[measure])
            out.append({"class_name": name, "measure": measure, "n": n, "rs": float(rs), "p": float(p)})
    table = pd.DataFrame(out, columns=COLUMNS[:5])
    tests = int(table["p"].notna().sum())
    table["p_corrected"] = (table["p"] * tests).clip(upper=1.0)
    table["significant"] = table["p_corrected"] < settings.threshold
    return table[COLUMNS]


def correlate_by_sex(rows: pd.DataFrame, settings: AgingSettings) -> pd.DataFrame:
    """``correlate`` within each sex; Bonferroni over the tests of both sexes together."""
    parts = [correlate(group, settings).assign(sex=sex) for sex, group in rows.groupby("sex")]
    if not parts:
        return pd.DataFrame(columns=["sex", *COLUMNS])
    table = pd.concat(parts, ignore_index=True)
    tests = int(table["p"].notna().sum())
    table["p_corrected"] = (table["p"] * tests).clip(upper=1.0)
    table["significant"] = table["p_corrected"] < settings.threshold
    return table[["sex", *COLUMNS]]
