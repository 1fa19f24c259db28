"""Training on a part of the cohort chosen by curation's columns (``subjects.where``), tested like every model.

The paper's narrow-dataset comparison: a model trained on one kind of scan (one site, portal-venous phase,
abdominal scans) is scored on the same test subjects as the model trained on everything. So a selection
never changes the test split: the shared split (``split.file``, drawn on the whole labelled cohort) keeps its
test subjects, and only the selected subjects outside that test split train and validate, divided by patient
in the split's proportions (seeded, stored in ``subjects.split_file``, reused like the shared split). A
patient of the test split therefore never reaches training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from totalseg_train.engine.split import Split, load_or_create_split

log = logging.getLogger(__name__)


def _allowed(value: Any) -> set[str]:
    """A condition's accepted values as strings (subjects.csv is read as text): one value or a list."""
    values = [value] if isinstance(value, str) or not isinstance(value, Iterable) else value
    return {str(v) for v in values}


def select_subjects(table: pd.DataFrame, where: Mapping[str, Any], source: str | Path = "subjects.csv") -> set[str]:
    """Subject ids of ``table`` (curation's subjects.csv) matching every condition ``column: value | [values]``.

    ValueError naming the table and the columns for a column it does not have.
    """
    unknown = sorted(set(where) - set(table.columns))
    if unknown:
        raise ValueError(f"subjects.where: {source} has no column(s) {', '.join(unknown)}; its columns are "
                         f"{', '.join(table.columns)}")
    keep = pd.Series(True, index=table.index)
    for column, value in where.items():
        keep &= table[column].astype(str).isin(_allowed(value))
    return set(table.subject_id[keep])


def restrict_split(split: Split, patient_of: Mapping[str, str], selected: set[str], split_file: str | Path,
                   where: Mapping[str, Any]) -> Split:
    """The shared split's test subjects, and train / validation drawn from the selected subjects outside it."""
    test = set(split.test)
    pool = {sid: patient for sid, patient in patient_of.items() if sid in selected and sid not in test}
    conditions = ", ".join(f"{k}={v}" for k, v in where.items())
    if len({*pool.values()}) < 2:
        raise ValueError(f"subjects.where ({conditions}) leaves {len(pool)} labelled subject(s) of "
                         f"{len({*pool.values()})} patient(s) outside the test split; training and validation "
                         "need at least two patients: widen the selection")
    inner = load_or_create_split(split_file, pool, replace(split.settings, holdout_test=False))
    log.info("subjects.where (%s): %d of %d labelled subjects train or validate (%s); test split unchanged (%d)",
             conditions, len(pool), len(patient_of), split_file, len(split.test))
    return Split(inner.train, inner.val, split.test, split.settings)
