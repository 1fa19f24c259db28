"""The heart model (issue: heart label transfer, steps 5 and 6): heart_tiny trained once through the engine on
contrast and native subjects (tests/conftest.py's ``heart_model``), its test split scored per contrast group,
and ``python -m data_prep.heart_transfer.apply`` writing the heart sub-parts of every subject of a table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import SimpleITK as sitk

from totalseg_train import classes
from totalseg_train.heart_predictions import heart_class_ids, read_index
from totalseg_train.images import Geometry, nifti_path

RAW = "Dataset391_heart_tiny_heart"
# The sub-parts the tiny model must find on its test pair: the four chambers (the myocardium is a wall one
# or two voxels thick at 6 mm, the pulmonary artery the smallest class).
LARGE = ("heart_atrium_left", "heart_ventricle_left", "heart_atrium_right", "heart_ventricle_right")


def test_the_heart_cohort_is_the_drawn_contrast_subjects_and_the_natives_the_transfer_let_through(heart_model):
    ws = heart_model["ws"]
    cohort = pd.read_csv(ws / "curated" / "subjects.csv", dtype=str, keep_default_na=False).set_index("subject_id")
    index = pd.read_csv(ws / "heart" / "labels" / "index.csv", dtype=str, keep_default_na=False).set_index("subject_id")
    report = pd.read_csv(ws / "reports" / "heart_transfer.csv", dtype=str, keep_default_na=False)
    transferred = report.native_subject_id[report.status == "transferred"]
    # QC holds back exactly the pairs whose native scan cuts the heart (the phantom's truth says which).
    cut = set()
    for native in report.native_subject_id:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti_path(ws / "truth_labels", native))))
        slices = np.flatnonzero(np.isin(truth, heart_class_ids()).any(axis=(1, 2)))
        if slices.size == 0 or slices[0] == 0 or slices[-1] == truth.shape[0] - 1:
            cut.add(native)
    assert set(report.native_subject_id[report.status == "flagged"]) == cut
    assert set(transferred) == set(report.native_subject_id) - cut and len(transferred) >= 1
    assert set(index.index[index.source == "transferred"]) == set(transferred)
    assert (cohort.contrast_phase[index.index[index.source == "transferred"]] == "native").all()
    assert (cohort.contrast_phase[index.index[index.source == "drawn"]] != "native").all()
    assert sorted(index.index) == heart_model["cohort"]


def test_the_exported_heart_dataset_holds_the_six_classes_with_local_ids_1_to_6(heart_model):
    ws = heart_model["ws"]
    raw = ws / "nnunet" / "raw" / RAW
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, **{classes.by_id(g).name: i
                                                      for i, g in enumerate(heart_class_ids(), 1)}}
    split = json.loads((ws / "nnunet" / "split_heart.json").read_text())
    exported = sorted(p.name.removesuffix(".nii.gz") for p in (raw / "labelsTr").glob("*.nii.gz"))
    assert exported == sorted(split["train"] + split["val"]) and dataset["numTraining"] == len(exported)
    seen = set()
    for subject_id in exported:
        local = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti_path(raw / "labelsTr", subject_id))))
        source = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti_path(ws / "heart" / "labels", subject_id))))
        assert set(np.unique(local).tolist()) <= set(range(7))
        for i, g in enumerate(heart_class_ids(), 1):
            assert np.array_equal(local == i, source == g), (subject_id, g)
        seen |= set(np.unique(local).tolist())
    assert seen == set(range(7))


def test_heart_tiny_trains_predicts_and_scores_its_test_split_native_and_contrast_apart(heart_model):
    ws = heart_model["ws"]
    results = ws / "results" / "heart_tiny"
    summary = json.loads((results / "run_summary.json").read_text())
    cohort = pd.read_csv(ws / "curated" / "subjects.csv", dtype=str, keep_default_na=False).set_index("subject_id")
    test = summary["split"]["test_subjects"]
    assert summary["split"]["file"] == str(ws / "nnunet" / "split_heart.json")
    assert set(test) <= set(heart_model["cohort"]) and summary["parts"]["heart"]["trained"]
    # A pair shares its patient, so the patient-level test split holds native and contrast subjects alike.
    phases = {cohort.contrast_phase[s] == "native" for s in test}
    assert phases == {True, False}
    for subject_id in test:
        prediction = sitk.ReadImage(str(nifti_path(results / "predictions", subject_id)))
        assert Geometry.of_image(prediction).matches(Geometry.of_file(nifti_path(ws / "curated" / "images", subject_id)))
        assert set(np.unique(sitk.GetArrayViewFromImage(prediction)).tolist()) <= {0, *heart_class_ids()}
    evaluation = summary["evaluation"]
    assert evaluation["subjects"]["scored"] == len(test)
    dice = {name: entry["dice"]["mean"] for name, entry in evaluation["per_class"].items() if entry["n_pairs"]}
    assert set(dice) == {classes.by_id(g).name for g in heart_class_ids()}
    assert all(dice[name] > 0 for name in LARGE), dice
    by_contrast = evaluation["by_contrast"]
    assert set(by_contrast) == {"native", "contrast"}
    for group, scores in by_contrast.items():
        assert scores["n_subjects"] == sum((cohort.contrast_phase[s] == "native") == (group == "native") for s in test)
        assert 0.0 <= scores["dice"] <= 1.0 and set(scores["dice_per_class"]) <= set(dice)
    table = pd.read_csv(results / "scores_by_contrast.csv")
    overall = table[table.kind == "overall"].set_index("contrast")
    assert overall.dice_mean.to_dict() == {g: by_contrast[g]["dice"] for g in ("contrast", "native")}
    # The groups' means are the evaluation's own: together they give the overall mean of the test split.
    scores = pd.read_parquet(results / "scores.parquet")
    assert np.isclose((overall.dice_mean * overall.n_pairs).sum() / overall.n_pairs.sum(),
                      scores[scores.gt_present].dice.mean())
    for group in ("native", "contrast"):
        assert f"{group} subjects (1): mean Dice {by_contrast[group]['dice']:.3f}" in heart_model["stdout"]


def test_apply_writes_every_subject_of_its_table_and_skips_them_on_a_rerun(heart_applied, apply_heart):
    ws, out = heart_applied["ws"], heart_applied["out"]
    index = read_index(out)
    assert sorted(index.subject_id) == heart_applied["subjects"]
    assert set(index.model) == {str((ws / "results" / "heart_tiny").resolve())}
    for row in index.itertuples():
        assert row.file == f"{row.subject_id}.nii.gz"
        label = sitk.ReadImage(str(out / row.file))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert Geometry.of_image(label).matches(Geometry.of_file(nifti_path(ws / "curated" / "images", row.subject_id)))
        assert set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) <= {0, *heart_class_ids()}
    test_subject = json.loads((ws / "nnunet" / "split_heart.json").read_text())["test"][0]
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{test_subject}.nii.gz"))).any()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    run = apply_heart(ws, f"subjects_csv={heart_applied['table']}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"heart sub-parts of 0 subjects predicted, {len(index)} already predicted by this model" in run.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_apply_refuses_a_model_that_is_not_the_heart_model(heart_model, apply_heart, tmp_path):
    ws = heart_model["ws"]
    manifest = json.loads((ws / "results" / "heart_tiny" / "model.json").read_text())
    for part in manifest["parts"]:  # the same network, claimed to predict highres's cardiac part
        part["folder"] = str((ws / "results" / "heart_tiny" / part["folder"]).resolve())
        part["v1_class_ids"] = [c.id for c in classes.in_part("cardiac")]
    cardiac = tmp_path / "cardiac"
    cardiac.mkdir()
    (cardiac / "model.json").write_text(json.dumps(manifest))
    for model, message in ((cardiac, "not exactly the six heart sub-parts"),
                           (tmp_path / "nothing", "no trained model here")):
        run = apply_heart(ws, f"model={model}", f"out={tmp_path / 'out'}")
        assert run.returncode == 2 and message in run.stderr and str(model) in run.stderr, run.stderr[-3000:]
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "out" / "index.csv").exists()


def test_apply_removes_the_predictions_of_subjects_no_longer_curated(heart_applied, apply_heart, tmp_path):
    out = tmp_path / "predicted"
    shutil.copytree(heart_applied["out"], out)
    table = pd.read_csv(heart_applied["table"], dtype=str, keep_default_na=False)
    gone = heart_applied["subjects"][-1]
    table[table.subject_id != gone].to_csv(tmp_path / "subjects.csv", index=False)
    run = apply_heart(heart_applied["ws"], f"subjects_csv={tmp_path / 'subjects.csv'}", f"out={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "removed the predictions of 1 subjects no longer curated" in run.stdout
    assert gone not in set(read_index(out).subject_id) and not (out / f"{gone}.nii.gz").exists()
