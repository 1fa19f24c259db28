"""Does the worklist put the subjects that needed the most correction first?

Per round: Spearman's correlation between the worklist's expected effort and the measured correction
effort (share of the label map the annotator changed), with a bootstrap interval over subjects, beside
two orders computed on the same subjects: random order (MONAI Label's ``random`` strategy; its
correlation over many seeds) and entropy alone (its ``epistemic`` strategy).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from annotation_loop.effort import TOTAL

COLUMNS = ["round", "subjects", "spearman_worklist", "worklist_ci_low", "worklist_ci_high", "spearman_entropy",
           "entropy_ci_low", "entropy_ci_high", "spearman_random_mean", "random_ci_low", "random_ci_high"]
MIN_SUBJECTS = 4  # fewer corrected subjects in a round give no meaningful correlation


def measured_effort(efforts: pd.DataFrame) -> pd.DataFrame:
    """round, subject_id, percent_changed: the first correction of each subject's round prediction."""
    totals = efforts[(efforts.class_id == TOTAL) & efforts["round"].notna()]
    first = totals.sort_values("version").groupby(["round", "subject_id"], as_index=False).first()
    first["percent_changed"] = 100.0 * first.voxels_changed / first.voxels_labelled.clip(lower=1)
    first["round"] = first["round"].astype(int)
    return first[["round", "subject_id", "percent_changed"]]


def _rho(a: np.ndarray, b: np.ndarray) -> float:
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0  # a constant order ranks nothing: no better than random
    return float(spearmanr(a, b).statistic)


def _bootstrap(a: np.ndarray, b: np.ndarray, seeds: int) -> tuple[float, float]:
    """95 % interval of Spearman's rho over ``seeds`` resamplings of the subjects."""
    values = []
    for seed in range(seeds):
        pick = np.random.default_rng(seed).integers(0, len(a), len(a))
        values.append(_rho(a[pick], b[pick]))
    low, high = np.quantile(values, [0.025, 0.975])
    return float(low), float(high)


def order_against_effort(worklist: pd.DataFrame, effort: pd.DataFrame, seeds: int = 1000) -> dict | None:
    """The round's row of the table: ``worklist`` has subject_id, expected_effort, entropy; ``effort`` has
    subject_id, percent_changed. None when fewer than MIN_SUBJECTS were corrected."""
    table = worklist.merge(effort, on="subject_id")
    if len(table) < MIN_SUBJECTS:
        return None
    measured = table.percent_changed.to_numpy(float)
    expected, entropy = table.expected_effort.to_numpy(float), table.entropy.to_numpy(float)
    random = [_rho(np.random.default_rng(seed).permutation(len(table)).astype(float), measured)
              for seed in range(seeds)]
    return {
        "subjects": len(table),
        "spearman_worklist": _rho(expected, measured),
        **dict(zip(["worklist_ci_low", "worklist_ci_high"], _bootstrap(expected, measured, seeds))),
        "spearman_entropy": _rho(entropy, measured),
        **dict(zip(["entropy_ci_low", "entropy_ci_high"], _bootstrap(entropy, measured, seeds))),
        "spearman_random_mean": float(np.mean(random)),
        **dict(zip(["random_ci_low", "random_ci_high"], map(float, np.quantile(random, [0.025, 0.975])))),
    }


def order_by_round(efforts: pd.DataFrame, worklists: dict[int, pd.DataFrame], seeds: int = 1000) -> pd.DataFrame:
    """One row per round with a ranked worklist and enough corrected subjects (see COLUMNS); the first
    handout (round 0, drawn from scratch) is not ranked."""
    if efforts.empty:
        return pd.DataFrame(columns=COLUMNS)
    measured = measured_effort(efforts)
    rows = []
    for number, worklist in sorted(worklists.items()):
        if "expected_effort" not in worklist.columns:
            continue
        row = order_against_effort(worklist, measured[measured["round"] == number], seeds)
        if row is not None:
            rows.append({"round": number, **row})
    return pd.DataFrame(rows, columns=COLUMNS)


def markdown(table: pd.DataFrame) -> list[str]:
    """The round report's section on the worklist order."""
    lines = ["", "## Worklist order against the measured correction effort", "",
             "Spearman's rho between each order and the share of the label map the annotator changed, per subject",
             "(95 % intervals: bootstrap over subjects; for random order, over 1000 random orders). Worklist =",
             "the default weights of QA flags and entropy (configs/bootstrap/default.yaml: worklist).", "",
             "| round | subjects | worklist | entropy alone | random order |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in table.itertuples():
        lines.append(f"| {r.round} | {r.subjects} | {r.spearman_worklist:+.2f} [{r.worklist_ci_low:+.2f}, "
                     f"{r.worklist_ci_high:+.2f}] | {r.spearman_entropy:+.2f} [{r.entropy_ci_low:+.2f}, "
                     f"{r.entropy_ci_high:+.2f}] | {r.spearman_random_mean:+.2f} [{r.random_ci_low:+.2f}, "
                     f"{r.random_ci_high:+.2f}] |")
    if table.empty:
        lines.append(f"| - | fewer than {MIN_SUBJECTS} corrected subjects in every round | | | |")
    return lines
