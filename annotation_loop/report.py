"""The round report: how much correction each bootstrap round's predictions needed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from annotation_loop.effort import TOTAL  # noqa: E402
from annotation_loop.ledger import Ledger  # noqa: E402
from totalseg_train.atomic import atomic_path, write_table, write_text  # noqa: E402


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


def _markdown(table: pd.DataFrame, rounds: list[dict]) -> str:
    n_by_round = {r["number"]: r["n_reviewed"] for r in rounds}
    lines = [
        "# Annotation bootstrap: correction effort per round",
        "",
        "Round 0 are the subjects drawn from scratch; round r are the predictions of the model trained in",
        "round r on N reviewed subjects, measured against the annotators' corrections.",
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


def write_round_report(ledger: Ledger, reports_dir: Path, seconds_per_slice: float) -> pd.DataFrame:
    """Write reports/bootstrap_rounds.{md,csv,png} from the ledger; returns the table."""
    table = effort_by_round(pd.DataFrame(ledger.efforts()), seconds_per_slice)
    reports_dir.mkdir(parents=True, exist_ok=True)
    write_table(table, reports_dir / "bootstrap_rounds.csv")
    write_text(reports_dir / "bootstrap_rounds.md", _markdown(table, ledger.rounds()))
    if not table.empty:
        _plot(table, reports_dir / "bootstrap_rounds.png")
    return table
