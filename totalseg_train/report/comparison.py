"""Section 4, comparison with a model trained on a narrow dataset [Figure 7, the BTCV comparison]: two
experiments on the same test subjects, restricted to the classes both segment (``totalseg_train.compare``)."""

from __future__ import annotations

import pandas as pd

from totalseg_train import classes, published
from totalseg_train.compare import ComparisonError, compare_models, comparison_figure
from totalseg_train.report.document import Figure, Section, Table, png_of
from totalseg_train.report.experiments import Experiment, train_command

PAPER_MEASURE = {"dice": "dice", "nsd": "nsd_3mm"}
PAPER_A, PAPER_B = "totalsegmentator", "btcv_nnunet"  # the headline's btcv_comparison models


def comparison_classes(selection: str | list[str]) -> list[str]:
    """Class names of a part or subset of the class table (e.g. ``btcv``) or of a list of names."""
    if isinstance(selection, str):
        return [c.name for c in classes.part_classes(selection)]
    return [classes.by_name(name).name for name in selection]


def summary_row(summary: dict, metric: str) -> dict:
    paper_p = published.figure("btcv_comparison", "p_value", "wilcoxon")
    return {
        "metric": metric, "n_subjects": summary["n_subjects"], "mean_a": summary["mean_a"], "mean_b": summary["mean_b"],
        "mean_difference": summary["mean_difference"], "wilcoxon_statistic": summary["wilcoxon_statistic"],
        "p_value": summary["p_value"],
        "paper_mean_a": published.value("btcv_comparison", PAPER_MEASURE[metric], PAPER_A),
        "paper_mean_b": published.value("btcv_comparison", PAPER_MEASURE[metric], PAPER_B),
        "paper_p_value_below": None if paper_p is None else float(paper_p["value"]),
    }


def comparison_section(experiments: list[Experiment], a: str, b: str, selection: str | list[str],
                       metrics: list[str], workspace: str) -> Section:
    section = Section(4, "Comparison with a model trained on a narrow dataset", "Figure 7, the BTCV comparison")
    names = comparison_classes(selection)
    section.text.append(
        f"Model a = {a}, model b = {b} (settings `comparison.a`, `comparison.b`), on the same test subjects and the "
        f"{len(names)} classes of `{selection}`: per subject the micro-average over its scored pairs of those classes, "
        "paired, two-sided Wilcoxon signed-rank test. The paper: TotalSegmentator 0.932 against an nnU-Net trained "
        "on BTCV 0.871 Dice on the 13 BTCV classes (p < .001).")
    by_name = {e.name: e for e in experiments}
    absent = [n for n in (a, b) if n not in by_name or not by_name[n].scored]
    if absent:
        for name in absent:
            how = by_name[name].state if name in by_name else f"not trained: run `{train_command(name, workspace)}`"
            section.text.append(f"{name}: no test scores to compare: {how}.")
        return section
    rows = []
    for metric in metrics:
        try:
            per_subject, summary = compare_models(by_name[a].scores, by_name[b].scores, names, metric)
        except ComparisonError as err:
            section.text.append(f"The two models cannot be compared: {err}.")
            return section
        rows.append(summary_row(summary, metric))
        section.tables.append(Table(f"comparison_{metric}_per_subject", f"{a} vs {b}: {metric} per subject",
                                    per_subject.rename(columns={"a": a, "b": b})))
        section.figures.append(Figure(f"comparison_{metric}", f"{a} vs {b}: {metric} per subject",
                                      png_of(comparison_figure(per_subject, a, b))))
        if summary["subjects_without_classes"]:
            section.text.append(f"{metric}: left out, no compared class in their ground truth: "
                                f"{', '.join(summary['subjects_without_classes'])}.")
    table = pd.DataFrame(rows)
    section.tables.insert(0, Table("comparison", f"{a} (a) vs {b} (b) on {len(names)} classes", table,
                                   note="mean_difference = b - a. Paper: a = TotalSegmentator, b = nnU-Net trained on "
                                        "BTCV; its p-value is reported as below 0.001."))
    return section
