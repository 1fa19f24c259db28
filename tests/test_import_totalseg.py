"""python -m data_prep.import_totalseg: the real CT and label maps of ../shared/data/ct_example laid out as
TotalSegmentator's public v2 release (one mask per v2 class name), imported, checked voxel by voxel against
the original label maps, and trained on with no other step."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REPO
from data_prep.import_totalseg import merge_masks
from totalseg_train import classes

# image_id -> (CT, v2 label map) of ../shared/data/ct_example
SUBJECTS = {"s0011": ("example_ct.nii.gz", "example_ct_seg_fast.nii.gz"),
            "s0012": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
            "s0013": ("example_ct_sm.nii.gz", "example_seg_fast.nii.gz")}
META = """image_id;age;gender;institute;study_type;split;manufacturer;scanner_model;kvp
s0011;64;m;A;ct abdomen;train;Siemens;SOMATOM Force;100
s0012;71;f;B;ct thorax-abdomen;val;GE;Revolution;120
s0013;55;f;A;ct abdomen-pelvis;test;Siemens;SOMATOM Force;100
s0014;80;m;C;ct abdomen;train;Philips;iCT 256;120
"""


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def import_cli(root: Path, ws: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.import_totalseg", f"root={root}", f"paths.workspace={ws}",
                           "workers=2", "progress=false"], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def released(shared_dir, tmp_path_factory) -> dict:
    """The public layout with v2 names: every v2 class a mask file (empty ones too). s0012's spleen mask also
    claims a 3-voxel cube of its liver (an overlap); s0014's CT is cut off (a broken file)."""
    source = shared_dir / "data" / "ct_example"
    v2_names = pd.read_csv(source / "labels_v2_total.csv").set_index("id").name.to_dict()
    root = tmp_path_factory.mktemp("totalseg_release")
    originals = {}
    for image_id, (ct, seg) in SUBJECTS.items():
        (root / image_id / "segmentations").mkdir(parents=True)
        shutil.copy(source / ct, root / image_id / "ct.nii.gz")
        label = sitk.ReadImage(str(source / seg))
        v2 = sitk.GetArrayFromImage(label)
        originals[image_id] = classes.map_v2_to_v1(v2)
        for v2_id, name in v2_names.items():
            mask = (v2 == v2_id).astype(np.uint8)
            if image_id == "s0012" and name == "spleen":
                z, y, x = np.argwhere(v2 == 5)[len(np.argwhere(v2 == 5)) // 2]  # inside the liver (v2 id 5)
                mask[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2] = 1
                originals["cube"] = (z, y, x)
            image = sitk.GetImageFromArray(mask)
            image.CopyInformation(label)
            sitk.WriteImage(image, str(root / image_id / "segmentations" / f"{name}.nii.gz"), useCompression=True)
    (root / "s0014" / "segmentations").mkdir(parents=True)
    (root / "s0014" / "ct.nii.gz").write_bytes((source / "example_ct_sm.nii.gz").read_bytes()[:5000])
    (root / "meta.csv").write_text(META)
    ws = tmp_path_factory.mktemp("imported_ws")
    first = import_cli(root, ws)
    return {"root": root, "ws": ws, "first": first, "originals": originals, "v2_names": v2_names}


def test_masks_become_the_original_v1_label_maps_and_the_report_says_what_was_missing(released):
    ws, run = released["ws"], released["first"]
    output = run.stdout + run.stderr
    assert run.returncode == 1 and "s0014: " in output and "Traceback" not in output  # the others went on
    assert "imported 3 of 4 subjects" in run.stdout
    labels = ws / "imported" / "labels"
    assert np.array_equal(read(labels / "s0011.nii.gz"), released["originals"]["s0011"])
    assert np.array_equal(read(labels / "s0013.nii.gz"), released["originals"]["s0013"])
    for image_id, (ct, _) in SUBJECTS.items():
        image = ws / "curated" / "images" / f"{image_id}.nii.gz"
        assert image.read_bytes() == (released["root"] / image_id / "ct.nii.gz").read_bytes()
        assert sitk.ReadImage(str(labels / f"{image_id}.nii.gz")).GetPixelID() == sitk.sitkUInt8
    report = pd.read_csv(ws / "imported" / "import_report.csv", dtype=str, keep_default_na=False).set_index("image_id")
    absent = {c.name for c in classes.all_classes() if c.v2_total_id is None}
    assert len(absent) == 7 and set(report.loc["s0011", "missing_v1"].split("; ")) == absent
    not_v1 = set(report.loc["s0011", "not_in_v1"].split("; "))
    assert len(not_v1) == len(released["v2_names"]) - 97 and "heart" in not_v1 and "liver" not in not_v1
    assert report.loc["s0014", "status"] == "error" and "ct.nii.gz" in report.loc["s0014", "error"]
    assert int(report.loc["s0011", "classes"]) == len(np.unique(released["originals"]["s0011"])) - 1


def test_an_overlap_goes_to_the_smaller_structure_and_is_reported(released):
    labels = read(released["ws"] / "imported" / "labels" / "s0012.nii.gz")
    expected = released["originals"]["s0012"].copy()
    z, y, x = released["originals"]["cube"]
    cube = expected[z - 1:z + 2, y - 1:y + 2, x - 1:x + 2]
    claimed = int(np.count_nonzero(cube == classes.id_of("liver")))
    cube[:] = classes.id_of("spleen")
    assert np.array_equal(labels, expected)
    report = pd.read_csv(released["ws"] / "imported" / "import_report.csv", dtype=str, keep_default_na=False)
    assert report.set_index("image_id").loc["s0012", "overlaps"] == f"spleen over liver: {claimed}"
    assert "1 subject(s) with overlapping masks (the smaller structure keeps the voxel" in released["first"].stdout
    merged, overlaps = merge_masks({1: np.array([1, 1, 1, 0, 0]), 5: np.array([0, 0, 1, 1, 0]),
                                    2: np.array([1, 1, 1, 1, 1])})  # volumes 3, 2, 5
    assert list(merged) == [1, 1, 5, 5, 2] and overlaps == [(1, 2, 3), (5, 1, 1), (5, 2, 1)]


def test_meta_becomes_the_subjects_table_and_the_split_and_a_rerun_skips_what_is_done(released):
    ws = released["ws"]
    subjects = pd.read_csv(ws / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    assert list(subjects.subject_id) == ["s0011", "s0012", "s0013"] and list(subjects.patient) == list(subjects.subject_id)
    assert list(subjects.sex) == ["M", "F", "F"] and list(subjects.site) == ["A", "B", "A"]
    assert list(subjects.model) == ["SOMATOM Force", "Revolution", "SOMATOM Force"]
    assert list(subjects.n_slices) == ["112", "30", "30"]
    split = json.loads((ws / "nnunet" / "split.json").read_text())
    assert (split["train"], split["val"], split["test"]) == (["s0011"], ["s0012"], ["s0013"])
    before = {p.name: p.stat().st_mtime_ns for p in (ws / "imported" / "labels").iterdir()}
    again = import_cli(released["root"], ws)
    assert again.returncode == 1 and "imported 3 of 4" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (ws / "imported" / "labels").iterdir()} == before


def test_training_runs_on_the_imported_workspace_with_the_datasets_split(released):
    ws = released["ws"]
    run = subprocess.run([sys.executable, "-m", "totalseg_train", "+experiment=tiny", f"paths.workspace={ws}",
                          f"labels_dir={ws / 'imported' / 'labels'}", "device=cpu", "workers=1", "data_workers=0",
                          "torch_threads=1", "model.epochs=1", "model.iterations_per_epoch=2", "model.val_iterations=1",
                          "model.final_validation=false"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    summary = json.loads((ws / "results" / "tiny" / "run_summary.json").read_text())
    assert summary["split"]["test_subjects"] == ["s0013"] and summary["split"]["train"] == 1
    assert (ws / "results" / "tiny" / "predictions" / "s0013.nii.gz").is_file()
