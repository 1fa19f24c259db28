"""The data-protection audit: a leak planted in each kind of file a workspace holds is found, with the file and
the kind of value, never the value; a clean curated workspace passes."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from PIL import Image, PngImagePlugin

from totalseg_train.identifying_data import audit, identifying_values

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def values(curated_workspace) -> dict[str, str]:
    return identifying_values(curated_workspace / "raw" / "dicom", curated_workspace / "private" / "pseudonym_key.csv")


def one_of(values: dict[str, str], kind: str) -> str:
    return next(v for v, k in sorted(values.items()) if k == kind and len(v) >= 6)


def plant(ws: Path, values: dict[str, str], dicom_file: Path) -> dict[str, str]:
    """One leak in each kind of file; returns file (relative) -> the kind planted."""
    name, pid = one_of(values, "PatientName"), one_of(values, "PatientID")
    planted: dict[str, str] = {}

    def put(relative: str, kind: str) -> Path:
        path = ws / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        planted[relative] = kind
        return path

    image = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8))
    image.SetMetaData("ITK_FileNotes", name)  # the NIfTI header's descrip field
    sitk.WriteImage(image, str(put("annotation/final/labels/s0001.nii.gz", "PatientName")), useCompression=True)
    nifti = nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), np.eye(4))
    nifti.header.extensions.append(nib.nifti1.Nifti1Extension(6, f"patient {pid}".encode()))
    nib.save(nifti, put("nnunet/raw/Dataset390_tiny/imagesTr/s0002_0000.nii", "PatientID"))
    shutil.copy(dicom_file, put("results/tiny/export/seg.dcm", "PatientBirthDate"))
    pd.DataFrame({"subject_id": ["s0001"], "note": [one_of(values, "AccessionNumber")]}).to_parquet(
        put("results/tiny/scores.parquet", "AccessionNumber"))
    pd.DataFrame({"uid": [one_of(values, "StudyInstanceUID")]}).to_csv(put("qa/flags.csv", "StudyInstanceUID"))
    put("nnunet/raw/Dataset390_tiny/dataset.json", "InstitutionName").write_text(
        json.dumps({"description": f"scans of {one_of(values, 'InstitutionName')}"}))
    put("nnunet/preprocessed/Dataset390_tiny/TotalSegPlans.json", "SeriesInstanceUID").write_text(
        json.dumps({"note": one_of(values, "SeriesInstanceUID")}))
    put("nnunet/preprocessed/Dataset390_tiny/3d/s0003.pkl", "PatientID").write_bytes(
        pickle.dumps({"spacing": [1.0, 1.0, 1.0], "source": pid}))
    put("logs/train/2026-12-03/train.log", "PatientName").write_text(f"INFO loading {name}\n")
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"rendered for {name}", zip=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(put("qa/subjects/s0004.png", "PatientName"), pnginfo=info)
    put("wandb/offline-run-1/run-1.wandb", "PatientID").write_bytes(b"\x00\x17W&B" + pid.encode() + b"\xff" * 40)
    torch.save({"network_weights": {"w": torch.zeros(3)}, "init_args": {"patient": name}},
               put("nnunet/results/Dataset390_tiny/fold_0/checkpoint_final.pth", "PatientName"))
    with gzip.open(put("reports/notes.txt.gz", "AccessionNumber"), "wt") as f:
        f.write(f"accession {one_of(values, 'AccessionNumber')}\n")
    return planted


def test_a_leak_in_every_kind_of_file_is_found_by_kind(curated_workspace, values, tmp_path):
    assert len(values) > 40 and {"PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                                 "StudyInstanceUID", "SeriesInstanceUID"} <= set(values.values())
    dicom_file = next((curated_workspace / "raw" / "dicom").rglob("*.dcm"))
    planted = plant(tmp_path, values, dicom_file)
    # Clean files beside them: an image's voxels, a rendered sheet and a checkpoint's tensors are not text.
    sitk.WriteImage(sitk.ReadImage(str(next((curated_workspace / "curated" / "images").glob("*.nii.gz")))),
                    str(tmp_path / "clean_image.nii.gz"))
    shutil.copy(next((curated_workspace / "raw" / "dicom").rglob("*.dcm")), tmp_path / "raw_copy.dcm")
    findings = audit(tmp_path, values, [tmp_path / "raw_copy.dcm"], withdrawn={"s0004"}, withdrawn_skip=[])
    found = {(str(Path(f.path).relative_to(tmp_path)), f.kind) for f in findings}
    for relative, kind in planted.items():
        assert (relative, kind) in found, (relative, kind, sorted(found))
    assert not {r for r, _ in found} - set(planted), "a clean file was reported"
    assert ("qa/subjects/s0004.png", "withdrawn subject") in found
    assert len({r for r, _ in found}) == len(planted)


def test_the_command_passes_a_clean_workspace_and_names_files_and_kinds_never_values(curated_workspace, values,
                                                                                      tmp_path):
    clean = subprocess.run([sys.executable, "-m", "data_prep.audit", f"paths.workspace={curated_workspace}"],
                           capture_output=True, text=True, cwd=REPO)
    assert clean.returncode == 0 and "no identifying value" in clean.stdout, clean.stderr[-2000:]
    plant(tmp_path, values, next((curated_workspace / "raw" / "dicom").rglob("*.dcm")))
    leaked = subprocess.run([sys.executable, "-m", "data_prep.audit", f"paths.workspace={tmp_path}",
                             f"dataset.dicom_root={curated_workspace / 'raw' / 'dicom'}",
                             f"key_csv={curated_workspace / 'private' / 'pseudonym_key.csv'}"],
                            capture_output=True, text=True, cwd=REPO)
    assert leaked.returncode == 1 and "audit FAILED" in leaked.stderr
    assert f"{tmp_path / 'qa' / 'flags.csv'}: StudyInstanceUID" in leaked.stderr
    shown = [v for v in values if len(v) >= 6 and v in leaked.stdout + leaked.stderr]
    assert shown == [], "the audit printed identifying values"
