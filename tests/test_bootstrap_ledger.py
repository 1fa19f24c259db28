"""The bootstrap loop's bookkeeping: effort measures, the ledger, final-label storage and ingestion."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from annotation_loop.effort import TOTAL, correction_effort
from annotation_loop.ingest import ingest
from annotation_loop.label_store import FinalLabelExists, LabelStore
from annotation_loop.label_tables import itksnap_label_description, slicer_colour_table
from annotation_loop.ledger import IN_CORRECTION, PREDICTED, REVIEWED, UNLABELED, WITHDRAWN, Ledger, LedgerError
from annotation_loop.review.decisions import read_decisions, record_decision
from annotation_loop.start import start
from totalseg_train import classes
from totalseg_train.checksums import file_sha256
from totalseg_train.config import compose_config


def test_effort_counts_voxels_slices_and_dice():
    pred = np.zeros((4, 5, 5), np.uint8)
    corr = np.zeros((4, 5, 5), np.uint8)
    pred[0:2, 1:3, 1:3] = 5  # liver predicted in slices 0-1: 8 voxels
    corr[1:3, 1:3, 1:3] = 5  # corrected to slices 1-2: 4 removed, 4 added
    corr[3, 0, 0] = 1  # spleen added in slice 3
    rows = {r["class_id"]: r for r in correction_effort(pred, corr)}
    assert rows[5] == {"class_id": 5, "voxels_changed": 8, "slices_touched": 2, "voxels_labelled": 8, "dice": 0.5}
    assert rows[1] == {"class_id": 1, "voxels_changed": 1, "slices_touched": 1, "voxels_labelled": 1, "dice": 0.0}
    assert rows[TOTAL]["voxels_changed"] == 9 and rows[TOTAL]["slices_touched"] == 3
    assert rows[TOTAL]["voxels_labelled"] == 9
    unchanged = {r["class_id"]: r for r in correction_effort(corr, corr)}
    assert unchanged[5]["dice"] == 1.0 and unchanged[TOTAL]["voxels_changed"] == 0


def test_ledger_moves_are_checked_and_logged(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.register(["b", "a", "c"], queue_order=["c", "a", "b"]) == 3
    assert ledger.register(["a", "d"], queue_order=["d"]) == 1
    assert [s.subject_id for s in ledger.subjects(UNLABELED)] == ["c", "a", "b", "d"]
    with ledger.transaction() as db:
        ledger.move(db, "a", PREDICTED, round=1, model="m1", prediction="/p/a.nii.gz")
        ledger.move(db, "a", IN_CORRECTION)
        ledger.move(db, "c", IN_CORRECTION, source="manual")
        ledger.move(db, "c", REVIEWED, source="manual")
        ledger.move(db, "a", REVIEWED, source="corrected_prediction")
    with pytest.raises(LedgerError, match="cannot go from unlabeled to reviewed"):
        with ledger.transaction() as db:
            ledger.move(db, "d", IN_CORRECTION)
            ledger.move(db, "b", REVIEWED)
    assert ledger.subject("d").state == UNLABELED  # the whole transaction was rolled back
    with pytest.raises(LedgerError, match="unknown subject"):
        ledger.subject("zz")
    assert ledger.reviewed_in_order() == ["c", "a"]
    assert ledger.subject("a").final_version == 1 and ledger.subject("a").model == "m1"
    assert [e["to_state"] for e in ledger.events("a")] == [UNLABELED, PREDICTED, IN_CORRECTION, REVIEWED]
    assert ledger.counts() == {UNLABELED: 2, PREDICTED: 0, IN_CORRECTION: 0, REVIEWED: 2, WITHDRAWN: 0}
    # Consent withdrawn: retired with its history, the path to its prediction cleared, never moved again.
    with ledger.transaction() as db:
        assert ledger.withdraw(db, "a") is True and ledger.withdraw(db, "a") is False
    assert ledger.subject("a").state == WITHDRAWN and ledger.subject("a").prediction is None
    assert [e["to_state"] for e in ledger.events("a")] == [UNLABELED, PREDICTED, IN_CORRECTION, REVIEWED, WITHDRAWN]
    assert ledger.reviewed_in_order() == ["c"]
    with pytest.raises(LedgerError, match="cannot go from withdrawn"):
        with ledger.transaction() as db:
            ledger.move(db, "a", REVIEWED)
    ledger.start_round(1, 5, "tiny", {"x": 1})
    ledger.finish_step(1, "train", {"seconds": 3.0}, model="m1")
    ledger.finish_step(1, "train")
    assert ledger.round(1)["steps"] == ["train"] and ledger.round(1)["model"] == "m1"
    with pytest.raises(LedgerError, match="started with N=5"):
        ledger.start_round(1, 20, "tiny", {})


def _image(array: np.ndarray, spacing=(2.0, 2.0, 3.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-10.0, 5.0, 100.0))
    return image


def test_final_labels_are_versioned_and_never_overwritten(tmp_path):
    store = LabelStore(tmp_path)
    first = _image(np.ones((3, 4, 4), np.uint8))
    store.store_final("s1", 1, first)
    store.store_final("s1", 1, first)  # identical: a resumed ingest, accepted
    with pytest.raises(FinalLabelExists, match="never overwritten"):
        store.store_final("s1", 1, _image(np.full((3, 4, 4), 2, np.uint8)))
    store.store_final("s1", 2, _image(np.full((3, 4, 4), 2, np.uint8)))
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(store.current("s1")))).max() == 2
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(store.version("s1", 1)))).max() == 1


def test_label_tables_name_every_class():
    slicer = slicer_colour_table().splitlines()
    assert len([l for l in slicer if not l.startswith("#")]) == 105
    assert slicer[-1].startswith("104 urinary_bladder ")
    itk = itksnap_label_description()
    assert '"aorta"' in itk and itk.count("\n") == 4 + 1 + 104
    r, g, b = classes.class_colour(5)
    assert f"5 liver {r} {g} {b} 255" in slicer


def started_workspace(ws, n_subjects: int, first_round: int) -> tuple[list[str], list[str]]:
    """``n_subjects`` curated images of 6x8x8 voxels and a bootstrap ledger started on them, ``first_round``
    subjects handed out to draw; returns the overrides and the subjects handed out."""
    images = ws / "curated" / "images"
    images.mkdir(parents=True)
    ids = [f"s{i:04d}" for i in range(1, n_subjects + 1)]
    for sid in ids:
        sitk.WriteImage(_image(np.zeros((6, 8, 8), np.int16)), str(images / f"{sid}.nii.gz"))
    pd.DataFrame({"subject_id": ids, "patient": [f"p{i}" for i in range(len(ids))]}).to_csv(
        ws / "curated" / "subjects.csv", index=False)
    overrides = [f"paths.workspace={ws}", f"bootstrap.schedule=[{first_round},{n_subjects}]"]
    handed_out = start(compose_config("bootstrap_start", overrides))
    assert len(handed_out) == first_round
    assert start(compose_config("bootstrap_start", overrides)) == []  # idempotent
    return overrides, handed_out


@pytest.fixture
def small_workspace(tmp_path):
    """Three curated images and a bootstrap ledger started on them, two handed out to draw."""
    overrides, handed_out = started_workspace(tmp_path, 3, 2)
    return tmp_path, overrides, handed_out


def test_ingest_accepts_good_files_and_rejects_bad_ones_by_name(small_workspace):
    ws, overrides, (first, second) = small_workspace
    (waiting,) = {"s0001", "s0002", "s0003"} - {first, second}
    incoming = ws / "incoming"
    incoming.mkdir()
    good = np.zeros((6, 8, 8), np.uint8)
    good[2:4, 2:6, 2:6] = 5
    sitk.WriteImage(_image(good), str(incoming / f"{first}.nii.gz"))
    sitk.WriteImage(_image(np.zeros((5, 8, 8), np.uint8)), str(incoming / f"{second}.nii.gz"))  # wrong shape
    bad_ids = good.copy()
    bad_ids[0, 0, 0] = 140
    sitk.WriteImage(_image(bad_ids), str(incoming / f"{waiting}.nii.gz"))  # not in correction
    sitk.WriteImage(_image(good), str(incoming / "s9999.nii.gz"))  # unknown subject
    cfg = compose_config("ingest", overrides + [f"corrected_dir={incoming}"])
    result = ingest(cfg)
    assert result.accepted == [first]
    messages = dict(result.rejected)
    assert "geometry differs" in messages[str(incoming / f"{second}.nii.gz")]
    assert "unlabeled, not in correction" in messages[str(incoming / f"{waiting}.nii.gz")]
    assert "unknown subject 's9999'" in messages[str(incoming / "s9999.nii.gz")]
    ledger = Ledger(cfg.bootstrap.ledger)
    assert ledger.subject(first).state == REVIEWED and ledger.subject(first).source == "manual"
    assert ledger.subject(second).state == IN_CORRECTION and ledger.subject(waiting).state == UNLABELED
    efforts = pd.DataFrame(ledger.efforts())
    assert set(efforts.subject_id) == {first}
    assert efforts[efforts.class_id == TOTAL].voxels_changed.item() == 32  # drawn from scratch
    # The same folder ingested again: the stored file is recognised, nothing is added.
    again = ingest(cfg)
    assert again.already_stored == [first] and again.accepted == []
    assert ledger.subject(first).final_version == 1 and len(ledger.efforts()) == len(efforts)
    # A second ingest of a different label for a final subject is refused; the ledger is unchanged.
    other = good.copy()
    other[5, 0, 0] = 1
    sitk.WriteImage(_image(other), str(incoming / f"{first}.nii.gz"))
    result = ingest(cfg)
    assert "already final" in dict(result.rejected)[str(incoming / f"{first}.nii.gz")]
    assert ledger.subject(first).final_version == 1 and len(ledger.efforts()) == len(efforts)
    # Bad ids in a subject that is in correction name the ids.
    bad_ids_path = incoming / f"{second}.nii.gz"
    bad = np.zeros((6, 8, 8), np.uint8)
    bad[1, 1, 1] = 200
    sitk.WriteImage(_image(bad), str(bad_ids_path))
    assert "label ids outside the class table (0 = background, 1..104 = v1 classes): [200]" in \
        dict(ingest(cfg).rejected)[str(bad_ids_path)]
    report = (ws / "reports" / "bootstrap_rounds.md").read_text()
    assert "| 0 | - | 1 | 32 | 100.0 | 2 |" in report  # drawn from scratch: the whole label map is new


def test_an_ok_accepts_only_the_prediction_it_was_given_to_and_a_correction_wins(tmp_path):
    overrides, _ = started_workspace(tmp_path, 5, 1)
    ledger = Ledger(tmp_path / "annotation" / "ledger.sqlite")
    a, b, c, d = [s.subject_id for s in ledger.subjects(UNLABELED)]
    predicted = np.zeros((6, 8, 8), np.uint8)
    predicted[2:4, 2:6, 2:6] = 5
    (tmp_path / "predicted").mkdir()
    with ledger.transaction() as db:
        for sid in (a, b, c, d):
            path = tmp_path / "predicted" / f"{sid}.nii.gz"
            sitk.WriteImage(_image(predicted), str(path), useCompression=True)
            ledger.move(db, sid, PREDICTED, round=1, model="m1", prediction=str(path))
            ledger.move(db, sid, IN_CORRECTION)
    ledger.close()
    shown = {sid: tmp_path / "predicted" / f"{sid}.nii.gz" for sid in (a, b, c, d)}
    round_review = tmp_path / "qa" / "round_01" / "review" / "decisions.csv"
    truth_review = tmp_path / "qa" / "review" / "decisions.csv"
    truth = tmp_path / "truth.nii.gz"
    sitk.WriteImage(_image(np.full((6, 8, 8), 5, np.uint8)), str(truth))
    record_decision(round_review, a, "ok", "", "Dr R", shown[a], file_sha256(shown[a]))
    record_decision(round_review, a, "needs_correction", "liver too small", "Dr R", shown[a], file_sha256(shown[a]))
    record_decision(round_review, b, "ok", "", "Dr R", shown[b], file_sha256(shown[b]))
    record_decision(round_review, c, "ok", "", "Dr R", shown[c], file_sha256(shown[c]))
    record_decision(truth_review, d, "ok", "truth labels look fine", "Dr T", truth, file_sha256(truth))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    corrected = predicted.copy()
    corrected[4, 2:6, 2:6] = 5
    sitk.WriteImage(_image(corrected), str(incoming / f"{c}.nii.gz"))

    result = ingest(compose_config("ingest", overrides + [f"corrected_dir={incoming}"]))
    assert result.accepted == [c] and result.accepted_as_predicted == [b] and result.rejected == []
    assert [sid for sid, _ in result.unbound_ok] == [d]
    assert "given to another label map" in result.unbound_ok[0][1] and str(truth_review) in result.unbound_ok[0][1]
    ledger = Ledger(tmp_path / "annotation" / "ledger.sqlite")
    states = {sid: (ledger.subject(sid).state, ledger.subject(sid).source) for sid in (a, b, c, d)}
    assert states == {a: (IN_CORRECTION, None), b: (REVIEWED, "accepted_prediction"),
                      c: (REVIEWED, "corrected_prediction"), d: (IN_CORRECTION, None)}
    efforts = pd.DataFrame(ledger.efforts()).set_index(["subject_id", "class_id"]).voxels_changed
    assert efforts[(b, TOTAL)] == 0 and efforts[(c, TOTAL)] == 16
    # The history keeps every decision; ingesting again changes nothing.
    assert len(read_decisions(round_review)) == 4
    again = ingest(compose_config("ingest", overrides))
    assert again.accepted_as_predicted == [] and len(ledger.efforts()) == len(efforts)
    ledger.close()
