"""python -m annotation_loop.release: the reviewed subjects of a phantom cohort (every curated subject drawn by the
simulated annotator, one left unreviewed) released in TotalSegmentator's public layout, faces defaced, audited;
imported back by data_prep.import_totalseg; built twice identically; refused where consent or the audit say so;
and left by a patient who withdraws."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from annotation_loop.defacing import DefaceSettings, deface, face_region
from conftest import REPO
from totalseg_train import classes

META_COLUMNS = "image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp"
FACE = classes.id_of("face")


def run(module: str, ws: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    quiet = ["progress=false"] if module in ("annotation_loop.release", "data_prep.curate", "data_prep.import_totalseg") else []
    done = subprocess.run([sys.executable, "-m", module, f"paths.workspace={ws}", *quiet, *extra],
                          capture_output=True, text=True, cwd=REPO)
    if check:
        assert done.returncode == 0, f"{module} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def voxels(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def files_under(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def released(tmp_path_factory, coarse_cohort) -> dict:
    """Every curated subject handed out to draw, all but one corrected and ingested (reviewed), then released."""
    ws = coarse_cohort(tmp_path_factory.mktemp("release_ws"), 8)
    subjects = pd.read_csv(ws / "curated" / "subjects.csv", dtype=str)
    n = len(subjects)
    run("annotation_loop.start", ws, f"bootstrap.schedule=[{n},{n + 5}]")
    run("annotation_loop.simulate", ws, f"bootstrap.schedule=[{n},{n + 5}]")
    incoming = ws / "annotation" / "incoming" / "simulated"
    faces = sorted(s for s in subjects.subject_id if (voxels(ws / "truth_labels" / f"{s}.nii.gz") == FACE).any())
    held = next(s for s in sorted(subjects.subject_id) if s not in faces)
    (incoming / f"{held}.nii.gz").unlink()  # left in correction: never released
    run("annotation_loop.ingest", ws, f"bootstrap.schedule=[{n},{n + 5}]", f"corrected_dir={incoming}")
    output = run("annotation_loop.release", ws).stdout
    return {"ws": ws, "out": ws / "release", "subjects": subjects, "held": held, "faces": faces, "stdout": output,
            "reviewed": sorted(set(subjects.subject_id) - {held})}


def test_the_release_holds_every_reviewed_subject_in_the_public_layout(released):
    out = released["out"]
    assert f"released {len(released['reviewed'])} subjects" in released["stdout"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == released["reviewed"]
    names = sorted(f"{c.name}.nii.gz" for c in classes.all_classes())
    for sid in released["reviewed"]:
        assert (out / sid / "ct.nii.gz").is_file()
        assert sorted(p.name for p in (out / sid / "segmentations").iterdir()) == names
    assert (out / "meta.csv").read_text().splitlines()[0] == META_COLUMNS
    meta = pd.read_csv(out / "meta.csv", sep=";", dtype=str)
    assert list(meta.image_id) == released["reviewed"]
    assert set(meta.gender) <= {"f", "m"} and set(meta.split) <= {"train", "val", "test"}
    curated = released["subjects"].set_index("subject_id").loc[released["reviewed"]]
    assert list(meta.age) == list(curated.age) and list(meta.scanner_model) == list(curated.model)
    assert len(pd.read_csv(out / "classes.csv", sep=";")) == 104
    card = (out / "README.md").read_text()
    assert f"{len(released['reviewed'])} CT images" in card and "## Licence" in card
    assert f"{len(released['reviewed'])} drawn" in card  # every final label drawn by the (simulated) annotator
    assert f"({len(released['faces'])} of {len(released['reviewed'])} images have a face" in card
    assert f"| Subjects (CT series) | all | {len(released['reviewed'])} | 100.0 |" in card


def test_masks_hold_the_final_labels_and_importing_the_release_gives_them_back(released, tmp_path):
    ws, out = released["ws"], released["out"]
    sid = released["reviewed"][0]
    final = voxels(ws / "annotation" / "final" / "labels" / f"{sid}.nii.gz")
    for name in ("liver", "vertebrae_L1", "face"):
        assert np.array_equal(voxels(out / sid / "segmentations" / f"{name}.nii.gz"),
                              (final == classes.id_of(name)).astype(np.uint8)), name
    target = tmp_path / "imported_ws"
    run("data_prep.import_totalseg", target, f"root={out}")
    report = pd.read_csv(target / "imported" / "import_report.csv", dtype=str, keep_default_na=False)
    assert set(report.status) == {"ok"} and set(report.missing_v1) == {""}
    for sid in released["reviewed"]:
        assert np.array_equal(voxels(target / "imported" / "labels" / f"{sid}.nii.gz"),
                              voxels(ws / "annotation" / "final" / "labels" / f"{sid}.nii.gz")), sid
        assert filecmp.cmp(target / "curated" / "images" / f"{sid}.nii.gz", out / sid / "ct.nii.gz", shallow=False)


def test_faces_are_blurred_and_every_other_voxel_is_unchanged(released):
    ws, out = released["ws"], released["out"]
    assert released["faces"], "the cohort has no subject with a face in its field of view"
    for sid in released["faces"]:
        image = sitk.ReadImage(str(ws / "curated" / "images" / f"{sid}.nii.gz"))
        before = sitk.GetArrayFromImage(image)
        after = voxels(out / sid / "ct.nii.gz")
        face = voxels(ws / "annotation" / "final" / "labels" / f"{sid}.nii.gz") == FACE
        assert after.dtype == before.dtype and after.shape == before.shape
        # the default: 10 mm around the face, by the Euclidean distance in mm
        spacing = tuple(reversed(image.GetSpacing()))
        within = ndimage.distance_transform_edt(~face, sampling=spacing) <= 10.0
        changed = after != before
        assert not (changed & ~within).any(), f"{sid}: voxels changed outside the face region"
        assert changed[face].mean() > 0.5, f"{sid}: the face itself barely changed"
        assert np.abs(after[face].astype(float) - before[face]).mean() > 5.0  # HU
    for sid in sorted(set(released["reviewed"]) - set(released["faces"])):
        assert filecmp.cmp(ws / "curated" / "images" / f"{sid}.nii.gz", out / sid / "ct.nii.gz", shallow=False)


def test_defacing_on_arrays_fills_exactly_the_grown_face_and_rejects_unknown_methods():
    labels = np.zeros((20, 30, 30), dtype=np.uint8)
    labels[10, 15, 15] = FACE
    ct = np.arange(labels.size, dtype=np.int16).reshape(labels.shape)
    region = face_region(labels, (2.0, 1.0, 1.0), 3.0)
    z, y, x = np.indices(labels.shape)
    within = np.sqrt((2.0 * (z - 10)) ** 2 + (y - 15) ** 2 + (x - 15) ** 2) <= 3.0  # distance in mm, 2 mm slices
    assert np.array_equal(region, within) and region[11, 15, 15] and not region[12, 15, 15]
    filled, n = deface(ct, labels, (2.0, 1.0, 1.0), DefaceSettings(method="fill", margin_mm=3.0, fill_hu=-7))
    assert n == region.sum() and (filled[region] == -7).all() and np.array_equal(filled[~region], ct[~region])
    untouched, none = deface(ct, np.zeros_like(labels), (2.0, 1.0, 1.0), DefaceSettings())
    assert none == 0 and untouched is ct
    with pytest.raises(ValueError, match="face.method"):
        DefaceSettings(method="erase")


def test_a_release_built_twice_is_identical_and_a_rerun_writes_nothing(released, tmp_path):
    ws, out = released["ws"], released["out"]
    mtimes = {p: (out / p).stat().st_mtime_ns for p in files_under(out) if p.parts[0] != "README.md"}
    again = run("annotation_loop.release", ws)
    assert f"{len(released['reviewed'])} up to date, 0 to write" in again.stderr + again.stdout
    assert {p: (out / p).stat().st_mtime_ns for p in mtimes} == mtimes
    twin = tmp_path / "twin"
    run("annotation_loop.release", ws, f"out={twin}", f"record={tmp_path / 'record.csv'}")
    assert files_under(twin) == files_under(out)
    different = [p for p in files_under(out) if not filecmp.cmp(out / p, twin / p, shallow=False)]
    assert different == []


def test_an_identifying_value_fails_the_release_names_the_file_and_leaves_no_card(released, tmp_path):
    ws = released["ws"]
    header = pydicom.dcmread(next(p for p in (ws / "raw" / "dicom").rglob("*") if p.is_file()),
                             stop_before_pixels=True)
    name = str(header.PatientName)
    subjects = released["subjects"].copy()
    subjects.loc[subjects.subject_id == released["reviewed"][0], "model"] = name  # a leak into meta.csv
    leaky = tmp_path / "subjects.csv"
    subjects.to_csv(leaky, index=False)
    shutil.copytree(released["out"], tmp_path / "out")  # a copy of the release, up to date but for meta.csv
    shutil.copy(ws / "reports" / "release_record.csv", tmp_path / "record.csv")
    done = run("annotation_loop.release", ws, f"out={tmp_path / 'out'}", f"record={tmp_path / 'record.csv'}",
               f"subjects_csv={leaky}", check=False)
    assert done.returncode == 1
    assert f"{tmp_path / 'out' / 'meta.csv'}: PatientName" in done.stderr
    assert "release FAILED" in done.stderr and "Traceback" not in done.stderr
    assert name not in done.stderr + done.stdout
    assert not (tmp_path / "out" / "README.md").exists()


def test_a_missing_final_label_is_named_the_others_are_released_and_there_is_no_card(released, tmp_path):
    ws, missing = released["ws"], released["reviewed"][-1]
    labels = tmp_path / "labels"
    shutil.copytree(ws / "annotation" / "final" / "labels", labels)
    (labels / f"{missing}.nii.gz").unlink()
    out = tmp_path / "out"
    done = run("annotation_loop.release", ws, f"out={out}", f"record={tmp_path / 'record.csv'}", f"labels_dir={labels}",
               check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"error: {missing} not released: {labels / f'{missing}.nii.gz'}: No such file" in done.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == released["reviewed"][:-1]
    assert not (out / "README.md").exists()


def test_a_consent_registry_newer_than_curation_stops_the_release(released, tmp_path):
    ws = released["ws"]
    registry = tmp_path / "consent.csv"
    shutil.copy(ws / "raw" / "consent.csv", registry)
    os.utime(registry)
    done = run("annotation_loop.release", ws, f"dataset.consent_csv={registry}", check=False)
    assert done.returncode == 1 and "changed after the last curation" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_withdrawn_patient_leaves_the_release(released):
    """Last: it changes the workspace. Consent withdrawn, curation, the withdraw stage (which scrubs the release
    too, keeping meta.csv semicolon-separated), then the release brought up to date."""
    ws, out = released["ws"], released["out"]
    key = pd.read_csv(ws / "private" / "pseudonym_key.csv", dtype=str, keep_default_na=False)
    patient_id = key.set_index("subject_id").PatientID[released["reviewed"][0]]
    gone = set(key.loc[key.PatientID == patient_id, "subject_id"])
    registry = pd.read_csv(ws / "raw" / "consent.csv", dtype=str, keep_default_na=False)
    registry.loc[registry.patient_id == patient_id, "research_consent"] = "no"
    registry.to_csv(ws / "raw" / "consent.csv", index=False)
    refused = run("annotation_loop.release", ws, check=False)
    assert refused.returncode == 1 and "changed after the last curation" in refused.stderr
    run("data_prep.curate", ws)
    run("annotation_loop.withdraw", ws)
    meta = pd.read_csv(out / "meta.csv", sep=";", dtype=str)
    assert list(meta.columns) == META_COLUMNS.split(";") and not gone & set(meta.image_id)
    again = run("annotation_loop.release", ws)
    assert "audit: nothing found" in again.stdout
    kept = sorted(set(released["reviewed"]) - gone)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == kept
    assert list(pd.read_csv(out / "meta.csv", sep=";", dtype=str).image_id) == kept
    assert f"{len(kept)} CT images" in (out / "README.md").read_text()
