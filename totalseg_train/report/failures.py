"""Section 6, failure cases [Figure 4, "typical failure cases"]: how often a class fails (Dice below a setting)
among the test subjects that have it, the paper's named failures beside ours, and the worst subject-class
pairs with a link to the subject's QA sheet."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from totalseg_train import classes, published
from totalseg_train.images import NIFTI_SUFFIX
from totalseg_train.report.document import Figure, Section, Table, png_of
from totalseg_train.report.experiments import Experiment


def failure_shares(scores: pd.DataFrame, dice_below: float) -> pd.DataFrame:
    """Per class: subjects with the class in the ground truth, those with Dice below ``dice_below``, the share."""
    scored = scores[scores["gt_present"]]
    grouped = scored.assign(failed=scored["dice"] < dice_below).groupby(["class_id", "class_name"])["failed"]
    table = pd.DataFrame({"subjects": grouped.size(), "failures": grouped.sum().astype(int)}).reset_index()
    table["share"] = table["failures"] / table["subjects"]
    return table.sort_values(["share", "class_id"], ascending=[False, True]).reset_index(drop=True)


def group_failure_share(scores: pd.DataFrame, prefixes: list[str], dice_below: float) -> tuple[int, int]:
    """(subjects with any class named by ``prefixes`` in the ground truth, those where one of them fails)."""
    scored = scores[scores["gt_present"] & scores["class_name"].map(lambda n: any(n.startswith(p) for p in prefixes))]
    failed = scored.assign(failed=scored["dice"] < dice_below).groupby("subject_id")["failed"].any()
    return int(len(failed)), int(failed.sum())


# The paper's failure case measured by where a vertebra's voxels went rather than by its Dice.
MIXED_VERTEBRAE = "neighbouring_vertebrae_mixed"


def _scored_vertebrae(scores: pd.DataFrame) -> tuple[pd.DataFrame, dict[int, int]]:
    """The rows of vertebrae in the ground truth, and each vertebra's cranio-caudal position."""
    position = {c.id: i for i, c in enumerate(classes.vertebrae_cranio_caudal())}
    return scores[scores["gt_present"] & scores["class_id"].isin(position)], position


def neighbour_mixups(scores: pd.DataFrame) -> pd.DataFrame:
    """Vertebrae labelled as a neighbour: more of the vertebra's ground-truth voxels predicted as the vertebra
    above or below than as itself (the evaluation's ``confused_with`` / ``confused_voxels``)."""
    scored, position = _scored_vertebrae(scores)
    step = (scored["confused_with"].map(position) - scored["class_id"].map(position)).abs()
    mixed = (step == 1) & (scored["confused_voxels"] > scored["intersection_voxels"])
    table = scored.loc[mixed, ["subject_id", "class_id", "class_name", "confused_with", "confused_voxels",
                               "intersection_voxels"]]
    return table.assign(confused_with_name=[classes.by_id(int(c)).name for c in table["confused_with"]])


def paper_failures(scores: pd.DataFrame, groups: dict[str, list[str]], dice_below: float) -> pd.DataFrame:
    """The paper's named failure cases (headline table ``failure_cases``) beside ours; ``groups``: failure
    name -> class-name prefixes it covers; the vertebrae mixed up are counted by ``neighbour_mixups``."""
    rows = []
    for _, paper in published.headline().loc[lambda t: t["table"] == "failure_cases"].iterrows():
        prefixes = groups.get(paper["model"])
        if paper["model"] == MIXED_VERTEBRAE and "confused_with" in scores.columns:
            subjects = int(_scored_vertebrae(scores)[0]["subject_id"].nunique())
            failures = int(neighbour_mixups(scores)["subject_id"].nunique())
            share = failures / subjects if subjects else None
            how = "a vertebra predicted more as the vertebra above or below than as itself"
        elif paper["model"] == MIXED_VERTEBRAE:
            subjects = failures = share = None
            how = ("not measured: this scores.parquet predates the evaluation's confused_with column; score the "
                   "test split again (python -m totalseg_train.evaluate) to measure it")
        elif prefixes:
            subjects, failures = group_failure_share(scores, list(prefixes), dice_below)
            share = failures / subjects if subjects else None
            how = f"a class starting with {' or '.join(prefixes)} below Dice {dice_below:g}"
        else:
            subjects = failures = share = None
            how = "not measured: no class-name prefixes for it in failures.paper_groups"
        rows.append({"failure": paper["model"], "subjects": subjects, "failures": failures, "share": share,
                     "paper_share": float(paper["value"]), "counted_as": how})
    return pd.DataFrame(rows).astype({"subjects": "Int64", "failures": "Int64"})


def sheet_link(subject_id: str, qa_sheets: Path, out: Path) -> str:
    """The subject's QA sheet as a path relative to the report folder; empty where it has none."""
    sheet = Path(qa_sheets) / f"{subject_id}.png"
    return os.path.relpath(sheet, out) if sheet.is_file() else ""


def worst_pairs(scores: pd.DataFrame, n: int, qa_sheets: Path, out: Path) -> pd.DataFrame:
    scored = scores[scores["gt_present"]].sort_values(["dice", "nsd", "subject_id", "class_id"]).head(n)
    table = scored[["subject_id", "class_name", "dice", "nsd", "gt_voxels", "pred_voxels"]].reset_index(drop=True)
    table["qa_sheet"] = [sheet_link(s, qa_sheets, out) for s in table["subject_id"]]
    return table


def failure_figure(name: str, shares: pd.DataFrame, named: pd.DataFrame, dice_below: float, top: int) -> bytes:
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    shown = shares.head(top)
    left.bar(range(len(shown)), 100 * shown["share"], color="#c44e52")
    left.set_xticks(range(len(shown)), shown["class_name"], rotation=70, ha="right", fontsize=7)
    left.set_ylabel(f"% of test subjects with Dice < {dice_below:g}")
    left.set_title(f"{name}: classes failing most often", fontsize=10)
    measured = named.dropna(subset=["share"])
    x = np.arange(len(named))
    right.bar(x - 0.2, 100 * named["share"].astype(float).fillna(0), 0.4, label="ours", color="#c44e52")
    right.bar(x + 0.2, 100 * named["paper_share"], 0.4, label="paper", color="#8c8c8c")
    right.set_xticks(x, named["failure"], rotation=40, ha="right", fontsize=7)
    right.set_title(f"named by the paper ({len(measured)} of {len(named)} measured)", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    return png_of(fig)


def failure_section(experiments: list[Experiment], dice_below: float, groups: dict[str, list[str]], worst: int,
                    top: int, qa_sheets: Path, out: Path, workspace: str) -> Section:
    section = Section(6, "Failure cases", "Figure 4, typical failure cases")
    scored = [e for e in experiments if e.scored]
    if not scored:
        section.text.append("No experiment's test split is scored yet (see section 2 for what to run).")
        return section
    section.text.append(
        f"A failure: a class in the subject's ground truth predicted with Dice below {dice_below:g} (setting "
        "`failures.dice_below`). The paper names colon (35 % of subjects), ribs (12 %), iliac arteries (11 %) and "
        "neighbouring vertebrae mixed up (1 %).")
    if not Path(qa_sheets).is_dir():
        section.text.append(f"No QA sheets in {qa_sheets}: `python -m annotation_loop.qa labels_dir=<labels> "
                            f"paths.workspace={workspace}` renders them, and the worst pairs link to them.")
    for experiment in scored:
        shares = failure_shares(experiment.scores, dice_below)
        named = paper_failures(experiment.scores, groups, dice_below)
        section.tables.append(Table(f"failures_named_{experiment.name}",
                                    f"{experiment.name}: the paper's failure cases", named))
        section.tables.append(Table(f"failures_per_class_{experiment.name}",
                                    f"{experiment.name}: failures per class", shares,
                                    display=shares.head(top), note=f"The {top} classes failing most often; the CSV "
                                                                   "holds every class."))
        section.tables.append(Table(f"failures_worst_{experiment.name}",
                                    f"{experiment.name}: the {worst} worst subject-class pairs",
                                    worst_pairs(experiment.scores, worst, qa_sheets, out), link_columns=("qa_sheet",),
                                    note=f"Ground truth's QA sheet of each subject ({qa_sheets}/<subject_id>.png; "
                                         f"ground truth and prediction files: <subject_id>{NIFTI_SUFFIX})."))
        section.figures.append(Figure(f"failures_{experiment.name}", f"{experiment.name}: failure cases",
                                      failure_figure(experiment.name, shares, named, dice_below, top)))
    return section
