"""The worklist order against the measured correction effort, on tables whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd

from annotation_loop.effort import TOTAL
from annotation_loop.worklist_order import markdown, measured_effort, order_against_effort, order_by_round


def _tables(n: int = 20, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    effort = rng.uniform(1, 50, n)
    ids = [f"s{i:02d}" for i in range(n)]
    worklist = pd.DataFrame({"subject_id": ids, "expected_effort": effort + rng.normal(0, 2, n),
                             "entropy": -effort})  # entropy that ranks the hardest subjects last
    efforts = pd.DataFrame({"subject_id": ids, "version": 1, "round": 1, "class_id": TOTAL,
                            "voxels_changed": (effort * 10).round().astype(int), "voxels_labelled": 1000})
    return worklist, efforts


def test_measured_effort_is_the_first_correction_of_each_rounds_prediction():
    _, efforts = _tables(3)
    later = efforts.assign(version=2, voxels_changed=0)  # a second correction of the same prediction
    drawn = efforts.assign(round=None, subject_id="drawn")  # drawn from scratch: no round to rank
    table = measured_effort(pd.concat([efforts, later, drawn], ignore_index=True))
    assert table.subject_id.tolist() == ["s00", "s01", "s02"]
    np.testing.assert_allclose(table.percent_changed, efforts.voxels_changed / 10)


def test_a_good_order_beats_random_and_a_reversed_one_is_negative():
    worklist, efforts = _tables()
    row = order_against_effort(worklist, measured_effort(efforts), seeds=300)
    assert row["subjects"] == 20
    assert row["spearman_worklist"] > 0.9 and row["worklist_ci_low"] > row["random_ci_high"]
    assert row["spearman_entropy"] == -1.0
    assert abs(row["spearman_random_mean"]) < 0.05 and row["random_ci_low"] < 0 < row["random_ci_high"]
    assert row["worklist_ci_low"] <= row["spearman_worklist"] <= row["worklist_ci_high"]


def test_rounds_with_too_few_corrected_subjects_and_the_unranked_first_handout_are_left_out():
    worklist, efforts = _tables()
    handout = worklist[["subject_id"]]  # round 0's list of subjects to draw from scratch: not ranked
    table = order_by_round(efforts, {0: handout, 1: worklist, 2: worklist.head(3)}, seeds=50)
    assert table["round"].tolist() == [1]
    text = "\n".join(markdown(table))
    assert "| 1 | 20 |" in text and "Worklist order" in text
