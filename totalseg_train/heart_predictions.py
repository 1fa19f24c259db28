"""The heart model's predictions folder (``${paths.heart}/predicted``): what it holds and how it is indexed.

``python -m data_prep.heart_transfer.apply`` writes ``<subject_id>.nii.gz`` (the six heart sub-part
classes, v1 ids, uint8, on the subject's image grid) and ``index.csv`` with one row per subject: the
model that predicted it (its folder), when that model finished training, and the file (relative to the
folder, so that the folder can be moved or copied). The annotation
loop reads the folder through ``read_index`` (it never imports data_prep); the index, not the folder
listing, says which files are complete and by which model.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from totalseg_train import classes
from totalseg_train.atomic import write_table

INDEX_FILE = "index.csv"
INDEX_COLUMNS = ["subject_id", "model", "model_trained", "file"]


def heart_class_ids() -> list[int]:
    """The v1 ids of the six heart sub-parts, in id order."""
    return [c.id for c in classes.part_classes("heart")]


def read_index(folder: str | Path) -> pd.DataFrame:
    """The index of a predictions folder (empty when there is none yet); ValueError naming a broken one."""
    path = Path(folder) / INDEX_FILE
    if not path.is_file():
        return pd.DataFrame(columns=INDEX_COLUMNS)
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in INDEX_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return table[INDEX_COLUMNS]


def write_index(table: pd.DataFrame, folder: str | Path) -> Path:
    path = Path(folder) / INDEX_FILE
    write_table(table[INDEX_COLUMNS].sort_values("subject_id").reset_index(drop=True), path)
    return path
