"""Curation of the real CT DICOM example (blank Study/Series UIDs, JPEG 2000) beside broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from data_prep.curate import curate
from data_prep.curate.scan import scan_tree
from totalseg_train import classes
from totalseg_train.config import compose_config


@pytest.fixture(scope="module")
def real_run(shared_dir, tmp_path_factory):
    """The 20 real slices plus a non-DICOM file, a truncated slice and garbage behind a DICM prefix."""
    tmp = tmp_path_factory.mktemp("real_dicom")
    source = shared_dir / "data" / "ct_example" / "example_ct_dicom"
    dicom = tmp / "dicom"
    shutil.copytree(source, dicom / "series")
    # The example is an anonymised export without PatientID; the consent gate looks patients up by it.
    for path in (dicom / "series").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientID = "RESEARCH-0001"
        ds.save_as(path)
    (dicom / "notes.txt").write_text("exported from PACS, 20 slices\n")
    first = sorted(source.iterdir())[0].read_bytes()
    (dicom / "series" / "broken_copy").write_bytes(first[: len(first) // 2])
    (dicom / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + bytes(range(256)) * 4)
    (dicom / "empty").write_bytes(b"")
    consent = tmp / "consent.csv"
    consent.write_text("patient_id,research_consent\nRESEARCH-0001,yes\n")
    cfg = compose_config("curate", [f"paths.workspace={tmp / 'ws'}", f"dataset.dicom_root={dicom}",
                                    f"dataset.consent_csv={consent}", "workers=1", "progress=false"])
    return cfg, curate(cfg), source


def test_real_series_grouped_without_uids_and_included(real_run):
    cfg, summary, _ = real_run
    series = summary.series
    assert len(series) == 1 and summary.n_subjects == 1
    row = series.iloc[0]
    assert row.decision == "included" and row.n_slices == 20 and row.subject_id == "s0001"
    assert row.kernel == "Br38f" and row.kernel_class == "soft" and row.contrast == "yes"
    assert row.slice_spacing == pytest.approx(2.0) and row.slice_thickness == pytest.approx(3.0)
    key = pd.read_csv(f"{cfg.paths.private}/pseudonym_key.csv", dtype=str, keep_default_na=False)
    assert key.SeriesInstanceUID.tolist() == [""] and key.series_key.str.startswith("series:").all()


def test_real_series_overlays_its_label_map(real_run, shared_dir):
    cfg, _, source = real_run
    image = sitk.ReadImage(f"{cfg.paths.curated}/images/s0001.nii.gz")
    seg = sitk.ReadImage(str(shared_dir / "data" / "ct_example" / "example_seg_dicom.nii.gz"))
    assert image.GetPixelID() == sitk.sitkInt16
    assert image.GetSize() == seg.GetSize() == (512, 512, 20)
    assert np.allclose(image.GetSpacing(), seg.GetSpacing(), atol=1e-3)
    assert np.allclose(image.GetOrigin(), seg.GetOrigin(), atol=1e-3)
    assert np.allclose(image.GetDirection(), seg.GetDirection(), atol=1e-3)
    # Voxels where the headers put them: the slice at z = -766.5 is the file's pixels in HU, rows flipped (LAS).
    hu = sitk.GetArrayFromImage(image)
    ds = pydicom.dcmread(sorted(source.iterdir())[0])
    z = round((float(ds.ImagePositionPatient[2]) - image.GetOrigin()[2]) / image.GetSpacing()[2])
    expected = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
    assert np.array_equal(hu[z, ::-1, :], expected)
    # ... and the labels sit on the right tissue.
    labels = sitk.GetArrayFromImage(seg)
    names = pd.read_csv(shared_dir / "data" / "ct_example" / "labels_v2_total.csv").set_index("name")["id"]
    assert 40 < hu[labels == names["liver"]].mean() < 200
    assert hu[np.isin(labels, [names[v.name] for v in classes.vertebrae_cranio_caudal() if v.name in names])].mean() > 150
    assert hu[labels == 0].min() <= -1000


def test_broken_and_foreign_files_are_listed_and_skipped(real_run):
    cfg, summary, _ = real_run
    problems = pd.read_csv(f"{cfg.paths.private}/unreadable_files.csv", dtype=str, keep_default_na=False)
    by_path = dict(zip(problems.path, problems.problem))
    assert by_path == {"notes.txt": "not_dicom", "empty": "not_dicom", "series/broken_copy": "truncated",
                       "garbage.dcm": "unreadable"}
    assert (problems.detail != "").all()
    assert summary.n_files == 24 and summary.n_problem_files == 4


def test_scan_in_processes_equals_scan_in_one(real_run):
    cfg, _, _ = real_run
    one = scan_tree(cfg.dataset.dicom_root, workers=1, progress=False)
    two = scan_tree(cfg.dataset.dicom_root, workers=2, files_per_task=5, progress=False)
    pd.testing.assert_frame_equal(one.files, two.files)
    pd.testing.assert_frame_equal(one.problems, two.problems)


def test_no_address_of_the_real_example_in_outputs(real_run):
    cfg, _, _ = real_run
    outputs = [p for p in Path(cfg.paths.curated).rglob("*") if p.is_file()]
    text = b"".join(p.read_bytes() for p in outputs if p.suffix in (".csv", ".json"))
    text += pd.read_parquet(f"{cfg.paths.curated}/series.parquet").to_csv().encode()
    for secret in (b"Petersgraben", b"Basel", b"PETCT2"):
        assert secret not in text
