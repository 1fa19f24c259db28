"""Where a subject's pseudonym shows in a workspace: in a file or folder name, or in a table's cells.

One rule for the stage that removes a withdrawn subject (annotation_loop.withdraw) and the audit that looks for
what is left of one (totalseg_train.identifying_data).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def subject_in_name(name: str, subject_ids: set[str]) -> str | None:
    """The subject a file or folder name belongs to: the id itself, or the id followed by '.' or '_'."""
    for cut in (name.find("."), name.find("_")):
        if cut > 0 and name[:cut] in subject_ids:
            return name[:cut]
    return name if name in subject_ids else None


def rows_naming(table: pd.DataFrame, subject_ids: set[str]) -> pd.Series:
    """True for every row in which any cell is one of the subject ids."""
    return table.astype(str).isin(subject_ids).any(axis=1)


def csv_separator(path: Path) -> str:
    """';' for a semicolon-separated CSV (TotalSegmentator's meta.csv), else ','; from the header line."""
    with open(path, "rb") as f:
        header = f.readline()
    return ";" if b";" in header and b"," not in header else ","


def read_any_table(path: Path) -> pd.DataFrame | None:
    """A CSV (as text, comma- or semicolon-separated) or Parquet table, or None when the file is not one that can
    be read as such."""
    try:
        return (pd.read_parquet(path) if path.suffix == ".parquet"
                else pd.read_csv(path, dtype=str, keep_default_na=False, sep=csv_separator(path)))
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError):
        return None


def read_subject_list(path: Path) -> set[str]:
    """The ``subject_id`` column of a subject list such as curation's withdrawn.csv; empty when there is none."""
    table = read_any_table(path) if Path(path).is_file() else None
    return set() if table is None else set(table["subject_id"])
