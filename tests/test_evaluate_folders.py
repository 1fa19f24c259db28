"""Folder evaluation: outputs, the paper's conventions, aggregates with bootstrap CIs, bad input, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from totalseg_train import classes
from totalseg_train.evaluate import BootstrapSettings, evaluate_folders, group_means, score_pair
from totalseg_train.images import image_from_array, write_image

SPACING_XYZ = (1.5, 1.5, 2.0)
SHAPE_ZYX = (12, 16, 18)
NAMES = ("spleen", "vertebrae_L1", "gluteus_maximus_left", "aorta", "rib_left_3")


def ground_truth(seed: int) -> np.ndarray:
    """Five boxes of classes from every category, jittered per subject."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    for i, name in enumerate(NAMES):
        z, y, x = 1 + 2 * i, int(rng.integers(1, 8)), int(rng.integers(1, 9))
        labels[z : z + 2, y : y + int(rng.integers(3, 7)), x : x + int(rng.integers(3, 8))] = classes.id_of(name)
    return labels


def write(folder, subject_id, labels, spacing_xyz=SPACING_XYZ):
    write_image(image_from_array(labels, spacing_xyz, (0.0, 0.0, 0.0)), folder / f"{subject_id}.nii.gz")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """s01 good, s02 prediction missing, s03 one class missed + one false positive, s04 prediction on a finer
    grid (same labels), s05 prediction with a v2 id, s06 ground truth with an id beyond the table."""
    root = tmp_path_factory.mktemp("eval")
    gt_dir, pred_dir = root / "gt", root / "pred"
    truths = {f"s0{i}": ground_truth(i) for i in range(1, 7)}
    for subject_id, labels in truths.items():
        write(gt_dir, subject_id, labels)
    write(pred_dir, "s01", np.roll(truths["s01"], 1, axis=2))
    s03 = truths["s03"].copy()
    s03[s03 == classes.id_of("aorta")] = 0
    s03[0, 0, 0:3] = classes.id_of("liver")
    write(pred_dir, "s03", s03)
    finer = truths["s04"].repeat(2, axis=0).repeat(2, axis=1).repeat(2, axis=2)
    write(pred_dir, "s04", finer, tuple(s / 2 for s in SPACING_XYZ))
    s05 = truths["s05"].copy()
    s05[0, 0, 0] = 117
    write(pred_dir, "s05", s05)
    gt06 = truths["s06"].copy()
    gt06[0, 0, 0] = 200
    write(gt_dir, "s06", gt06)
    write(pred_dir, "s06", truths["s06"])
    write(pred_dir, "s99", truths["s01"])  # no ground truth
    return gt_dir, pred_dir, truths


@pytest.fixture(scope="module")
def evaluated(cohort, tmp_path_factory):
    gt_dir, pred_dir, _ = cohort
    out = tmp_path_factory.mktemp("out")
    summary = evaluate_folders(gt_dir, pred_dir, out, 3.0, 1, None, progress=False)  # the contract's order
    return summary, pd.read_parquet(out / "scores.parquet"), out


def test_outputs_hold_every_class_of_every_scored_subject(evaluated):
    summary, scores, out = evaluated
    assert json.loads((out / "summary.json").read_text()) == summary
    assert sorted(scores["subject_id"].unique()) == ["s01", "s02", "s03"]
    assert len(scores) == 3 * 104
    assert {"subject_id", "class_id", "class_name", "part", "category", "dice", "nsd", "gt_present",
            "false_positive", "prediction_missing"} <= set(scores.columns)
    assert summary["subjects"]["requested"] == 6 and summary["subjects"]["scored"] == 3
    assert summary["subjects"]["predictions_without_ground_truth"] == ["s99"]
    assert summary["tolerance_mm"] == 3.0


def test_pair_scores_are_those_of_score_pair(evaluated, cohort):
    _, scores, _ = evaluated
    _, _, truths = cohort
    s01 = scores[scores["subject_id"] == "s01"].reset_index(drop=True)
    expected = score_pair(truths["s01"], np.roll(truths["s01"], 1, axis=2), SPACING_XYZ[::-1], 3.0)
    pd.testing.assert_frame_equal(s01.drop(columns=["subject_id", "prediction_missing"]), expected)
    assert s01["gt_present"].sum() == 5 and (s01.loc[s01["gt_present"], "dice"] < 1).all()


def test_missing_prediction_is_reported_and_scored_zero(evaluated):
    summary, scores, _ = evaluated
    assert summary["subjects"]["missing_prediction"] == ["s02"]
    s02 = scores[scores["subject_id"] == "s02"]
    assert s02["prediction_missing"].all() and not scores.loc[scores["subject_id"] != "s02", "prediction_missing"].any()
    present = s02[s02["gt_present"]]
    assert len(present) == 5 and (present["dice"] == 0).all() and (present["nsd"] == 0).all()
    assert s02.loc[~s02["gt_present"], ["dice", "nsd"]].isna().all().all()


def test_missed_and_false_positive_classes(evaluated):
    summary, scores, _ = evaluated
    s03 = scores[scores["subject_id"] == "s03"].set_index("class_name")
    assert s03.at["aorta", "dice"] == 0 and s03.at["aorta", "nsd"] == 0
    assert s03.at["spleen", "dice"] == 1 and s03.at["spleen", "nsd"] == 1
    assert np.isnan(s03.at["liver", "dice"]) and s03.at["liver", "false_positive"]
    fp = summary["false_positive_classes"]
    assert fp == {"n_pairs": 1, "n_subjects": 1, "per_class": {"liver": 1}}
    assert summary["per_class"]["liver"]["false_positive_subjects"] == 1
    assert summary["per_class"]["liver"]["n_pairs"] == 0 and summary["per_class"]["liver"]["dice"]["mean"] is None


def test_micro_averages_over_subject_class_pairs(evaluated):
    summary, scores, _ = evaluated
    scored = scores[scores["gt_present"]]
    assert summary["overall"]["n_pairs"] == len(scored) == 15
    for metric in ("dice", "nsd"):
        assert summary["overall"][metric]["mean"] == pytest.approx(scored[metric].mean(), abs=1e-12)
        for key, section in (("class_name", "per_class"), ("part", "per_part"), ("category", "per_category")):
            for name, mean in scored.groupby(key)[metric].mean().items():
                assert summary[section][name][metric]["mean"] == pytest.approx(mean, abs=1e-12)
                ci = summary[section][name][metric]
                assert 0 <= ci["ci_low"] <= ci["ci_high"] <= 1
    assert set(summary["per_part"]) == set(classes.PARTS)
    assert set(summary["per_category"]) == set(classes.CATEGORIES)
    assert summary["per_part"]["cardiac"]["n_pairs"] == 0


def test_bad_input_is_reported_per_subject_and_the_rest_goes_on(evaluated, cohort):
    summary, _, _ = evaluated
    gt_dir, pred_dir, _ = cohort
    failed = summary["subjects"]["failed"]
    assert sorted(failed) == ["s04", "s05", "s06"]
    assert str(pred_dir / "s04.nii.gz") in failed["s04"] and str(gt_dir / "s04.nii.gz") in failed["s04"]
    assert "resample=true" in failed["s04"] and "spacing (0.75, 0.75, 1)" in failed["s04"]
    assert str(pred_dir / "s05.nii.gz") in failed["s05"] and "117" in failed["s05"]
    assert str(gt_dir / "s06.nii.gz") in failed["s06"] and "200" in failed["s06"]


def test_resample_puts_the_prediction_on_the_ground_truth_grid(cohort, tmp_path):
    gt_dir, pred_dir, _ = cohort
    summary = evaluate_folders(gt_dir, pred_dir, tmp_path, subjects=["s04"], resample=True, progress=False)
    scores = pd.read_parquet(tmp_path / "scores.parquet")
    present = scores[scores["gt_present"]]
    assert summary["subjects"]["failed"] == {} and len(present) == 5
    assert (present["dice"] == 1).all() and (present["nsd"] == 1).all()


def test_subjects_without_ground_truth_are_errors(cohort, tmp_path):
    gt_dir, pred_dir, _ = cohort
    summary = evaluate_folders(gt_dir, pred_dir, tmp_path, subjects=["s01", "s77"], progress=False)
    assert summary["subjects"]["scored"] == 1 and "ground truth missing" in summary["subjects"]["failed"]["s77"]
    nothing = evaluate_folders(gt_dir, pred_dir, tmp_path / "none", subjects=["s77"], progress=False)
    assert nothing["overall"]["n_pairs"] == 0 and nothing["overall"]["dice"]["mean"] is None
    assert pd.read_parquet(tmp_path / "none" / "scores.parquet").empty


def test_parallel_workers_give_the_same_table(cohort, evaluated, tmp_path):
    gt_dir, pred_dir, _ = cohort
    evaluate_folders(gt_dir, pred_dir, tmp_path, workers=2, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores.parquet"), evaluated[1])


def _scores_table(values: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = []
    for subject_id, per_class in values.items():
        for name, value in per_class.items():
            rows.append({"subject_id": subject_id, "class_id": classes.id_of(name), "dice": value, "nsd": value,
                         "gt_present": not np.isnan(value)})
    return pd.DataFrame(rows)


def test_bootstrap_intervals_are_seeded_and_collapse_for_identical_subjects():
    same = _scores_table({f"s{i}": {"spleen": 0.9, "liver": 0.5} for i in range(6)})
    means = group_means(same, BootstrapSettings(200, 0.95, 0)).set_index(["kind", "name"])
    overall = means.loc[("overall", "all")]
    assert overall["dice_mean"] == pytest.approx(0.7) and overall["n_pairs"] == 12
    assert overall["dice_ci_low"] == pytest.approx(0.7) and overall["dice_ci_high"] == pytest.approx(0.7)

    rng = np.random.default_rng(1)
    varied = _scores_table({f"s{i}": {"spleen": rng.random(), "aorta": rng.random(), "liver": np.nan}
                            for i in range(10)})
    a = group_means(varied, BootstrapSettings(300, 0.95, 7))
    b = group_means(varied, BootstrapSettings(300, 0.95, 7))
    c = group_means(varied, BootstrapSettings(300, 0.95, 8))
    pd.testing.assert_frame_equal(a, b)
    row = a.set_index(["kind", "name"]).loc[("overall", "all")]
    assert row["dice_ci_low"] < row["dice_mean"] < row["dice_ci_high"]
    assert not np.allclose(a["dice_ci_low"].dropna(), c["dice_ci_low"].dropna())
    narrow = group_means(varied, BootstrapSettings(300, 0.5, 7)).set_index(["kind", "name"]).loc[("overall", "all")]
    assert row["dice_ci_low"] < narrow["dice_ci_low"] < narrow["dice_ci_high"] < row["dice_ci_high"]


def test_micro_average_weights_pairs_not_classes():
    # Spleen in 3 subjects at 1.0, aorta in 1 subject at 0.0: micro 0.75, a mean of class means would say 0.5.
    table = _scores_table({"a": {"spleen": 1.0, "aorta": 0.0}, "b": {"spleen": 1.0}, "c": {"spleen": 1.0}})
    means = group_means(table, BootstrapSettings(50, 0.95, 0)).set_index(["kind", "name"])
    assert means.loc[("overall", "all"), "nsd_mean"] == pytest.approx(0.75)
    assert means.loc[("category", "vessel"), "n_subjects"] == 1


def test_command_line(cohort, tmp_path):
    gt_dir, pred_dir, _ = cohort
    base = [sys.executable, "-m", "totalseg_train.evaluate", f"gt_dir={gt_dir}", f"pred_dir={pred_dir}",
            f"paths.workspace={tmp_path}", "workers=1"]
    ok = subprocess.run([*base, "subjects=[s01,s02,s03]"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "results" / "evaluation" / "summary.json").read_text())
    assert summary["subjects"]["scored"] == 3 and "micro-average" in ok.stdout + ok.stderr
    bad = subprocess.run([*base, f"out_dir={tmp_path / 'all'}"], capture_output=True, text=True)
    assert bad.returncode != 0 and "3 subject(s) could not be evaluated" in bad.stderr
    assert (tmp_path / "all" / "scores.parquet").exists()
