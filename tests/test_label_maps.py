"""One label-map policy in every stage: the same files accepted or rejected alike by export, evaluation,
QA and ingest, each rejection naming the file and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from annotation_loop.ingest import ingest
from annotation_loop.label_store import LabelStore
from annotation_loop.ledger import IN_CORRECTION, REVIEWED, Ledger
from annotation_loop.qa import compute_flags
from annotation_loop.start import start
from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.engine.datasets import PartDataset
from totalseg_train.engine.export import CHANNEL, ExportJob, export_subject
from totalseg_train.evaluate.folders import score_subject
from totalseg_train.evaluate.label_files import score_files
from totalseg_train.images import image_from_array, nifti_path, subject_id_of
from totalseg_train.label_maps import LabelFileError, read_label_map

SPACING_XYZ = (2.0, 2.0, 3.0)
SHAPE_ZYX = (20, 32, 32)
ACCEPTED = ("ints", "floats")
# The rejected files and what each rejection must say besides the file's name.
REJECTED = {"fractional": "whole numbers", "nan_voxel": "NaN", "id105": "[105]", "minus1": "[-1]", "cut": "cut off"}


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    labels[2:9, 4:14, 4:16] = classes.id_of("liver")
    labels[3:8, 18:26, 6:12] = classes.id_of("spleen")
    labels[10:16, 12:18, 12:18] = classes.id_of("vertebrae_L1")
    return labels


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image_from_array(array, SPACING_XYZ, (0.0, 0.0, 0.0)), str(path), useCompression=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """curated/images and subjects.csv, and labels/<subject>.nii.gz: the map as uint8 ("ints"), the same map
    as whole-number float32 ("floats"), and the rejected kinds."""
    ws = tmp_path_factory.mktemp("label_policy")
    labels = _labels()
    rng = np.random.default_rng(0)
    maps = {"ints": labels, "floats": labels.astype(np.float32)}
    maps["fractional"] = maps["floats"].copy()
    maps["fractional"][3, 5, 5] = 1.5
    maps["nan_voxel"] = maps["floats"].copy()
    maps["nan_voxel"][3, 5, 5] = np.nan
    maps["id105"] = labels.copy()
    maps["id105"][0, 0, 0] = 105
    maps["minus1"] = labels.astype(np.int16)
    maps["minus1"][0, 0, 0] = -1
    # Random ids compress badly: the file is large enough to be cut at 5000 bytes, as in the issue.
    maps["cut"] = rng.integers(0, classes.num_classes() + 1, SHAPE_ZYX).astype(np.uint8)
    for subject_id, array in maps.items():
        _write(nifti_path(ws / "labels", subject_id), array)
        _write(nifti_path(ws / "curated" / "images", subject_id), np.where(labels > 0, 50, -800).astype(np.int16))
    cut = nifti_path(ws / "labels", "cut")
    assert cut.stat().st_size > 5000
    cut.write_bytes(cut.read_bytes()[:5000])
    pd.DataFrame({"subject_id": list(maps), "patient": [f"p{i}" for i in range(len(maps))]}).to_csv(
        ws / "curated" / "subjects.csv", index=False)
    return ws


def _label(ws: Path, subject_id: str) -> Path:
    return nifti_path(ws / "labels", subject_id)


def _assert_rejected(message: str, path: Path, kind: str) -> None:
    assert str(path) in message and REJECTED[kind] in message, message


def test_the_policy_gives_uint8_v1_ids(workspace):
    ints, floats = read_label_map(_label(workspace, "ints")), read_label_map(_label(workspace, "floats"))
    assert floats.image.GetPixelID() == ints.image.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(floats.array, _labels()) and np.array_equal(ints.array, _labels())
    assert floats.image.GetSpacing() == SPACING_XYZ
    for kind in REJECTED:
        with pytest.raises(LabelFileError) as err:
            read_label_map(_label(workspace, kind))
        _assert_rejected(str(err.value), _label(workspace, kind), kind)



def test_the_voxels_of_a_label_map_outlive_the_label_map_object(workspace):
    import gc

    arrays = [read_label_map(_label(workspace, kind)).array for kind in ACCEPTED]  # the LabelMaps are gone
    gc.collect()
    [np.zeros(SHAPE_ZYX, np.uint8) + 7 for _ in range(20)]  # reuse freed memory, were it freed
    for array in arrays:
        assert np.array_equal(array, _labels())
        assert not array.flags.writeable

# Export: one row per subject with its status and message.

def _export(ws: Path, subject_id: str) -> tuple[str, str, str]:
    raw = ws / "raw" / subject_id
    job = ExportJob(subject_id, nifti_path(ws / "curated" / "images", subject_id), _label(ws, subject_id),
                    nifti_path(raw / "imagesTr", f"{subject_id}{CHANNEL}"), nifti_path(raw / "labelsTr", subject_id),
                    PartDataset("tiny", "all", 390).to_local())
    return export_subject(job)


def test_export_accepts_whole_number_floats_like_integers(workspace):
    exported = {}
    for subject_id in ACCEPTED:
        assert _export(workspace, subject_id) == (subject_id, "exported", "")
        out = nifti_path(workspace / "raw" / subject_id / "labelsTr", subject_id)
        exported[subject_id] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert exported["floats"].dtype == np.uint8 and np.array_equal(exported["floats"], exported["ints"])


@pytest.mark.parametrize("kind", list(REJECTED))
def test_export_reports_a_bad_label_map_by_name(workspace, kind):
    subject_id, status, message = _export(workspace, kind)
    assert (subject_id, status) == (kind, "error")
    _assert_rejected(message, _label(workspace, kind), kind)
    assert not nifti_path(workspace / "raw" / kind / "labelsTr", kind).exists()


# Evaluation: each map scored as the prediction against the integer map as ground truth.

@pytest.fixture(scope="module")
def ground_truth(workspace) -> Path:
    gt_dir = workspace / "gt"
    for subject_id in (*ACCEPTED, *REJECTED):
        _write(nifti_path(gt_dir, subject_id), _labels())
    return gt_dir


def test_evaluation_accepts_whole_number_floats_like_integers(workspace, ground_truth):
    ints, floats = (score_files(nifti_path(ground_truth, s), _label(workspace, s), 3.0, False) for s in ACCEPTED)
    pd.testing.assert_frame_equal(floats, ints)
    assert (floats.loc[floats.gt_present, "dice"] == 1).all()
    as_truth = score_files(_label(workspace, "floats"), _label(workspace, "ints"), 3.0, False)
    pd.testing.assert_frame_equal(as_truth, ints)


@pytest.mark.parametrize("kind", list(REJECTED))
def test_evaluation_reports_a_bad_label_map_by_name(workspace, ground_truth, kind):
    result = score_subject(kind, ground_truth, workspace / "labels", 3.0, False)
    assert result.scores is None
    _assert_rejected(result.error, _label(workspace, kind), kind)


# QA: the whole label folder at once; bad maps go to errors.csv, the rest are flagged.

@pytest.fixture(scope="module")
def qa(workspace) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    out = workspace / "qa"
    cfg = compose_config("qa", ["labels_dir=unused", "images_dir=null", "workers=1"])
    table = compute_flags(workspace / "labels", out, cfg, progress=False)
    return (table.set_index("subject_id"), pd.read_csv(out / "errors.csv"),
            pd.read_csv(out / "flag_findings.csv", keep_default_na=False))


def test_qa_accepts_whole_number_floats_like_integers(qa):
    table, _, findings = qa
    assert sorted(table.index) == sorted(ACCEPTED)
    pd.testing.assert_series_equal(table.loc["floats"], table.loc["ints"], check_names=False)
    by_subject = {s: findings[findings.subject_id == s].drop(columns="subject_id").reset_index(drop=True)
                  for s in ACCEPTED}
    pd.testing.assert_frame_equal(by_subject["floats"], by_subject["ints"])


@pytest.mark.parametrize("kind", list(REJECTED))
def test_qa_writes_a_bad_label_map_to_errors_csv_by_name(workspace, qa, kind):
    _, errors, _ = qa
    assert sorted(errors.subject_id) == sorted(REJECTED)
    _assert_rejected(errors.set_index("subject_id").at[kind, "error"], _label(workspace, kind), kind)


# Ingest: every subject is in correction; the corrections folder is the label folder.

@pytest.fixture(scope="module")
def ingested(workspace):
    overrides = [f"paths.workspace={workspace}", f"bootstrap.schedule=[{len(ACCEPTED) + len(REJECTED)}]"]
    assert len(start(compose_config("bootstrap_start", overrides))) == len(ACCEPTED) + len(REJECTED)
    cfg = compose_config("ingest", overrides + [f"corrected_dir={workspace / 'labels'}"])
    return ingest(cfg), Ledger(cfg.bootstrap.ledger), LabelStore(cfg.paths.annotation)


def test_ingest_accepts_whole_number_floats_like_integers(ingested):
    result, ledger, store = ingested
    assert sorted(result.accepted) == sorted(ACCEPTED)
    stored = {s: sitk.ReadImage(str(store.current(s))) for s in ACCEPTED}
    assert stored["floats"].GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(stored["floats"]), sitk.GetArrayFromImage(stored["ints"]))
    assert all(ledger.subject(s).state == REVIEWED for s in ACCEPTED)
    efforts = pd.DataFrame(ledger.efforts())
    ints, floats = (efforts[efforts.subject_id == s].drop(columns="subject_id").reset_index(drop=True)
                    for s in ACCEPTED)
    assert len(ints) == 4  # three classes and the total
    pd.testing.assert_frame_equal(floats, ints)


@pytest.mark.parametrize("kind", list(REJECTED))
def test_ingest_rejects_a_bad_label_map_by_name_leaving_the_ledger_unchanged(workspace, ingested, kind):
    result, ledger, store = ingested
    messages = {subject_id_of(path): message for path, message in result.rejected}
    assert sorted(messages) == sorted(REJECTED)
    _assert_rejected(messages[kind], _label(workspace, kind), kind)
    subject = ledger.subject(kind)
    assert subject.state == IN_CORRECTION and subject.final_version == 0
    assert not store.current(kind).exists() and not store.version(kind, 1).exists()
