"""The TotalSegmentator paper's published values (v1, 1.5 mm and 3 mm models), the one owner of them.

Data files in ``totalseg_train/data`` (copies of ``shared/reference``):

- ``paper_results_v1.csv``: per class id the published test-set Dice and NSD (3 mm) of the 1.5 mm model.
- ``paper_headline_v1.csv``: one row per headline figure (table, measure, model, value, ci_low, ci_high,
  unit, source): overall Dice/NSD, the BTCV comparison, failure-case shares, dataset counts, aging
  correlations and the runtime table. ``source`` says where each figure was read: "abstract" rows are the
  published abstract, "secondary" rows a reading of the paper, runtime rows the TotalSegmentator
  repository's runtime table (RTX 3090).

Paper: Wasserthal J. et al., "TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT
Images", Radiology: Artificial Intelligence 2023;5(5):e230024.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

CITATION = ("Wasserthal J. et al., TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images, "
            "Radiology: Artificial Intelligence 2023;5(5):e230024")
PER_CLASS_FILE = "data/paper_results_v1.csv"
HEADLINE_FILE = "data/paper_headline_v1.csv"
# The paper's two models as the headline table names them.
HIGHRES, FAST = "highres_1.5mm", "fast_3mm"
# Not in the headline table: the paper's Methods describe correcting the bootstrapped model's predictions as
# about ten times faster than drawing the labels from scratch.
ANNOTATION_SPEEDUP = 10.0


def _read(name: str) -> pd.DataFrame:
    with resources.files("totalseg_train").joinpath(name).open() as fh:
        return pd.read_csv(fh)


@lru_cache(maxsize=1)
def per_class() -> pd.DataFrame:
    """Columns id, name, paper_dice, paper_nsd: the 1.5 mm model's published test-set values per class."""
    return _read(PER_CLASS_FILE)


@lru_cache(maxsize=1)
def headline() -> pd.DataFrame:
    """Every headline figure: table, measure, model, value, ci_low, ci_high, unit, source."""
    table = _read(HEADLINE_FILE)
    for column in ("unit", "source"):
        table[column] = table[column].fillna("")
    return table


def figure(table: str, measure: str, model: str) -> pd.Series | None:
    """The headline row of (table, measure, model); where the paper gives it twice, the row with a
    confidence interval. None where the paper has no such figure."""
    rows = headline()
    rows = rows[(rows["table"] == table) & (rows["measure"] == measure) & (rows["model"] == model)]
    if rows.empty:
        return None
    return rows.sort_values("ci_low", na_position="first").iloc[-1]


def value(table: str, measure: str, model: str) -> float | None:
    """The published value of (table, measure, model), None where the paper has none."""
    row = figure(table, measure, model)
    return None if row is None else float(row["value"])
