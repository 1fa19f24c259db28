"""Cohort statistics: one subject's numbers against numpy on the truth, bad input, resume and shards."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from data_prep.phantom.study import generate_study
from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.images import image_from_array, nifti_path, write_image
from totalseg_train.shards import Shard
from totalseg_train.statistics import reference_statistics, structure_statistics
from totalseg_train.statistics.inputs import HuCheck
from totalseg_train.statistics.stage import run

N_SUBJECTS = 4


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tiny phantom study cohort (whole body, 8 mm voxels) as NIfTI images, truth labels and subjects.csv."""
    workspace = tmp_path_factory.mktemp("statistics_ws")
    cfg = compose_config("phantom_study", [f"paths.workspace={workspace}", f"n_subjects={N_SUBJECTS}", "workers=1"])
    generate_study(cfg, progress=False)
    return workspace, cfg.out


def stats_config(workspace, study_dir, *overrides):
    return compose_config("statistics", [f"paths.workspace={workspace}", f"labels_dir={study_dir}/labels",
                                         f"images_dir={study_dir}/images", f"subjects_csv={study_dir}/subjects.csv",
                                         "progress=false", *overrides])


def test_one_subject_against_numpy_on_the_truth(study, tmp_path):
    workspace, study_dir = study
    cfg = stats_config(tmp_path, study_dir, "workers=1")
    report = run(cfg)
    assert list(report.status) == ["measured"] * N_SUBJECTS
    table = pd.read_parquet(f"{cfg.out}/statistics.parquet")
    subject = "study0000"
    labels_img = sitk.ReadImage(str(nifti_path(f"{study_dir}/labels", subject)))
    labels = sitk.GetArrayFromImage(labels_img)
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(nifti_path(f"{study_dir}/images", subject)))).astype(np.float64)
    voxel_ml = np.prod(labels_img.GetSpacing()) / 1000.0
    mine = table[table.subject_id == subject].set_index("class_name")
    present = [c for c in classes.all_classes() if np.any(labels == c.id)]
    assert len(mine) == len(present) > 90
    for cls in present:
        values = hu[labels == cls.id]
        row = mine.loc[cls.name]
        assert row.voxels == values.size
        assert row.volume_ml == pytest.approx(values.size * voxel_ml, rel=1e-9)
        assert row.mean_hu == pytest.approx(values.mean(), abs=1e-6)
        assert row.median_hu == pytest.approx(np.median(values), abs=1e-6)
        assert row.std_hu == pytest.approx(values.std(), abs=1e-6)
        assert row.p5_hu == pytest.approx(np.percentile(values, 5), abs=1e-6)
        assert row.p95_hu == pytest.approx(np.percentile(values, 95), abs=1e-6)
    subjects = pd.read_csv(f"{study_dir}/subjects.csv").set_index("subject_id")
    assert (mine.age == subjects.loc[subject, "age"]).all()
    assert (mine.contrast_phase == subjects.loc[subject, "contrast_phase"]).all()
    assert mine.complete.all(), "a whole-body phantom scan cuts no structure"


def test_structures_cut_by_the_scan_edge_are_not_complete():
    labels = np.zeros((10, 12, 12), np.uint8)
    labels[0:3, 4:6, 4:6] = classes.id_of("liver")          # touches the first slice
    labels[4:6, 0:3, 4:6] = classes.id_of("spleen")         # touches the in-plane edge
    labels[4:6, 5:7, 5:7] = classes.id_of("aorta")          # inside
    labels[7:10, 5:7, 5:7] = classes.id_of("urinary_bladder")  # touches the last slice
    hu = np.random.default_rng(0).normal(40, 10, labels.shape)
    table = structure_statistics(labels, hu, (2.0, 1.0, 1.0)).set_index("class_name")
    assert dict(table.complete) == {"spleen": False, "liver": False, "aorta": True, "urinary_bladder": False}
    assert table.loc["aorta", "volume_ml"] == pytest.approx(8 * 2.0 / 1000)


def test_one_pass_equals_the_per_class_loop():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, classes.num_classes() + 1, (20, 30, 30)).astype(np.uint8)
    hu = rng.normal(0, 300, labels.shape).astype(np.int16)
    ours, reference = structure_statistics(labels, hu, (1.5, 1.5, 1.5)), reference_statistics(labels, hu, (1.5,) * 3)
    assert len(ours) == classes.num_classes()
    pd.testing.assert_frame_equal(ours, reference, rtol=0, atol=1e-6)


def test_hu_check_wants_air_in_a_corner():
    ct = np.full((8, 8, 8), 40, np.int16)
    check = HuCheck(corner_voxels=2, air_below_hu=-900)
    assert "not a CT in Hounsfield units" in check.problem(ct)
    ct[-2:, :2, -2:] = -1000
    assert check.problem(ct) is None


def _subject(folder, subject, labels, hu, origin=(0.0, 0.0, 0.0)):
    write_image(image_from_array(labels, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0)), nifti_path(folder / "labels", subject))
    if hu is not None:
        write_image(image_from_array(hu, (2.0, 2.0, 2.0), origin), nifti_path(folder / "images", subject))


def test_bad_subjects_get_a_row_naming_the_file_and_the_problem_and_the_rest_goes_on(tmp_path):
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[2:4, 3:5, 3:5] = classes.id_of("liver")
    ct = np.full(labels.shape, -1000, np.int16)
    ct[labels > 0] = 60
    folder = tmp_path / "cohort"
    _subject(folder, "good", labels, ct)
    _subject(folder, "other_grid", labels, ct, origin=(5.0, 0.0, 0.0))
    _subject(folder, "unknown_ids", np.where(labels > 0, 200, 0).astype(np.uint8), ct)
    _subject(folder, "mr", labels, (ct + 1400).astype(np.int16))
    _subject(folder, "no_image", labels, None)
    cfg = compose_config("statistics", [f"paths.workspace={tmp_path}", f"labels_dir={folder}/labels",
                                        f"images_dir={folder}/images", "workers=2", "progress=false"])
    report = run(cfg).set_index("subject_id")
    assert report.loc["good", "status"] == "measured"
    reasons = report.loc[report.status == "error", "reason"]
    assert set(reasons.index) == {"other_grid", "unknown_ids", "mr", "no_image"}
    assert "another grid" in reasons["other_grid"] and "other_grid.nii.gz" in reasons["other_grid"]
    assert "outside the class table" in reasons["unknown_ids"] and "200" in reasons["unknown_ids"]
    assert "not a CT in Hounsfield units" in reasons["mr"] and "mr.nii.gz" in reasons["mr"]
    assert "no image" in reasons["no_image"]
    table = pd.read_parquet(f"{cfg.out}/statistics.parquet")
    assert set(table.subject_id) == {"good"} and list(table.class_name) == ["liver"]
    assert table.age.isna().all(), "no subjects.csv: metadata left empty, not guessed"
    assert pd.read_csv(f"{cfg.out}/run.csv").shape[0] == 5


def test_done_subjects_are_not_measured_again_and_shards_split_the_cohort(study, tmp_path):
    _, study_dir = study
    shards = [stats_config(tmp_path, study_dir, "workers=1", f"shard.index={i}", "shard.count=2") for i in range(2)]
    out = tmp_path / "reports" / "statistics"
    split = [set(run(shards[0]).subject_id)]
    assert not (out / "statistics.parquet").exists(), "a shard does not gather while another is not done"
    split.append(set(run(shards[1]).subject_id))
    assert split[0].isdisjoint(split[1]) and split[0] | split[1] == {f"study{i:04d}" for i in range(N_SUBJECTS)}
    gathered = pd.read_parquet(out / "statistics.parquet")
    assert gathered.subject_id.nunique() == N_SUBJECTS, "the last shard of the sweep gathers"
    assert (pd.read_csv(out / "run.csv").status == "reused").all(), "the gathering measures nothing again"
    results = {p.name: p.stat().st_mtime_ns for p in (out / "subjects").glob("*.parquet")}
    os.utime(nifti_path(f"{study_dir}/labels", "study0001"))  # a new label map for one subject
    report = run(stats_config(tmp_path, study_dir, "workers=1")).set_index("subject_id")
    assert report.loc["study0001", "status"] == "measured"
    assert (report.drop("study0001").status == "reused").all()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "subjects").glob("*.parquet")
            if p.name != "study0001.parquet"} == {k: v for k, v in results.items() if k != "study0001.parquet"}
    assert pd.read_parquet(out / "statistics.parquet").subject_id.nunique() == N_SUBJECTS


def test_shards_split_a_cohort_disjointly_and_stably():
    assert Shard.from_config({"index": 3, "count": 16}) == Shard(3, 16) and Shard.from_config(None).whole
    for index, count in ((16, 16), (-1, 4), (0, 0)):
        with pytest.raises(ValueError, match="shard.index"):
            Shard(index, count)
    with pytest.raises(ValueError, match="whole numbers"):
        Shard.from_config({"index": "a", "count": 2})
    ids = [f"s{i}" for i in range(400)]
    parts = [Shard(i, 4).select(ids) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(ids) and min(map(len, parts)) > 70
    assert [Shard(i, 4).select(ids[::-1] + ["new"]) for i in range(4)] == [
        sorted(p + (["new"] if Shard(i, 4).holds("new") else [])) for i, p in enumerate(parts)], \
        "a subject's shard depends on its id only, not on the order or on who else is in the cohort"


def test_radiomics_features_come_from_pyradiomics_and_agree_with_our_measures(study):
    from totalseg_train.statistics.radiomics_features import PREFIX, radiomics_table

    _, study_dir = study
    subject = "study0000"
    image = sitk.ReadImage(str(nifti_path(f"{study_dir}/images", subject)))
    labels = sitk.ReadImage(str(nifti_path(f"{study_dir}/labels", subject)))
    ids = [classes.id_of("liver"), classes.id_of("aorta")]
    table = radiomics_table(image, labels, ids + [255], ["firstorder", "shape"])
    assert list(table.class_id) == ids + [255]  # a class the map lacks: a row of NaN features, not an error
    assert table.set_index("class_id").loc[255].drop("class_id", errors="ignore").isna().all()
    mine = structure_statistics(sitk.GetArrayFromImage(labels), sitk.GetArrayFromImage(image).astype(np.float64),
                                tuple(reversed(labels.GetSpacing())))
    for class_id in ids:
        row = table.set_index("class_id").loc[class_id]
        ours = mine.set_index("class_id").loc[class_id]
        assert row[f"{PREFIX}original_firstorder_Mean"] == pytest.approx(ours.mean_hu, abs=1e-6)
        assert row[f"{PREFIX}original_shape_VoxelVolume"] / 1000.0 == pytest.approx(ours.volume_ml, rel=1e-9)


def test_model_predicts_the_images_first_then_measures_its_label_maps(tiny_run, tmp_path):
    """``model=``: tiny (trained once per session) predicts its test subject's image, the statistics measure the
    prediction; a second run keeps the prediction and measures nothing again."""
    import json

    subject = json.loads((tiny_run / "nnunet" / "split.json").read_text())["test"][0]
    images = tmp_path / "images"
    images.mkdir()
    os.symlink(nifti_path(tiny_run / "curated" / "images", subject), nifti_path(images, subject))
    cfg = compose_config("statistics", [f"paths.workspace={tmp_path}", f"model={tiny_run / 'results' / 'tiny'}",
                                        f"images_dir={images}", f"subjects_csv={tiny_run / 'curated' / 'subjects.csv'}",
                                        "device=cpu", "workers=1", "progress=false"])
    report = run(cfg)
    assert report[["subject_id", "status"]].values.tolist() == [[subject, "measured"]]
    predicted = nifti_path(cfg.predicted_dir, subject)
    label_img = sitk.ReadImage(str(predicted))
    image = sitk.ReadImage(str(nifti_path(images, subject)))
    assert label_img.GetSize() == image.GetSize() and np.allclose(label_img.GetOrigin(), image.GetOrigin())
    counts = np.bincount(sitk.GetArrayFromImage(label_img).ravel(), minlength=classes.num_classes() + 1)
    table = pd.read_parquet(f"{cfg.out}/statistics.parquet")
    assert (table.subject_id == subject).all() and len(table) == np.count_nonzero(counts[1:]) > 0
    assert dict(zip(table.class_id, table.voxels)) == {c: counts[c] for c in np.flatnonzero(counts[1:]) + 1}
    assert table.age.notna().all()  # the subject's curation metadata joined to the model's label maps
    before = predicted.stat().st_mtime_ns
    again = run(cfg)
    assert predicted.stat().st_mtime_ns == before and list(again.status) == ["reused"]
