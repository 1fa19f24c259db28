"""Two models on the same test subjects: paired per-subject scores, the Wilcoxon signed-rank test, the figure.

The paper's Figure 7 design: TotalSegmentator against an nnU-Net trained on BTCV, both scored on the same test
subjects, restricted to the 13 classes both segment (0.932 vs 0.871 Dice, p < 0.001). Each model's score of a
subject is the evaluation's micro-average over that subject's scored pairs of the chosen classes (every class
present in the ground truth: ``gt_present`` in ``scores.parquet``, as ``evaluate.aggregate`` averages);
the two per-subject series are compared with ``scipy.stats.wilcoxon`` (two-sided).

Rules: both score tables must hold the same subjects (a subject scored by one model only is an error naming
it: the test splits differ) and the same ground truth (equal ``gt_voxels`` for every compared subject-class
pair). A subject whose ground truth holds none of the classes has nothing to compare; it is left out of the
test and listed in the summary (``subjects_without_classes``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy.stats import wilcoxon

from totalseg_train import classes
from totalseg_train.evaluate.aggregate import METRICS

PER_SUBJECT_COLUMNS = ["subject_id", "a", "b", "difference"]


class ComparisonError(ValueError):
    """The two score tables cannot be paired; the message says which subjects or classes differ."""


def _listed(items: Sequence[str], shown: int = 10) -> str:
    items = sorted(items)
    return ", ".join(items[:shown]) + (f" ... ({len(items)} in all)" if len(items) > shown else "")


def _restricted(scores: pd.DataFrame, names: list[str], label: str) -> pd.DataFrame:
    """The rows of ``names``; every subject must have a row for every one of them."""
    rows = scores[scores["class_name"].isin(names)]
    counts = rows.groupby("subject_id")["class_name"].nunique()
    incomplete = counts[counts < len(names)]
    absent = sorted(set(names) - set(rows["class_name"]))
    if absent:
        raise ComparisonError(f"model {label} has no scores for class(es) {_listed(absent)}: it does not segment them")
    if len(incomplete):
        raise ComparisonError(f"model {label} lacks scores of some of the classes for subject(s) "
                              f"{_listed(list(incomplete.index))}")
    return rows


def subject_means(scores: pd.DataFrame, metric: str = "dice") -> pd.Series:
    """Per subject, the micro-average of ``metric`` over its scored pairs (NaN where none is scored)."""
    scored = scores["gt_present"].to_numpy(dtype=bool)
    values = scores[metric].where(scored)
    return values.groupby(scores["subject_id"]).mean()


def paired_summary(per_subject: pd.DataFrame) -> dict:
    """n_subjects, mean_a, mean_b, mean_difference (b - a), wilcoxon_statistic and p_value of paired rows."""
    n = len(per_subject)
    if n == 0:
        statistic = p_value = float("nan")
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # all differences zero: scipy's NaN z
            result = wilcoxon(per_subject["a"], per_subject["b"])
        statistic, p_value = float(result.statistic), float(result.pvalue)
    return {
        "n_subjects": n,
        "mean_a": float(per_subject["a"].mean()) if n else float("nan"),
        "mean_b": float(per_subject["b"].mean()) if n else float("nan"),
        "mean_difference": float(per_subject["difference"].mean()) if n else float("nan"),
        "wilcoxon_statistic": statistic,
        "p_value": p_value,
    }


def compare_models(scores_a: pd.DataFrame, scores_b: pd.DataFrame, class_names: list[str],
                   metric: str = "dice") -> tuple[pd.DataFrame, dict]:
    """Pair two models' per-subject micro-averaged ``metric`` (dice | nsd) over ``class_names``.

    ``scores_a`` / ``scores_b``: the evaluation's ``scores.parquet`` tables of the two models. Returns the
    per-subject rows (subject_id, a, b, difference = b - a), sorted by subject, and the summary (``paired_summary``
    plus ``metric``, ``classes`` and ``subjects_without_classes``). ComparisonError when the tables cannot be
    paired (see the module's rules).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")
    names = list(dict.fromkeys(class_names))
    if not names:
        raise ValueError("no classes to compare")
    for name in names:
        classes.by_name(name)  # KeyError naming an unknown class
    only_a = set(scores_a["subject_id"]) - set(scores_b["subject_id"])
    only_b = set(scores_b["subject_id"]) - set(scores_a["subject_id"])
    if only_a or only_b:
        parts = [f"only model a scored {_listed(list(only_a))}" if only_a else "",
                 f"only model b scored {_listed(list(only_b))}" if only_b else ""]
        raise ComparisonError("the two models were not scored on the same subjects (score both on one test split): "
                              + "; ".join(p for p in parts if p))
    rows_a, rows_b = _restricted(scores_a, names, "a"), _restricted(scores_b, names, "b")
    truth = rows_a.merge(rows_b, on=["subject_id", "class_name"], suffixes=("_a", "_b"))
    differing = truth[truth["gt_voxels_a"] != truth["gt_voxels_b"]]
    if len(differing):
        raise ComparisonError("the two score tables come from different ground truth: "
                              f"{_listed(list(differing.subject_id.unique()))} differ (e.g. {differing.iloc[0].class_name})")
    table = pd.DataFrame({"a": subject_means(rows_a, metric), "b": subject_means(rows_b, metric)})
    empty = sorted(table.index[table["a"].isna()])
    table = table.dropna().rename_axis("subject_id").reset_index().sort_values("subject_id", ignore_index=True)
    table["difference"] = table["b"] - table["a"]
    summary = {**paired_summary(table), "metric": metric, "classes": names, "subjects_without_classes": empty}
    return table[PER_SUBJECT_COLUMNS], summary


def comparison_figure(per_subject: pd.DataFrame, name_a: str, name_b: str) -> Figure:
    """The paired plot: each subject's score under both models joined by a line, box plots beside them, and
    the per-subject differences; the means and the Wilcoxon p-value in the title."""
    summary = paired_summary(per_subject)
    fig = Figure(figsize=(8, 4.5))  # not pyplot's: no backend or global figure list (the caller saves it)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    a, b = per_subject["a"].to_numpy(), per_subject["b"].to_numpy()
    for ya, yb in zip(a, b):
        left.plot([0, 1], [ya, yb], color="0.6", linewidth=0.8, zorder=1)
    left.scatter(np.zeros(len(a)), a, color="tab:blue", zorder=2, s=18)
    left.scatter(np.ones(len(b)), b, color="tab:orange", zorder=2, s=18)
    if len(per_subject):
        left.boxplot([a, b], positions=[-0.25, 1.25], widths=0.2, showfliers=False)
    left.set_xticks([0, 1], [f"{name_a}\nmean {summary['mean_a']:.3f}", f"{name_b}\nmean {summary['mean_b']:.3f}"])
    left.set_xlim(-0.5, 1.5)
    left.set_ylabel("per-subject score (micro-average over the classes)")
    right.axhline(0, color="0.4", linewidth=0.8)
    right.boxplot([per_subject["difference"].to_numpy()], widths=0.5, showfliers=False)
    right.scatter(np.ones(len(per_subject)), per_subject["difference"], color="tab:green", s=14, zorder=2)
    right.set_xticks([1], [f"{name_b} - {name_a}"])
    right.set_ylabel("difference")
    fig.suptitle(f"{name_a} vs {name_b}: {summary['n_subjects']} subjects, mean difference "
                 f"{summary['mean_difference']:+.3f}, Wilcoxon p = {summary['p_value']:.3g}")
    fig.tight_layout()
    return fig
