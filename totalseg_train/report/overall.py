"""Sections 2 and 3: micro-averaged Dice and NSD of each experiment's test split with bootstrap confidence
intervals (overall, per part model, per category) [Results], and per class beside the paper's values [Figure 5].
The averages are the evaluation's own (``evaluate.aggregate.group_means``)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from totalseg_train import classes, published
from totalseg_train.evaluate.aggregate import METRICS, BootstrapSettings, group_means
from totalseg_train.report.document import Figure, Section, Table, interval, png_of
from totalseg_train.report.experiments import Experiment

PAPER_METRIC = {"dice": "dice", "nsd": "nsd_3mm"}  # the headline table's measure names
STAT_COLUMNS = ["n_subjects", "n_pairs"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "ci_low", "ci_high")]
CATEGORY_COLOURS = {"organ": "#4c72b0", "bone": "#8c8c8c", "muscle": "#c44e52", "vessel": "#dd8452"}


def _paper_overall(paper_model: str | None) -> dict[str, float | None]:
    out = {}
    for metric in METRICS:
        row = published.figure("overall", PAPER_METRIC[metric], paper_model) if paper_model else None
        for stat, column in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            out[f"paper_{metric}{stat}"] = None if row is None or pd.isna(row[column]) else float(row[column])
    return out


def overall_table(experiment: Experiment, bootstrap: BootstrapSettings, paper_model: str | None) -> pd.DataFrame:
    """Rows overall, each part model (a model of several parts) and each category with scored pairs: subjects,
    pairs, micro-averaged Dice and NSD with CIs; the paper's overall values on the overall row."""
    scores = experiment.scores
    means = group_means(scores, bootstrap)
    rows = [{"group": "overall", "name": "all", **means[means.kind == "overall"].iloc[0][STAT_COLUMNS].to_dict(),
             **_paper_overall(paper_model)}]
    if len(experiment.parts) > 1:
        for part, ids in experiment.parts.items():
            part_means = group_means(scores[scores["class_id"].isin(ids)], bootstrap)
            rows.append({"group": "part model", "name": part,
                         **part_means[part_means.kind == "overall"].iloc[0][STAT_COLUMNS].to_dict()})
    for _, row in means[(means.kind == "category") & (means.n_pairs > 0)].iterrows():
        rows.append({"group": "category", "name": row["name"], **row[STAT_COLUMNS].to_dict()})
    table = pd.DataFrame(rows).astype({"n_subjects": int, "n_pairs": int})
    table.insert(0, "experiment", experiment.name)
    return table


def per_class_table(experiment: Experiment, bootstrap: BootstrapSettings) -> pd.DataFrame:
    """One row per class of the model: category, part, subjects, Dice and NSD with CIs, the paper's values."""
    means = group_means(experiment.scores, bootstrap)
    means = means[means.kind == "class"].set_index("name")
    paper = published.per_class().set_index("id")
    rows = []
    for class_id in experiment.class_ids:
        c = classes.by_id(class_id)
        rows.append({"experiment": experiment.name, "class_id": c.id, "class_name": c.name, "category": c.category,
                     "part": c.part, **means.loc[c.name, STAT_COLUMNS].to_dict(),
                     "paper_dice": float(paper.loc[c.id, "paper_dice"]), "paper_nsd": float(paper.loc[c.id, "paper_nsd"])})
    table = pd.DataFrame(rows).astype({"n_subjects": int, "n_pairs": int})
    table["dice_minus_paper"] = table["dice_mean"] - table["paper_dice"]
    return table


def runs_table(experiments: list[Experiment]) -> pd.DataFrame:
    """What each experiment's run summary says about its part models: epochs, training hours, validation Dice."""
    rows = []
    for experiment in experiments:
        summary = experiment.summary or {}
        for part in experiment.parts:
            record = summary.get("parts", {}).get(part, {})
            seconds = record.get("training_seconds")
            rows.append({"experiment": experiment.name, "part": part, "classes": len(experiment.parts[part]),
                         "trained": record.get("trained"), "epochs": record.get("epochs"),
                         "training_hours": None if seconds is None else seconds / 3600,
                         "validation_dice": record.get("validation_dice"),
                         "test_subjects": summary.get("split", {}).get("test"), "finished": summary.get("finished")})
    return pd.DataFrame(rows).astype({"epochs": "Int64", "test_subjects": "Int64"})


def _display_overall(table: pd.DataFrame) -> pd.DataFrame:
    shown = table[["experiment", "group", "name", "n_subjects", "n_pairs"]].rename(
        columns={"n_subjects": "subjects", "n_pairs": "pairs"})
    for metric, label in (("dice", "Dice"), ("nsd", "NSD")):
        for prefix, mean in (("", f"{metric}_mean"), ("paper_", f"paper_{metric}")):
            shown[f"{prefix.replace('_', ' ')}{label} [95% CI]"] = [
                interval(r[mean], r[f"{prefix}{metric}_ci_low"], r[f"{prefix}{metric}_ci_high"])
                for _, r in table.iterrows()]
    return shown


def per_class_figure(experiment: Experiment, table: pd.DataFrame) -> bytes:
    """Dice (top) and NSD (bottom) per class as box plots over the test subjects, classes grouped by category,
    the paper's per-class value as a red diamond."""
    scored = experiment.scores[experiment.scores["gt_present"]]
    order = table.assign(rank=table["category"].map({c: i for i, c in enumerate(classes.CATEGORIES)}))
    order = order.sort_values(["rank", "class_id"]).reset_index(drop=True)
    width = max(8.0, 0.16 * len(order) + 2)
    fig, axes = plt.subplots(2, 1, figsize=(width, 8), sharex=True)
    positions = np.arange(len(order))
    for ax, metric in zip(axes, METRICS):
        values = [scored.loc[scored["class_id"] == cid, metric].dropna().to_numpy() for cid in order["class_id"]]
        filled = [i for i, v in enumerate(values) if len(v)]
        if filled:
            boxes = ax.boxplot([values[i] for i in filled], positions=positions[filled], widths=0.6,
                               patch_artist=True, showfliers=True, flierprops={"markersize": 2})
            for i, patch in zip(filled, boxes["boxes"]):
                patch.set_facecolor(CATEGORY_COLOURS[order.loc[i, "category"]])
                patch.set_alpha(0.6)
        ax.scatter(positions, order[f"paper_{metric}"], marker="D", s=14, color="red", zorder=3,
                   label="paper (1.5 mm model)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice" if metric == "dice" else "NSD (3 mm)")
        ax.grid(axis="y", alpha=0.3)
        for boundary in np.flatnonzero(order["rank"].diff().fillna(0).to_numpy() != 0):
            ax.axvline(boundary - 0.5, color="black", lw=0.6)
    for category, members in order.groupby("category", sort=False):
        axes[0].text(members.index.to_numpy().mean(), 1.04, category, ha="center", fontsize=9,
                     color=CATEGORY_COLOURS[category], transform=axes[0].get_xaxis_transform())
    axes[0].legend(loc="lower left", fontsize=8)
    axes[0].set_title(f"{experiment.name}: per class over {scored['subject_id'].nunique()} test subjects", fontsize=10,
                      pad=18)
    axes[1].set_xticks(positions, order["class_name"], rotation=90, fontsize=6)
    axes[1].set_xlim(-1, len(order))
    fig.tight_layout()
    return png_of(fig)


def overall_section(experiments: list[Experiment], missing: dict[str, str], bootstrap: BootstrapSettings,
                    paper_models: dict[str, str]) -> tuple[Section, dict[str, pd.DataFrame]]:
    """Section 2 and the per-class tables of the scored experiments (section 3 draws them)."""
    section = Section(2, "Overall", "Results")
    section.text.append(
        f"Micro-averaged over every scored subject-class pair of the test split (a pair is scored where the class "
        f"is in the ground truth), with {round(bootstrap.confidence * 100)} % confidence intervals from "
        f"{bootstrap.samples} bootstrap resamples of the test subjects (seed {bootstrap.seed}; the paper used 10,000). "
        "NSD at 3 mm. The paper: 1.5 mm model Dice 0.943, NSD 0.966; 3 mm model Dice 0.840, NSD 0.966.")
    tables, per_class = [], {}
    for experiment in experiments:
        section.text += [f"{experiment.name}: {problem}." for problem in experiment.problems]
        if not experiment.scored:
            section.text.append(f"{experiment.name}: no test scores: {experiment.state}.")
            continue
        tables.append(overall_table(experiment, bootstrap, paper_models.get(experiment.name)))
        per_class[experiment.name] = per_class_table(experiment, bootstrap)
    for name, command in missing.items():
        section.text.append(f"{name}: not trained in this workspace. Run {command}.")
    if experiments:
        section.tables.append(Table("runs", "Trained experiments (from their run summaries)", runs_table(experiments),
                                    note="Empty cells: no run summary yet (the run writes it after scoring)."))
    if tables:
        table = pd.concat(tables, ignore_index=True)
        section.tables.append(Table("overall", "Micro-averaged Dice and NSD of the test split", table,
                                    display=_display_overall(table)))
    return section, per_class


def per_class_section(experiments: list[Experiment], per_class: dict[str, pd.DataFrame], worst: int) -> Section:
    section = Section(3, "Per class", "Figure 5")
    if not per_class:
        section.text.append("No experiment's test split is scored yet (see section 2 for what to run).")
        return section
    section.text.append("Each class's Dice and NSD over the test subjects (box plots) and the paper's published "
                        "per-class value of its 1.5 mm model (red diamond). The table lists every class; below it the "
                        f"{worst} classes furthest below the paper's Dice.")
    by_name = {e.name: e for e in experiments}
    for name, table in per_class.items():
        section.tables.append(Table(f"per_class_{name}", f"{name}: Dice and NSD per class", table,
                                    display=_furthest_below(table, worst),
                                    note=f"Shown: the {worst} classes with the largest gap to the paper's Dice; "
                                         "the CSV holds every class."))
        section.figures.append(Figure(f"per_class_{name}", f"{name}: Dice and NSD per class",
                                      per_class_figure(by_name[name], table)))
    return section


def _furthest_below(table: pd.DataFrame, n: int) -> pd.DataFrame:
    shown = table.dropna(subset=["dice_mean"]).sort_values("dice_minus_paper").head(n)
    return pd.DataFrame({
        "class": shown["class_name"], "category": shown["category"], "subjects": shown["n_subjects"],
        "Dice [95% CI]": [interval(r.dice_mean, r.dice_ci_low, r.dice_ci_high) for r in shown.itertuples()],
        "paper Dice": shown["paper_dice"],
        "NSD [95% CI]": [interval(r.nsd_mean, r.nsd_ci_low, r.nsd_ci_high) for r in shown.itertuples()],
        "paper NSD": shown["paper_nsd"],
    })
