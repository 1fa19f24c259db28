"""make robustness's kill runs, small: curation and truth export killed with SIGKILL at seeded random moments,
rerun, and compared with uninterrupted runs; and the checks that find a half-written file of each format."""

from __future__ import annotations

import json
import shutil

import blosc2
import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch

from annotation_loop import fault_kills


def test_killed_curation_and_truth_export_end_as_if_never_killed(tmp_path, coarse_cohort):
    made = coarse_cohort(tmp_path / "made", 8)
    raw_only = tmp_path / "phantom"
    shutil.copytree(made / "raw", raw_only / "raw")  # the phantom's DICOM and consent, nothing curated
    logs = tmp_path / "logs"
    logs.mkdir()
    rng = np.random.default_rng(0)
    state = raw_only
    for stage in fault_kills.STAGES[:2]:
        result, state = fault_kills.kill_stage(stage, state, tmp_path / "ws", 3, rng, logs)
        assert result.ok, fault_kills.describe(result)
        assert result.kills >= 3 and result.attempts > result.kills and result.chains >= 1
        assert result.compared > 100  # the DICOM input and every curated image, table and label map
    assert len(list((state / "truth_labels").glob("*.nii.gz"))) == len(list((state / "curated" / "images").iterdir()))


def test_a_half_written_file_of_each_format_is_found(tmp_path):
    image = sitk.GetImageFromArray(np.arange(4000, dtype=np.int16).reshape(10, 20, 20))
    files = {"label.nii.gz": lambda p: sitk.WriteImage(image, str(p), useCompression=True),
             "table.parquet": lambda p: pd.DataFrame({"x": range(1000)}).to_parquet(p),
             "index.json": lambda p: p.write_text('{"subjects": ["s0001", "s0002"]}'),
             "checkpoint_latest.pth": lambda p: torch.save({"weights": torch.arange(5000.0)}, p),
             "s0001_seg.b2nd": lambda p: blosc2.asarray(np.arange(40000, dtype=np.int16).reshape(1, 40, 1000),
                                                        urlpath=str(p), mode="w")}
    for name, write in files.items():
        path = tmp_path / name
        write(path)
        assert fault_kills.whole(path) is None, name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])  # what a kill during a plain write leaves
        assert fault_kills.whole(path) is not None, name
    scratch = tmp_path / ".tmp-123-progress.png.d"  # a temporary folder: what it holds is not under a final name
    scratch.mkdir()
    (scratch / "progress.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    written, broken = fault_kills.written_since(tmp_path, since=0.0)
    assert written == 6 and sorted(broken) == sorted(files)


def test_preprocessed_arrays_compare_by_voxels_and_an_export_record_without_its_status(tmp_path):
    """Two runs write one array into blosc2 containers that differ byte for byte (here: other compression
    levels); a resumed export records its subjects as skipped. Neither is a difference; a changed voxel is."""
    voxels = np.arange(60000, dtype=np.int16).reshape(1, 30, 40, 50) % 7
    for name, status, level in (("a", "exported", 1), ("b", "skipped", 9), ("c", "skipped", 9)):
        raw = tmp_path / name / "nnunet" / "raw" / "Dataset390_tiny"
        raw.mkdir(parents=True)
        pd.DataFrame({"subject_id": ["s0001"], "status": [status], "message": [""]}).to_csv(raw / "export.csv",
                                                                                          index=False)
        array = voxels.copy()
        array[0, 1, 2, 3] += name == "c"
        blosc2.asarray(array, urlpath=str(tmp_path / name / "s0001_seg.b2nd"), mode="w", cparams={"clevel": level})
    a, b, c = (fault_kills.digests(tmp_path / n) for n in "abc")
    assert (tmp_path / "a" / "s0001_seg.b2nd").read_bytes() != (tmp_path / "b" / "s0001_seg.b2nd").read_bytes()
    assert a == b and c["s0001_seg.b2nd"] != a["s0001_seg.b2nd"]


def test_a_resumed_curations_summary_compares_without_what_that_run_did(tmp_path):
    """A resumed curation converts fewer series now, in other seconds; the cohort it describes is the same."""
    for name, converted, subjects in (("a", 7, 7), ("b", 2, 7), ("c", 7, 6)):
        (tmp_path / name / "curated").mkdir(parents=True)
        (tmp_path / name / "curated" / "curation.json").write_text(json.dumps(
            {"subjects": subjects, "converted_now": converted, "removed_now": 0, "scan_seconds": converted / 10,
             "convert_seconds": 0.86}))
    a, b, c = (fault_kills.digests(tmp_path / n)["curated/curation.json"] for n in "abc")
    assert a == b and a != c


def test_a_difference_from_the_uninterrupted_run_is_reported():
    stage = fault_kills.STAGES[4]  # the bootstrap round: predictions come from the weights
    reference = {"curated/subjects.csv": "a", "curation.json": "t1", "annotation/predicted/round_01/s1.nii.gz": "p"}
    second = {"curated/subjects.csv": "a", "curation.json": "t2", "annotation/predicted/round_01/s1.nii.gz": "p"}
    faulted = {"curated/subjects.csv": "b", "curation.json": "t3", "annotation/predicted/round_01/s1.nii.gz": "q",
               "stray.csv": "x"}
    result = fault_kills.StageResult(stage.name, 1.0)
    fault_kills.compare(result, stage, reference, second, faulted)
    assert result.differing == ["curated/subjects.csv"] and result.extra == ["stray.csv"] and result.missing == []
    assert (result.compared, result.times_only, result.from_weights) == (1, 1, 1) and not result.ok


def test_a_trainings_validation_counts_as_computed_from_the_weights():
    """A resumed training is not bitwise the uninterrupted one: nnU-Net's validation of it differs, its plans not."""
    stage = next(s for s in fault_kills.STAGES if s.name == "training")
    model = "nnunet/results/Dataset390_tiny/nnUNetTrainerTotalSegNoDA__TotalSegPlans__3d_fullres_tiny"
    reference = {f"{model}/fold_0/validation/s0004.nii.gz": "a", f"{model}/plans.json": "p"}
    faulted = {f"{model}/fold_0/validation/s0004.nii.gz": "b", f"{model}/plans.json": "q"}
    result = fault_kills.StageResult(stage.name, 1.0)
    fault_kills.compare(result, stage, reference, dict(reference), faulted)
    assert result.from_weights == 1 and result.differing == [f"{model}/plans.json"]
