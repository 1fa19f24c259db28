"""Micro-averaged Dice and NSD with bootstrap confidence intervals over subjects.

Micro-average: the mean over all scored subject-class pairs of a group (every pair whose class is in
the ground truth), for the whole test set, each class, each part model and each category. The
confidence interval resamples subjects with replacement (every group uses the same resamples) and takes
percentiles of the group's micro-average.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from totalseg_train import classes

METRICS = ("dice", "nsd")


@dataclass(frozen=True)
class BootstrapSettings:
    samples: int
    confidence: float
    seed: int

    @classmethod
    def from_config(cls, cfg: Any) -> "BootstrapSettings":
        return cls(samples=int(cfg.samples), confidence=float(cfg.confidence), seed=int(cfg.seed))


def _groups() -> tuple[list[tuple[str, str]], np.ndarray]:
    """(kind, name) of every group and its class-membership matrix (classes x groups)."""
    table = classes.all_classes()
    keys: list[tuple[str, str]] = [("overall", "all")]
    keys += [("class", c.name) for c in table]
    keys += [("part", p) for p in classes.PARTS]
    keys += [("category", c) for c in classes.CATEGORIES]
    member = np.zeros((len(table), len(keys)))
    for i, c in enumerate(table):
        for j, (kind, name) in enumerate(keys):
            member[i, j] = (
                kind == "overall"
                or (kind == "class" and name == c.name)
                or (kind == "part" and name == c.part)
                or (kind == "category" and name == c.category)
            )
    return keys, member


def _number(value: float) -> float | None:
    return None if not np.isfinite(value) else float(value)


def group_means(scores: pd.DataFrame, bootstrap: BootstrapSettings) -> pd.DataFrame:
    """One row per group (kind, name): n_pairs, n_subjects and per metric mean, ci_low, ci_high."""
    keys, member = _groups()
    subjects = sorted(scores["subject_id"].unique())
    row_subject = pd.Categorical(scores["subject_id"], categories=subjects).codes
    id_to_index = {c.id: i for i, c in enumerate(classes.all_classes())}
    row_class = scores["class_id"].map(id_to_index).to_numpy()
    scored = scores["gt_present"].to_numpy(dtype=bool)

    counts = np.zeros((len(subjects), member.shape[0]))
    np.add.at(counts, (row_subject[scored], row_class[scored]), 1.0)
    group_counts = counts @ member
    rng = np.random.default_rng(bootstrap.seed)
    n = len(subjects)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=bootstrap.samples) if n else np.zeros((bootstrap.samples, 0))
    tail = (1 - bootstrap.confidence) / 2 * 100

    out = pd.DataFrame(keys, columns=["kind", "name"])
    out["n_pairs"] = group_counts.sum(axis=0).astype(int)
    out["n_subjects"] = (group_counts > 0).sum(axis=0)
    resampled_counts = weights @ group_counts
    for metric in METRICS:
        sums = np.zeros_like(counts)
        np.add.at(sums, (row_subject[scored], row_class[scored]), scores[metric].to_numpy()[scored])
        group_sums = sums @ member
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"{metric}_mean"] = group_sums.sum(axis=0) / group_counts.sum(axis=0)
            resampled = (weights @ group_sums) / resampled_counts
        low, high = np.full(len(keys), np.nan), np.full(len(keys), np.nan)
        defined = np.isfinite(resampled).any(axis=0)
        if defined.any():
            low[defined], high[defined] = np.nanpercentile(resampled[:, defined], [tail, 100 - tail], axis=0)
        out[f"{metric}_ci_low"], out[f"{metric}_ci_high"] = low, high
    return out


def summarise(scores: pd.DataFrame, bootstrap: BootstrapSettings) -> dict[str, Any]:
    """The summary of a scored test set: micro-averages with CIs per group, and false-positive classes."""
    means = group_means(scores, bootstrap)
    false_positive = scores[scores["false_positive"]]
    fp_per_class = false_positive.groupby("class_name").size()

    def entry(row: pd.Series) -> dict[str, Any]:
        result: dict[str, Any] = {"n_pairs": int(row["n_pairs"]), "n_subjects": int(row["n_subjects"])}
        for metric in METRICS:
            result[metric] = {
                part: _number(row[f"{metric}_{part}"]) for part in ("mean", "ci_low", "ci_high")
            }
        return result

    sections: dict[str, dict[str, Any]] = {"class": {}, "part": {}, "category": {}}
    overall: dict[str, Any] = {}
    for _, row in means.iterrows():
        if row["kind"] == "overall":
            overall = entry(row)
            continue
        item = entry(row)
        if row["kind"] == "class":
            cls = classes.by_name(row["name"])
            item = {"class_id": cls.id, "part": cls.part, "category": cls.category, **item,
                    "false_positive_subjects": int(fp_per_class.get(cls.name, 0))}
        sections[row["kind"]][row["name"]] = item
    return {
        "overall": overall,
        "per_part": sections["part"],
        "per_category": sections["category"],
        "per_class": sections["class"],
        "false_positive_classes": {
            "n_pairs": int(len(false_positive)),
            "n_subjects": int(false_positive["subject_id"].nunique()),
            "per_class": {name: int(n) for name, n in fp_per_class.items()},
        },
        "bootstrap": {"samples": bootstrap.samples, "confidence": bootstrap.confidence, "seed": bootstrap.seed},
    }
