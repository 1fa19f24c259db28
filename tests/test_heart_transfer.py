"""Heart label transfer: real anatomy as a synthetic pair, the stage on phantom pairs, resuming, bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from data_prep.heart_transfer import TransferError, transfer_labels
from data_prep.heart_transfer.transfer import dice, heart_ids, transfer
from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.images import read_image
from totalseg_train.label_maps import read_label_map

REPO = Path(__file__).resolve().parent.parent
NEAR_MOVED = ["liver", "spleen", "stomach", "aorta", "inferior_vena_cava", "kidney_right", "kidney_left", "gallbladder"]
THIN = "portal_vein_and_splenic_vein"  # 3-4 voxels across at 3 mm: 1 mm off costs ~0.1 Dice
BLOOD = ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein")


def _keep(labels: sitk.Image, ids: list[int]) -> sitk.Image:
    array = sitk.GetArrayFromImage(labels)
    array[~np.isin(array, ids)] = 0
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(labels)
    return out


def _bump_transform(reference: sitk.Image, centre: np.ndarray, shift_mm: np.ndarray, sigma_mm: float) -> sitk.Transform:
    """A smooth displacement (Gaussian bump of ``shift_mm`` at ``centre``) on the reference grid."""
    size = reference.GetSize()
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([xx, yy, zz], -1).reshape(-1, 3).astype(float)
    matrix = np.reshape(reference.GetDirection(), (3, 3)) * np.array(reference.GetSpacing())
    points = index @ matrix.T + np.array(reference.GetOrigin())
    weight = np.exp(-np.sum((points - centre) ** 2, axis=1) / (2 * sigma_mm**2))
    field = sitk.GetImageFromArray((weight[:, None] * shift_mm).reshape(*size[::-1], 3), isVector=True)
    field.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def test_real_anatomy_synthetic_pair(shared_dir):
    """The real CT (native: aorta ~40 HU) and a copy with its blood pool raised to 250 HU as the contrast scan;
    the native side moved by a known rigid motion and a 4 mm bump over the upper abdomen."""
    folder = shared_dir / "data" / "ct_example"
    ct = read_image(folder / "example_ct.nii.gz", sitk.sitkFloat32)
    ids = [classes.id_of(n) for n in (*NEAR_MOVED, THIN)]
    labels = _keep(read_label_map(folder / "example_ct_seg_fast.nii.gz", labels_version="v2").image, ids)
    array = sitk.GetArrayFromImage(labels)
    blood = np.isin(array, [classes.id_of(n) for n in BLOOD])
    enhanced = sitk.GetArrayFromImage(ct)
    enhanced[blood] = 250 + np.random.default_rng(0).normal(0, 15, int(blood.sum()))
    contrast = sitk.GetImageFromArray(enhanced)
    contrast.CopyInformation(ct)

    upper = np.argwhere(np.isin(array, [classes.id_of(n) for n in ("liver", "spleen", "aorta")]))[:, ::-1].mean(0)
    centre = np.array(ct.TransformContinuousIndexToPhysicalPoint(upper.tolist()))
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter(centre.tolist())
    rigid.SetRotation(*np.radians([1.5, -1.0, 2.0]))
    rigid.SetTranslation([2.0, -1.5, 2.5])
    truth_map = sitk.CompositeTransform([rigid, _bump_transform(ct, centre, np.array([1.0, -2.0, 3.5]), 50.0)])
    native = sitk.Resample(ct, ct, truth_map, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    truth = sitk.GetArrayFromImage(sitk.Resample(labels, ct, truth_map, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))

    cfg = compose_config("heart_transfer", ["labels_dir=unused"])
    result = transfer(contrast, labels, native, cfg, class_ids=ids)
    moved = sitk.GetArrayFromImage(result.labels)
    for name, class_id in zip(NEAR_MOVED, ids):
        registered, header_only = dice(truth == class_id, moved == class_id), dice(truth == class_id, array == class_id)
        assert registered >= 0.90, (name, registered)
        assert registered > header_only + 0.03, (name, registered, header_only)
    thin = classes.id_of(THIN)
    assert dice(truth == thin, moved == thin) > max(0.8, dice(truth == thin, array == thin) + 0.3)
    assert result.qc["bone_dice_after"] > max(0.95, result.qc["bone_dice_before"] + 0.2)
    assert result.qc["metric_final"] < result.qc["metric_start"]
    assert result.qc["deformable_seconds"] > 0
    # The liver and the aorta leave the scan at its top: the only finding, as it should be.
    assert result.qc["flag_reason"] == "the transferred labels reach the native scan's first or last slice"


def test_api_checks_its_input(shared_dir):
    folder = shared_dir / "data" / "ct_example"
    ct = read_image(folder / "example_ct.nii.gz", sitk.sitkFloat32)
    liver = _keep(read_label_map(folder / "example_ct_seg_fast.nii.gz", labels_version="v2").image,
                  [classes.id_of("liver")])
    with pytest.raises(TransferError, match="not heart sub-parts: 5 .*liver"):
        transfer_labels(ct, liver, ct)
    heart = sitk.Cast(liver > 0, sitk.sitkUInt8) * heart_ids()[0]
    far = sitk.Image(ct)
    far.SetOrigin([o + 2000.0 for o in ct.GetOrigin()])
    with pytest.raises(TransferError, match="do not overlap"):
        transfer_labels(ct, heart, far)
    with pytest.raises(TransferError, match="grid"):
        transfer_labels(ct, sitk.RegionOfInterest(heart, [50, 50, 50], [0, 0, 0]), ct)


def _run(workspace: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_prep.heart_transfer", f"paths.workspace={workspace}",
                           f"out={out}/heart", f"report={out}/heart_transfer.csv", f"qa_dir={out}/qa",
                           "progress=false", *overrides], capture_output=True, text=True, cwd=REPO)


@pytest.fixture(scope="module")
def transferred(curated_workspace, tmp_path_factory):
    """The stage run once on the phantom's pairs (truth labels of the contrast subjects, other classes dropped)."""
    out = tmp_path_factory.mktemp("heart_transfer")
    run = _run(curated_workspace, out, f"labels_dir={curated_workspace / 'truth_labels'}", "other_classes=drop")
    assert run.returncode == 0, run.stderr[-3000:]
    return curated_workspace, out, run


def test_stage_transfers_every_phantom_pair(transferred):
    workspace, out, run = transferred
    subjects = pd.read_csv(workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    natives = set(subjects.subject_id[(subjects.paired_subject_id != "") & (subjects.contrast_phase == "native")])
    report = pd.read_csv(out / "heart_transfer.csv", dtype={"native_subject_id": str})
    assert set(report.native_subject_id) == natives and len(natives) == 2
    assert set(report.status) <= {"transferred", "flagged"}, report.reason.tolist()
    assert f"2 pairs; {(report.status == 'transferred').sum()} transferred (0 up to date)" in run.stdout
    truth_dir = workspace / "truth_labels"
    for row in report.itertuples():
        folder = "labels" if row.status == "transferred" else "flagged"
        assert row.flag == (row.status == "flagged")
        labels = read_image(out / "heart" / folder / f"{row.native_subject_id}.nii.gz")
        native = read_image(workspace / "curated" / "images" / f"{row.native_subject_id}.nii.gz")
        assert labels.GetSize() == native.GetSize() and labels.GetOrigin() == native.GetOrigin()
        moved = sitk.GetArrayFromImage(labels)
        assert set(np.unique(moved)) - {0} <= set(heart_ids())
        truth = sitk.GetArrayFromImage(read_image(truth_dir / f"{row.native_subject_id}.nii.gz"))
        header_only = sitk.GetArrayFromImage(read_image(truth_dir / f"{row.contrast_subject_id}.nii.gz"))
        whole_heart = not (np.isin(truth[0], heart_ids()).any() or np.isin(truth[-1], heart_ids()).any())
        scores = {classes.by_id(i).name: (dice(truth == i, moved == i), dice(truth == i, header_only == i))
                  for i in heart_ids() if (truth == i).sum() > 50}
        assert scores
        assert (out / "qa" / "subjects" / f"{row.native_subject_id}.png").read_bytes()[:4] == b"\x89PNG"
        if row.status == "flagged":
            # The phantom's abdominal pair shows only the heart's lowest slices (5 mm): QC sees the heart cut by
            # the scan's edge and its chambers' volumes changed, and holds the pair back.
            assert not whole_heart and "first or last slice" in row.flag_reason, row.flag_reason
            continue
        assert whole_heart
        assert min(s for s, _ in scores.values()) >= 0.90, scores
        assert min(s for s, _ in scores.values()) > min(h for _, h in scores.values()) + 0.05, scores
        assert row.bone_dice_after > row.bone_dice_before
    index = pd.read_csv(out / "heart" / "labels" / "index.csv", dtype=str, keep_default_na=False)
    done = report[report.status == "transferred"]
    assert len(done) >= 1
    assert set(index.subject_id[index.source == "transferred"]) == set(done.native_subject_id)
    assert dict(zip(index.subject_id, index.from_subject))[done.native_subject_id.iloc[0]] == done.contrast_subject_id.iloc[0]
    # Every other subject keeps its own (truth) heart labels; a held-back native subject has none.
    assert len(index) == len(subjects) - (report.status == "flagged").sum()
    flags = pd.read_csv(out / "qa" / "flags.csv", dtype={"subject_id": str})
    assert set(flags.subject_id) == natives and flags.heart_transfer.sum() == (report.status == "flagged").sum()


def test_stage_rerun_skips_finished_pairs(transferred):
    workspace, out, _ = transferred
    labels = sorted((out / "heart" / "labels").glob("*.nii.gz"))
    before = {p: p.stat().st_mtime_ns for p in labels}
    run = _run(workspace, out, f"labels_dir={workspace / 'truth_labels'}", "other_classes=drop")
    assert run.returncode == 0 and "(1 up to date)" in run.stdout, run.stdout + run.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in labels} == before
    report = pd.read_csv(out / "heart_transfer.csv")
    assert report.reused.all() and report.bone_dice_after.notna().all()


def test_pairs_registered_as_two_local_jobs_give_what_one_process_wrote(transferred, tmp_path):
    """``-m shard.index=0,1 shard.count=2 hydra/launcher=local``, the cluster pattern with submitit's local
    executor: each job registers its own pairs, the last one merges; labels, tables and review flags are those of
    the one-process run (the merged report's ``reused`` says the merge reused the shards' registrations)."""
    workspace, one, _ = transferred
    run = subprocess.run([sys.executable, "-m", "data_prep.heart_transfer", "-m", f"paths.workspace={workspace}",
                          f"out={tmp_path}/heart", f"report={tmp_path}/heart_transfer.csv", f"qa_dir={tmp_path}/qa",
                          "progress=false", f"labels_dir={workspace / 'truth_labels'}", "other_classes=drop",
                          "shard.index=0,1", "shard.count=2", "hydra/launcher=local"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    reports = [pd.read_csv(folder / "heart_transfer.csv", dtype={"native_subject_id": str}) for folder in (one, tmp_path)]
    assert reports[1].reused.all()
    how_long = [c for c in reports[0].columns if c.endswith("_seconds")]  # how fast, not what was found
    assert how_long
    pd.testing.assert_frame_equal(*(r.drop(columns=["reused", *how_long]) for r in reports))
    parts = pd.concat(pd.read_csv(tmp_path / "heart" / "shards" / f"heart_transfer_{i}of2.csv",
                                  dtype={"native_subject_id": str}) for i in range(2))
    assert sorted(parts.native_subject_id) == sorted(reports[0].native_subject_id), "each pair in exactly one shard"
    assert not parts.reused.any()
    for folder in ("labels", "flagged"):
        names = sorted(p.name for p in (one / "heart" / folder).glob("*.nii.gz"))
        assert names == sorted(p.name for p in (tmp_path / "heart" / folder).glob("*.nii.gz"))
        for name in names:
            arrays = [sitk.GetArrayFromImage(read_image(f / "heart" / folder / name)) for f in (one, tmp_path)]
            np.testing.assert_array_equal(*arrays, err_msg=f"{folder}/{name}")
    indexes = [pd.read_csv(f / "heart" / "labels" / "index.csv", dtype=str, keep_default_na=False) for f in (one, tmp_path)]
    pd.testing.assert_frame_equal(*(i.drop(columns=["file"]) for i in indexes))
    assert (one / "qa" / "flags.csv").read_bytes() == (tmp_path / "qa" / "flags.csv").read_bytes()


def test_bad_pairs_get_a_reason_and_the_rest_go_on(curated_workspace, tmp_path):
    subjects = pd.read_csv(curated_workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    contrast = subjects.subject_id[(subjects.paired_subject_id != "") & (subjects.contrast_phase != "native")]
    truth = curated_workspace / "truth_labels"
    # The pair with the whole heart in view registers; the other shows too little of it (see above).
    def cut(subject: str) -> bool:
        heart = np.isin(sitk.GetArrayFromImage(read_image(truth / f"{subject}.nii.gz")), heart_ids())
        return bool(heart[0].any() or heart[-1].any())

    good, bad = sorted(contrast, key=cut)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    heart = _keep(read_image(truth / f"{good}.nii.gz"), heart_ids())
    sitk.WriteImage(heart, str(labels_dir / f"{good}.nii.gz"))
    # Pair 2: labels on another grid than the contrast image.
    sitk.WriteImage(sitk.Shrink(_keep(read_image(truth / f"{bad}.nii.gz"), heart_ids()), [2, 2, 1]),
                    str(labels_dir / f"{bad}.nii.gz"))
    run = _run(curated_workspace, tmp_path, f"labels_dir={labels_dir}")
    assert run.returncode == 0, run.stderr[-3000:]
    report = pd.read_csv(tmp_path / "heart_transfer.csv", keep_default_na=False).set_index("contrast_subject_id")
    assert report.loc[good, "status"] == "transferred"
    assert report.loc[bad, "status"] == "error"
    assert "grid" in report.loc[bad, "reason"] and f"{bad}.nii.gz" in report.loc[bad, "reason"]

    # Pair 2 without labels is listed, not an error; pair 1 in other frames of reference is refused.
    (labels_dir / f"{bad}.nii.gz").unlink()
    edited = subjects.copy()
    edited.loc[edited.subject_id.isin([good, *edited.paired_subject_id[edited.subject_id == good]]),
               "pair_same_frame"] = "false"
    edited.to_csv(tmp_path / "subjects.csv", index=False)
    run = _run(curated_workspace, tmp_path, f"labels_dir={labels_dir}", f"subjects_csv={tmp_path / 'subjects.csv'}")
    assert run.returncode == 1 and "no pair could be transferred" in run.stderr
    report = pd.read_csv(tmp_path / "heart_transfer.csv", keep_default_na=False).set_index("contrast_subject_id")
    assert report.loc[bad, "status"] == "no_labels"
    assert report.loc[good, "status"] == "error" and "frame of reference" in report.loc[good, "reason"]
    assert not (tmp_path / "heart" / "labels" / f"{report.loc[good, 'native_subject_id']}.nii.gz").exists()

    # Full 104-class maps are refused by default, naming the file and the classes.
    shutil.copy(truth / f"{good}.nii.gz", labels_dir / f"{good}.nii.gz")
    run = _run(curated_workspace, tmp_path, f"labels_dir={labels_dir}")
    report = pd.read_csv(tmp_path / "heart_transfer.csv", keep_default_na=False).set_index("contrast_subject_id")
    assert run.returncode == 1
    assert f"{good}.nii.gz" in report.loc[good, "reason"] and "not heart sub-parts" in report.loc[good, "reason"]



def test_a_diverging_registration_gets_a_row_naming_the_pair_and_the_stage_exits_non_zero(curated_workspace, tmp_path):
    # A step size a thousand times too large throws the native region off the contrast scan on its first steps.
    run = _run(curated_workspace, tmp_path, f"labels_dir={curated_workspace / 'truth_labels'}", "other_classes=drop",
               "registration.rigid.learning_rate=1000")
    assert run.returncode == 1 and "no pair could be transferred" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    report = pd.read_csv(tmp_path / "heart_transfer.csv", keep_default_na=False)
    assert len(report) == 2 and (report.status == "error").all()
    for row in report.itertuples():
        assert row.reason.startswith(f"{row.native_subject_id}.nii.gz <- {row.contrast_subject_id}.nii.gz"), row.reason
        assert "rigid registration diverged" in row.reason and "0x" not in row.reason, row.reason
    assert not list((tmp_path / "heart" / "labels").glob(f"{report.native_subject_id[0]}*"))

def test_review_page_serves_the_pair_sheets(transferred, tmp_path):
    """The QC sheets open in the review page like QA sheets, with the transfer's flag as the page's flag."""
    import json
    import threading
    import urllib.request

    from annotation_loop.review import make_server

    _, out, _ = transferred
    report = pd.read_csv(out / "heart_transfer.csv", dtype={"native_subject_id": str})
    server = make_server(out / "qa", tmp_path / "decisions.csv")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        listing = json.loads(urllib.request.urlopen(f"{base}/api/subjects").read())
        assert listing["flags"] == ["heart_transfer"]
        shown = {s["subject_id"]: s for s in listing["subjects"]}
        assert set(shown) == set(report.native_subject_id)
        for row in report.itertuples():
            assert shown[row.native_subject_id]["flags"] == (["heart_transfer"] if row.flag else [])
            sheet = urllib.request.urlopen(f"{base}/sheets/{row.native_subject_id}.png").read()
            assert sheet.startswith(b"\x89PNG")
    finally:
        server.shutdown()


def test_coarse_levels_are_dropped_for_a_small_region():
    """A heart cut by the scan's edge spans a few slices: a 4x shrink of it left ITK no sample inside the image."""
    from omegaconf import OmegaConf

    from data_prep.heart_transfer.registration import levels

    stage = OmegaConf.create({"shrink_factors": [4, 2, 1], "smoothing_sigmas_mm": [4.0, 2.0, 0.0]})
    assert levels(stage, (60, 60, 40)) == ([4, 2, 1], [4.0, 2.0, 0.0])
    assert levels(stage, (60, 60, 20)) == ([2, 1], [2.0, 0.0])
    assert levels(stage, (60, 60, 3)) == ([1], [0.0])
