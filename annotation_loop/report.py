"""The round report: how much correction each bootstrap round's predictions needed, and what the heart
model's sub-parts saved where annotators were handed them."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from annotation_loop.effort import TOTAL  # noqa: E402
from annotation_loop.ledger import Ledger  # noqa: E402
from annotation_loop.worklist_order import markdown as order_markdown, order_by_round  # noqa: E402
from totalseg_train.atomic import atomic_path, remove_stale_temporaries, write_table, write_text  # noqa: E402
from totalseg_train.heart_predictions import heart_class_ids  # noqa: E402


def effort_by_round(efforts: pd.DataFrame, seconds_per_slice: float) -> pd.DataFrame:
    """Median effort per subject and the prediction's Dice, per round (round 0: drawn from scratch)."""
    columns = ["round", "subjects", "median_voxels_changed", "median_percent_changed", "median_slices_touched",
               "median_minutes", "mean_dice"]
    if efforts.empty:
        return pd.DataFrame(columns=columns)
    efforts = efforts.assign(round=efforts["round"].fillna(0).astype(int))
    totals = efforts[efforts.class_id == TOTAL]
    per_class = efforts[efforts.class_id != TOTAL]
    rows = []
    for number, group in totals.groupby("round"):
        dice = per_class[per_class["round"] == number]["dice"]
        rows.append({
            "round": int(number),
            "subjects": int(group.subject_id.nunique()),
            "median_voxels_changed": float(group.voxels_changed.median()),
            # Subjects differ in size from round to round; the share of the label map changed compares them.
            "median_percent_changed": float((100.0 * group.voxels_changed / group.voxels_labelled.clip(lower=1)).median()),
            "median_slices_touched": float(group.slices_touched.median()),
            "median_minutes": float(group.slices_touched.median() * seconds_per_slice / 60.0),
            "mean_dice": float(dice.mean()) if len(dice) else float("nan"),
        })
    return pd.DataFrame(rows, columns=columns)


HEART_COLUMNS = ["heart_subjects_with_model", "heart_median_percent_changed_with_model",
                 "heart_subjects_without_model", "heart_median_percent_changed_without_model"]


def heart_effort_by_round(efforts: pd.DataFrame, priors: pd.DataFrame) -> pd.DataFrame:
    """What the heart model saved, per round: the median share of the six heart sub-parts' voxels changed
    per subject, for subjects handed the heart model's sub-parts (``priors``: the ledger's heart_priors)
    and for the others (drawn from scratch: 100 %). Summed over the six classes, so a voxel moved from one
    heart class to another counts for both; subjects without heart labels in their correction are left out."""
    if efforts.empty:
        return pd.DataFrame(columns=["round", *HEART_COLUMNS])
    efforts = efforts.assign(round=efforts["round"].fillna(0).astype(int))
    heart = efforts[efforts.class_id.isin(heart_class_ids())]
    per_subject = heart.groupby(["round", "subject_id", "version"], as_index=False)[
        ["voxels_changed", "voxels_labelled"]].sum()
    per_subject = per_subject[per_subject.voxels_labelled > 0]
    per_subject["percent"] = 100.0 * per_subject.voxels_changed / per_subject.voxels_labelled
    given = set(zip(priors["round"], priors["subject_id"])) if not priors.empty else set()
    per_subject["with_model"] = [(r, s) in given for r, s in zip(per_subject["round"], per_subject.subject_id)]
    rows = []
    for number, group in per_subject.groupby("round"):
        with_model, without = group[group.with_model], group[~group.with_model]
        rows.append({"round": int(number),
                     HEART_COLUMNS[0]: len(with_model), HEART_COLUMNS[1]: with_model.percent.median(),
                     HEART_COLUMNS[2]: len(without), HEART_COLUMNS[3]: without.percent.median()})
    return pd.DataFrame(rows, columns=["round", *HEART_COLUMNS])


def _heart_markdown(table: pd.DataFrame) -> list[str]:
    def percent(value: float) -> str:
        return "-" if pd.isna(value) else f"{value:.1f}"

    lines = [
        "",
        "## Heart sub-parts: what the heart model saved",
        "",
        "Median % of the six heart sub-parts' voxels changed per subject, for subjects handed the heart model's",
        "sub-parts (python -m data_prep.heart_transfer.apply) and for the others (round 0: drawn from scratch, 100 %).",
        "",
        "| round | subjects with heart model | median % of heart voxels changed | subjects without "
        "| median % of heart voxels changed |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table.dropna(subset=["heart_subjects_with_model"]).itertuples():
        lines.append(f"| {r.round} | {int(r.heart_subjects_with_model)} | "
                     f"{percent(r.heart_median_percent_changed_with_model)} | {int(r.heart_subjects_without_model)} | "
                     f"{percent(r.heart_median_percent_changed_without_model)} |")
    return lines


def _markdown(table: pd.DataFrame, rounds: list[dict], heart_model_used: bool, order: pd.DataFrame) -> str:
    n_by_round = {r["number"]: r["n_reviewed"] for r in rounds}
    lines = [
        "# Annotation bootstrap: correction effort per round",
        "",
        "Round 0 are the subjects drawn from scratch (from the heart model's sub-parts where it predicted them);",
        "round r are the predictions of the model trained in round r on N reviewed subjects, measured against the",
        "annotators' corrections.",
        "",
        "| round | trained on N | subjects corrected | median voxels changed | median % of label map changed "
        "| median slices touched | median minutes | Dice of prediction |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table.itertuples():
        n = n_by_round.get(r.round, "-") if r.round else "-"
        lines.append(f"| {r.round} | {n} | {r.subjects} | {r.median_voxels_changed:.0f} | {r.median_percent_changed:.1f} "
                     f"| {r.median_slices_touched:.0f} "
                     f"| {r.median_minutes:.1f} | {r.mean_dice:.3f} |")
    if heart_model_used:
        lines += _heart_markdown(table)
    lines += order_markdown(order)
    return "\n".join(lines) + "\n"


def _plot(table: pd.DataFrame, path: Path) -> None:
    fig, left = plt.subplots(figsize=(6, 3.5), dpi=100)
    x = list(range(len(table)))
    bars = left.bar(x, table["median_percent_changed"], color="#4c72b0")
    left.bar_label(bars, [f"{m:.0f} min" for m in table["median_minutes"]], fontsize=8)
    left.set_xticks(x, [str(r) for r in table["round"]])
    left.set_xlabel("round (0 = drawn from scratch)")
    left.set_ylabel("median % of label map changed")
    left.set_ylim(0, max(110.0, float(table["median_percent_changed"].max()) * 1.1))
    right = left.twinx()
    right.plot(x, table["mean_dice"], color="#dd8452", marker="o")
    right.set_ylabel("Dice of the prediction", color="#dd8452")
    right.set_ylim(0, 1)
    left.set_title("Correction effort per bootstrap round")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def read_worklists(worklists_dir: Path) -> dict[int, pd.DataFrame]:
    """round number -> its worklist (annotation/worklists/round_NN.csv)."""
    return {int(p.stem.removeprefix("round_")): pd.read_csv(p, dtype={"subject_id": str}, keep_default_na=False)
            for p in sorted(worklists_dir.glob("round_*.csv"))}


def write_round_report(ledger: Ledger, reports_dir: Path, seconds_per_slice: float,
                       worklists_dir: Path) -> pd.DataFrame:
    """Write reports/bootstrap_rounds.{md,csv,png} and worklist_order.csv from the ledger and the rounds'
    worklists; returns the table."""
    efforts, priors = pd.DataFrame(ledger.efforts()), pd.DataFrame(ledger.heart_priors())
    order = order_by_round(efforts, read_worklists(worklists_dir))
    table = effort_by_round(efforts, seconds_per_slice)
    table = table.merge(heart_effort_by_round(efforts, priors), on="round", how="left")
    reports_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(reports_dir)  # what a killed ingest or round was writing
    write_table(table, reports_dir / "bootstrap_rounds.csv")
    write_table(order, reports_dir / "worklist_order.csv")
    write_text(reports_dir / "bootstrap_rounds.md", _markdown(table, ledger.rounds(), not priors.empty, order))
    if not table.empty:
        _plot(table, reports_dir / "bootstrap_rounds.png")
    return table
