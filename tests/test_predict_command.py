"""python -m totalseg_train.predict: a trained model applied to a DICOM series, NIfTI files and a folder of them,
as label maps or one mask per class, on each image's grid (the session's tiny models; nothing is trained here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from conftest import REPO
from totalseg_train import classes
from totalseg_train.images import Geometry
from totalseg_train.predict import find_inputs
from totalseg_train.public_layout import class_masks


def predict_cli(*overrides: str, ok: bool = True) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "totalseg_train.predict", "device=cpu", "workers=1", "torch_threads=1",
                          "progress=false", *overrides], capture_output=True, text=True, cwd=REPO)
    assert (run.returncode == 0) == ok, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_a_dicom_series_and_a_folder_of_niftis_become_label_maps_on_their_own_grids(tiny_run, shared_dir, tmp_path):
    dicom = tmp_path / "ct_dicom"
    shutil.copytree(shared_dir / "data" / "ct_example" / "example_ct_dicom", dicom)
    out = tmp_path / "out"
    run = predict_cli(f"paths.workspace={tmp_path}", f"model={tiny_run / 'results' / 'tiny'}", f"input={dicom}",
                      f"output={out}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dicom)))
    series = reader.Execute()
    label = sitk.ReadImage(str(out / "ct_dicom.nii.gz"))
    assert series.GetSize()[2] == 20 and Geometry.of_image(label).matches(Geometry.of_image(series))
    assert set(np.unique(sitk.GetArrayFromImage(label))) <= set(range(classes.num_classes() + 1))
    assert json.loads((out / "prediction.json").read_text())["classes"] is None
    assert sorted(p.name for p in out.iterdir()) == ["ct_dicom.nii.gz", "prediction.json"]  # no scratch left
    assert "Traceback" not in run.stderr

    images = tmp_path / "images"
    images.mkdir()
    for sid in ("s0004", "s0006"):
        shutil.copy(tiny_run / "curated" / "images" / f"{sid}.nii.gz", images / f"{sid}.nii.gz")
    folder_out = tmp_path / "folder_out"
    predict_cli(f"paths.workspace={tmp_path}", f"model={tiny_run / 'results' / 'tiny'}", f"input={images}",
                f"output={folder_out}")
    for sid in ("s0004", "s0006"):
        assert Geometry.of_file(folder_out / f"{sid}.nii.gz").matches(Geometry.of_file(images / f"{sid}.nii.gz"))
    before = {p.name: p.stat().st_mtime_ns for p in folder_out.glob("*.nii.gz")}
    again = predict_cli(f"paths.workspace={tmp_path}", f"model={tiny_run / 'results' / 'tiny'}", f"input={images}",
                        f"output={folder_out}")
    assert {p.name: p.stat().st_mtime_ns for p in folder_out.glob("*.nii.gz")} == before
    assert "2 image(s), 2 done before" in again.stdout + again.stderr

    # Other settings into the same folder: an error that says so, nothing written.
    other = predict_cli(f"paths.workspace={tmp_path}", f"model={tiny_run / 'results' / 'tiny'}", f"input={images}",
                        f"output={folder_out}", "classes=[liver]", ok=False)
    assert "other settings" in other.stderr and "Traceback" not in other.stderr
    assert {p.name: p.stat().st_mtime_ns for p in folder_out.glob("*.nii.gz")} == before


def test_masks_of_chosen_classes_come_from_the_part_models_that_hold_them(tiny_parts_run, tmp_path):
    """tiny_parts: organs and cardiac. Asking for two heart classes runs the cardiac model alone; its masks are
    the cardiac model's label map split by class, and the organs' classes are not written."""
    model = tiny_parts_run / "results" / "tiny_parts"
    image = tiny_parts_run / "curated" / "images" / "s0004.nii.gz"
    wanted = ["heart_myocardium", "heart_atrium_left"]
    masks_out, labels_out = tmp_path / "masks", tmp_path / "labels"
    run = predict_cli(f"paths.workspace={tmp_path}", f"model={model}", f"input={image}", f"output={masks_out}",
                      f"classes=[{','.join(wanted)}]", "masks=true", "verbose=true")
    assert "with the cardiac part model" in run.stdout + run.stderr
    assert "with the organs part model" not in run.stdout + run.stderr
    assert sorted(p.name for p in (masks_out / "s0004").iterdir()) == sorted(f"{n}.nii.gz" for n in wanted)
    predict_cli(f"paths.workspace={tmp_path}", f"model={model}", f"input={image}", f"output={labels_out}",
                f"classes=[{','.join(wanted)}]")
    labels = array(labels_out / "s0004.nii.gz")
    assert set(np.unique(labels)) <= {0, *(classes.id_of(n) for n in wanted)}
    for name in wanted:
        mask = sitk.ReadImage(str(masks_out / "s0004" / f"{name}.nii.gz"))
        assert Geometry.of_image(mask).matches(Geometry.of_file(image))
        assert np.array_equal(sitk.GetArrayFromImage(mask), (labels == classes.id_of(name)).astype(np.uint8))


def test_bad_inputs_and_class_names_are_errors_naming_them(tiny_run, shared_dir, tmp_path):
    two = tmp_path / "two_series"
    two.mkdir()
    source = sorted((shared_dir / "data" / "ct_example" / "example_ct_dicom").iterdir())
    for i, path in enumerate(source[:4]):  # two series: the second pair gets another SeriesInstanceUID
        ds = pydicom.dcmread(path)
        if i >= 2:
            ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
        ds.save_as(two / path.name)
    with pytest.raises(ValueError, match="2 DICOM series in one folder"):
        find_inputs(two)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="neither .nii.gz images nor a DICOM series"):
        find_inputs(empty)
    run = predict_cli(f"paths.workspace={tmp_path}", f"model={tiny_run / 'results' / 'tiny'}",
                      f"input={tiny_run / 'curated' / 'images' / 's0004.nii.gz'}", f"output={tmp_path / 'out'}",
                      "classes=[liver,livers,kidney]", ok=False)
    assert "unknown class name(s) livers, kidney" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()
    masks = class_masks(np.array([[0, 5, 5], [1, 5, 0]], dtype=np.uint8), [1, 5, 7])
    assert [int(m.sum()) for m in masks.values()] == [1, 3, 0] and all(m.dtype == np.uint8 for m in masks.values())
