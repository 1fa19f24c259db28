"""Curation of the phantom cohort: every decision, the subjects table, the key and the truth export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import SimpleITK as sitk

from totalseg_train.report.characteristics import characteristics_table
from data_prep.phantom.truth_labels import export_truth_labels
from totalseg_train.images import Geometry


def decisions(workspace, phantom_index) -> pd.DataFrame:
    """series.parquet joined with the phantom's index through the private series key."""
    series = pd.read_parquet(workspace / "curated" / "series.parquet")
    mapping = pd.read_csv(workspace / "private" / "pseudonyms.csv", dtype=str, keep_default_na=False)
    series_map = mapping[mapping.kind == "series"].rename(columns={"original": "series_uid", "pseudonym": "series_id"})
    joined = series.merge(series_map[["series_uid", "series_id"]], on="series_id", how="left")
    return joined.merge(phantom_index, on="series_uid", how="outer", indicator=True, suffixes=("", "_truth"))


def test_every_series_gets_the_expected_decision(curated_workspace, phantom_index):
    joined = decisions(curated_workspace, phantom_index)
    # The consent gate leaves no row of a patient without consent: those series are only in the index.
    assert (joined["_merge"] == (joined["expected"] == "no_consent").map({True: "right_only", False: "both"})).all()
    assert len(joined) == len(phantom_index) == 23
    joined = joined[joined["_merge"] == "both"]
    got = joined["reason"].where(joined["decision"] == "excluded", "included")
    wrong = joined.loc[got != joined["expected"], ["kind", "exam_id", "expected", "decision", "reason", "detail"]]
    assert wrong.empty, f"wrong decisions:\n{wrong}"
    assert set(joined["decision"]) == {"included", "excluded"}
    assert (joined.loc[joined.decision == "excluded", "detail"] != "").all()


def test_subjects_table_and_pairs(curated_workspace, phantom_index):
    subjects = pd.read_csv(curated_workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    key = pd.read_csv(curated_workspace / "private" / "pseudonym_key.csv", dtype=str, keep_default_na=False)
    eligible = phantom_index[phantom_index.expected == "included"]
    assert len(subjects) == len(eligible) == 7
    assert list(subjects.subject_id) == [f"s{i:04d}" for i in range(1, 8)]
    assert set(key.SeriesInstanceUID) == set(eligible.series_uid)
    truth = key.merge(phantom_index, left_on="SeriesInstanceUID", right_on="series_uid").merge(subjects, on="subject_id")
    # Facts carried over from the headers, pseudonymous ids consistent per patient and exam.
    assert (truth.sex_x == truth.sex_y).all()
    assert (truth.age_y.astype(float) == truth.age_x.astype(float)).all()
    assert (truth.contrast_phase == truth.phase).all()
    assert (truth.kernel_x == truth.kernel_y).all()
    assert np.allclose(truth.slice_thickness_x.astype(float), truth.slice_thickness_y.astype(float))
    assert (truth.groupby("patient_id").patient_x.nunique() == 1).all()
    assert truth.patient_x.nunique() == eligible.patient_id.nunique()
    assert truth.exam_x.nunique() == eligible.exam_id.nunique()
    assert set(truth.body_region) <= {"whole_body", "thorax", "abdomen", "thorax_abdomen", "head_neck"}
    assert (truth.body_region == truth.extent).all()
    # Contrast and native series of one exam are kept both and point at each other.
    by_uid = dict(zip(truth.series_uid, truth.subject_id))
    for row in truth.itertuples():
        assert row.paired_subject_id == by_uid.get(row.paired_series_uid, "")
    assert (truth.paired_subject_id != "").sum() == 4
    # The phantom's pairs share a frame of reference (the heart transfer's start); others have no pair.
    same_frame = truth.pair_same_frame.astype(str).str.lower()
    assert (same_frame[truth.paired_subject_id != ""] == "true").all()
    assert set(same_frame[truth.paired_subject_id == ""]) <= {"", "nan"}
    for column in ("patient", "exam", "sex", "age", "study_year", "site", "manufacturer", "kvp", "kernel",
                   "slice_thickness", "contrast_phase", "body_region", "paired_subject_id"):
        assert column in subjects.columns, column
    assert subjects.patient.str.fullmatch(r"pat\d{4}").all() and subjects.site.str.fullmatch(r"site\d+").all()


def test_curated_images_are_int16_hu_on_the_series_grid(curated_workspace, phantom_index):
    key = pd.read_csv(curated_workspace / "private" / "pseudonym_key.csv", dtype=str, keep_default_na=False)
    images = sorted((curated_workspace / "curated" / "images").glob("*.nii.gz"))
    assert [p.name for p in images] == [f"{s}.nii.gz" for s in sorted(key.subject_id)]
    row = key.merge(phantom_index, left_on="SeriesInstanceUID", right_on="series_uid").query("exam_id == 'p0007_e0'")
    image = sitk.ReadImage(str(curated_workspace / "curated" / "images" / f"{row.subject_id.iloc[0]}.nii.gz"))
    truth = sitk.ReadImage(str(curated_workspace.joinpath("raw", row.truth_file.iloc[0])))
    assert image.GetPixelID() == sitk.sitkInt16
    # Same voxels in the LAS orientation (rows flipped): identical physical extent.
    assert image.GetDirection() == (1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert np.allclose(image.GetSpacing(), truth.GetSpacing())
    lps = sitk.DICOMOrient(image, "LPS")
    assert Geometry.of_image(lps).matches(Geometry.of_image(truth))
    hu, labels = sitk.GetArrayFromImage(lps), sitk.GetArrayFromImage(truth)
    assert abs(hu[labels == 0][:2000].min() + 1000) < 100  # air
    lung = np.isin(labels, [i for i in range(1, 105)]) & (hu < -700)
    assert lung.sum() > 1000  # the thorax's lungs in HU


def test_truth_labels_on_the_curated_grid(curated_workspace, phantom_index, tmp_path):
    key = pd.read_csv(curated_workspace / "private" / "pseudonym_key.csv", dtype=str, keep_default_na=False)
    table = export_truth_labels(curated_workspace / "private" / "pseudonym_key.csv", curated_workspace / "raw" / "truth",
                                curated_workspace / "curated" / "images", tmp_path)
    assert sorted(table.subject_id) == sorted(key.subject_id) and table.written.all() and not table.removed.any()
    truth_of = dict(zip(phantom_index.series_uid, phantom_index.truth_file))
    for row in key.itertuples():
        label = sitk.ReadImage(str(tmp_path / f"{row.subject_id}.nii.gz"))
        image = curated_workspace / "curated" / "images" / f"{row.subject_id}.nii.gz"
        assert label.GetPixelID() == sitk.sitkUInt8
        assert Geometry.of_image(label).matches(Geometry.of_file(image), tol=1e-6)
        truth = sitk.ReadImage(str(curated_workspace / "raw" / truth_of[row.SeriesInstanceUID]))
        back = sitk.DICOMOrient(label, "LPS")
        assert Geometry.of_image(back).matches(Geometry.of_image(truth))
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(truth))
    again = export_truth_labels(curated_workspace / "private" / "pseudonym_key.csv", curated_workspace / "raw" / "truth",
                                curated_workspace / "curated" / "images", tmp_path)
    assert not again.written.any()


def test_characteristics_table_counts_the_subjects(curated_workspace):
    table = pd.read_csv(curated_workspace / "reports" / "characteristics.csv", dtype={"value": str})
    subjects = pd.read_csv(curated_workspace / "curated" / "subjects.csv", keep_default_na=False)
    groups = table[~table.characteristic.isin(["Subjects (CT series)", "Patients"])].groupby("characteristic")
    assert set(groups.groups) == {"Sex", "Age (years)", "Study year", "Site", "Manufacturer", "Contrast phase",
                                  "Body region", "Kernel", "Slice thickness (mm)"}
    assert (groups.n.sum() == len(subjects)).all()
    assert np.allclose(groups.percent.sum(), 100.0, atol=0.2)
    phases = table[table.characteristic == "Contrast phase"].set_index("value").n.to_dict()
    assert phases == subjects.contrast_phase.value_counts().to_dict()
    markdown = (curated_workspace / "reports" / "characteristics.md").read_text()
    assert "| Slice thickness (mm) |" in markdown and f"| Subjects (CT series) | all | {len(subjects)} |" in markdown


def test_characteristics_bins():
    subjects = pd.DataFrame({"patient": ["a", "a", "b", "c"], "sex": ["M", "M", "F", ""], "age": [29, 30, 95, None],
                             "study_year": [2016] * 4, "site": ["site1"] * 4, "manufacturer": ["X"] * 4,
                             "contrast_phase": ["native"] * 4, "body_region": ["thorax"] * 4, "kernel": ["B"] * 4,
                             "slice_thickness": [1.0, 1.5, 5.0, 0.6]})
    table = characteristics_table(subjects, [0, 30, 40, 200], [0.0, 1.0, 1.5, 5.0, 100.0])
    rows = {(r.characteristic, r.value): (r.n, r.percent) for r in table.itertuples()}
    assert rows[("Patients", "all")][0] == 3
    assert rows[("Age (years)", "<30")] == (1, 25.0) and rows[("Age (years)", "30-40")] == (1, 25.0)
    assert rows[("Age (years)", ">=40")] == (1, 25.0) and rows[("Age (years)", "unknown")] == (1, 25.0)
    assert rows[("Slice thickness (mm)", "<=1")] == (2, 50.0) and rows[("Slice thickness (mm)", "1-1.5")][0] == 1
    assert rows[("Slice thickness (mm)", "1.5-5")][0] == 1 and rows[("Sex", "unknown")][0] == 1
