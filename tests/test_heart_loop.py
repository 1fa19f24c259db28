"""The annotation loop with the heart model's predictions (issue: heart label transfer, step 6).

One scenario on five curated subjects of the heart workspace (tests/conftest.py: heart_tiny trained once and
applied to four of them; the fifth has no heart prediction), in a loop workspace of its own with schedule
[2, 5]: start (2 drawn, from start maps where the heart model predicted them) -> simulated annotator -> ingest
-> a real round on N=2 (a tiny model trained for a few iterations, its predictions, QA renders and worklist)
-> apply run again for the fifth subject -> simulated annotator -> ingest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from annotation_loop.heart_prior import give_heart, heart_predictions
from annotation_loop.ingest import ingest
from annotation_loop.label_store import LabelStore
from annotation_loop.ledger import Ledger
from annotation_loop.qa.flag_cohort import SCANS_PART
from annotation_loop.round import STEPS, run_round
from annotation_loop.simulate import correct, simulate_corrections
from annotation_loop.start import start
from totalseg_train.config import compose_config
from totalseg_train.engine.inference import ENTROPY_TABLE, predict
from totalseg_train.heart_predictions import heart_class_ids
from totalseg_train.images import Geometry, nifti_path
from totalseg_train.shards import part_files

HEART = heart_class_ids()
# The round's model learns nothing in a few iterations; these tests check what the loop does with its output.
ROUND_TRAINING = ('["data_workers=0","model.seed=0","model.epochs=1","model.iterations_per_epoch=3",'
                  '"model.val_iterations=1","torch_threads=1"]')


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def heart_share_changed(handed: np.ndarray, final: np.ndarray) -> float | None:
    """% of the final heart voxels changed, summed per heart class (as the round report defines it)."""
    changed = labelled = 0
    for c in HEART:
        h, f = handed == c, final == c
        changed += int(h.sum() + f.sum() - 2 * (h & f).sum())
        labelled += int(f.sum())
    return 100.0 * changed / labelled if labelled else None


def finals(annotation: Path) -> dict[str, bytes]:
    return {str(p.relative_to(annotation)): p.read_bytes() for p in sorted((annotation / "final").rglob("*.nii.gz"))}


@pytest.fixture(scope="module")
def loop(heart_applied, apply_heart, tmp_path_factory) -> dict:
    hw = heart_applied["ws"]
    ws = tmp_path_factory.mktemp("heart_loop")
    # The loop's own copy of the heart predictions, at the default bootstrap.heart_predictions.
    shutil.copytree(heart_applied["out"], ws / "heart" / "predicted")
    subjects = pd.read_csv(hw / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    applied = pd.read_csv(heart_applied["table"], dtype=str, keep_default_na=False)
    others = subjects[~subjects.subject_id.isin(applied.subject_id) & subjects.body_region.str.startswith("thorax")]
    extra = others.sort_values("n_slices", key=lambda n: n.astype(int)).subject_id.iloc[0]  # heart in view
    table = ws / "subjects.csv"
    pd.concat([applied, subjects[subjects.subject_id == extra]]).to_csv(table, index=False)
    overrides = [f"paths.workspace={ws}", f"bootstrap.images_dir={hw / 'curated' / 'images'}",
                 f"bootstrap.subjects_csv={table}", "bootstrap.schedule=[2,5]", "bootstrap.experiment=tiny",
                 f"bootstrap.train_overrides={ROUND_TRAINING}"]
    annotation, truth = ws / "annotation", hw / "truth_labels"

    def correct_and_ingest():
        simulate_corrections(compose_config("simulate_annotator", overrides + [f"truth_dir={truth}"]))
        result = ingest(compose_config("ingest", overrides + [f"corrected_dir={annotation / 'incoming' / 'simulated'}"]))
        assert not result.rejected, result.rejected

    observed = {"ws": ws, "hw": hw, "extra": extra, "applied": list(applied.subject_id)}
    observed["first"] = start(compose_config("bootstrap_start", overrides))
    store = LabelStore(annotation)
    observed["start_maps"] = {s: read(store.start_map(s)) for s in observed["first"] if store.start_map(s).exists()}
    correct_and_ingest()
    observed["finals_after_start"] = finals(annotation)

    cfg = compose_config("round", overrides + ["n_reviewed=2"])
    observed["round"] = run_round(cfg)
    observed["batch"] = observed["round"].predicted
    observed["predictions"] = {s: read(store.predicted(1, s)) for s in observed["batch"]}
    observed["finals_after_round"] = finals(annotation)
    # What the round's model itself predicts, before the heart step: the same model run again (predictions
    # are deterministic), with the entropy table the round's uncertainty came from.
    ledger = Ledger(annotation / "ledger.sqlite")
    model = ledger.round(1)["model"]
    ledger.close()
    raw = ws / "round_model_again"
    predict(model, [nifti_path(hw / "curated" / "images", s) for s in observed["batch"]], raw, device="cpu",
            workers=0, threads=1, progress=False, uncertainty=True)
    observed["raw"] = {s: read(nifti_path(raw, s)) for s in observed["batch"]}
    observed["entropy"] = pd.read_csv(raw / ENTROPY_TABLE, dtype={"subject_id": str})

    # apply again, now for every subject of the loop's table: only the fifth subject is predicted.
    observed["predictions_bytes"] = {s: store.predicted(1, s).read_bytes() for s in observed["batch"]}
    run = apply_heart(hw, f"subjects_csv={table}", f"out={ws / 'heart' / 'predicted'}")
    assert run.returncode == 0, run.stderr[-3000:]
    observed["apply_output"] = run.stdout
    observed["finals_after_apply"] = finals(annotation)
    observed["heart_predictions"] = heart_predictions(cfg)
    correct_and_ingest()
    return observed


def heart_of(loop: dict, subject_id: str) -> np.ndarray:
    return read(loop["ws"] / "heart" / "predicted" / f"{subject_id}.nii.gz")


def test_subjects_drawn_first_start_from_the_heart_models_sub_parts_and_nothing_else(loop):
    ws, hw = loop["ws"], loop["hw"]
    given = [s for s in loop["first"] if s in loop["applied"]]
    assert sorted(loop["start_maps"]) == sorted(given)
    worklist = pd.read_csv(ws / "annotation" / "worklists" / "round_00.csv", dtype=str, keep_default_na=False)
    store = LabelStore(ws / "annotation")
    for row in worklist.itertuples():
        assert row.start_from == (str(store.start_map(row.subject_id)) if row.subject_id in given else "")
    for subject_id, start_map in loop["start_maps"].items():
        heart = heart_of(loop, subject_id)
        assert np.array_equal(start_map, np.where(np.isin(heart, HEART), heart, 0))
        assert Geometry.of_file(store.start_map(subject_id)).matches(
            Geometry.of_file(nifti_path(hw / "curated" / "images", subject_id)))


def test_round_predictions_take_the_heart_models_heart_voxels_and_nothing_else_changes(loop, tmp_path):
    hw = loop["hw"]
    ledger = Ledger(loop["ws"] / "annotation" / "ledger.sqlite")
    try:
        assert ledger.round(1)["steps"] == list(STEPS) and ledger.round(1)["metrics"]["n_heart_prior"] == sum(
            s in loop["applied"] for s in loop["batch"])
        priors = {p["subject_id"]: p for p in ledger.heart_priors() if p["round"] == 1}
    finally:
        ledger.close()
    assert len(loop["batch"]) == 3 and 0 < len(priors) < 3  # the batch holds subjects with and without one
    uncertainty = pd.read_csv(loop["ws"] / "annotation" / "rounds" / "round_01" / "uncertainty.csv",
                              dtype={"subject_id": str}).set_index("subject_id").entropy
    entropy = loop["entropy"]
    for subject_id in loop["batch"]:
        raw, prediction = loop["raw"][subject_id], loop["predictions"][subject_id]
        rows = entropy[entropy.subject_id == subject_id]
        if subject_id not in loop["applied"]:
            assert np.array_equal(prediction, raw) and subject_id not in priors
            assert uncertainty[subject_id] == pytest.approx(np.average(rows.mean_entropy, weights=rows.n_voxels))
            continue
        heart = heart_of(loop, subject_id)
        given = np.isin(heart, HEART)
        assert given.sum() > 100 and np.array_equal(prediction[given], heart[given])
        # Elsewhere: the round model's labels, its own heart voxels cleared.
        assert np.array_equal(prediction[~given], np.where(np.isin(raw, HEART), 0, raw)[~given])
        assert subject_id in priors and priors[subject_id]["model"] == str((hw / "results" / "heart_tiny").resolve())
        others = rows[~rows.class_id.isin(HEART)]  # the heart classes' entropy is left out
        assert uncertainty[subject_id] == pytest.approx(np.average(others.mean_entropy, weights=others.n_voxels))
        # The heart step is safe to run again (a round killed in it repeats it): the result does not change.
        again = tmp_path / f"{subject_id}.nii.gz"
        again.write_bytes(loop["predictions_bytes"][subject_id])
        give_heart(loop["heart_predictions"][subject_id], again)
        assert np.array_equal(read(again), prediction)
    worklist = pd.read_csv(loop["ws"] / "annotation" / "worklists" / "round_01.csv", dtype=str, keep_default_na=False)
    assert {r.subject_id: bool(r.heart_model) for r in worklist.itertuples()} == {
        s: s in loop["applied"] for s in loop["batch"]}
    assert all((loop["ws"] / "qa" / "round_01" / "subjects" / f"{s}.png").is_file() for s in loop["batch"])


def test_the_rounds_qa_finds_the_body_in_the_cts_of_bootstrap_images_dir(loop):
    """The loop's CTs live in another workspace (``bootstrap.images_dir``): the round's QA measures the body for
    its outside-the-body and scan-edge flags on them, not on the label map alone."""
    qa_dir = Path(compose_config("round", [f"paths.workspace={loop['ws']}"]).paths.qa) / "round_01"
    scans = pd.concat(pd.read_parquet(path) for _, path in part_files(qa_dir, SCANS_PART, ".parquet"))
    assert sorted(scans.subject_id) == sorted(loop["batch"])
    assert set(scans.body_source) == {"ct"}


def test_final_labels_are_never_touched_by_apply_or_a_round(loop):
    assert loop["finals_after_start"] and len(loop["finals_after_start"]) == 4  # two versions + two links
    assert loop["finals_after_round"] == loop["finals_after_start"]
    assert loop["finals_after_apply"] == loop["finals_after_start"]
    assert f"heart sub-parts of 1 subjects predicted, {len(loop['applied'])} already predicted" in loop["apply_output"]
    store = LabelStore(loop["ws"] / "annotation")
    # apply wrote only its own folder: the round's predictions are as the round left them.
    for subject_id, data in loop["predictions_bytes"].items():
        assert store.predicted(1, subject_id).read_bytes() == data


def test_effort_is_measured_against_what_was_handed_and_the_report_shows_the_heart_savings(loop):
    ws, hw = loop["ws"], loop["hw"]
    store = LabelStore(ws / "annotation")
    ledger = Ledger(ws / "annotation" / "ledger.sqlite")
    try:
        efforts = pd.DataFrame(ledger.efforts())
        total = efforts[efforts.class_id == 0].set_index("subject_id")
        expected = {0: {True: [], False: []}, 1: {True: [], False: []}}
        for subject_id in loop["first"] + loop["batch"]:
            round_number = 0 if subject_id in loop["first"] else 1
            final = read(store.version(subject_id, 1))
            assert np.array_equal(final, read(nifti_path(hw / "truth_labels", subject_id)))
            if round_number == 0:
                handed = loop["start_maps"].get(subject_id, np.zeros_like(final))
                assert ledger.subject(subject_id).source == "manual"
            else:
                handed = loop["predictions"][subject_id]
            assert total.voxels_changed[subject_id] == int((handed != final).sum()), subject_id
            share = heart_share_changed(handed, final)
            if share is not None:
                expected[round_number][subject_id in loop["applied"]].append(share)
    finally:
        ledger.close()
    table = pd.read_csv(ws / "reports" / "bootstrap_rounds.csv").set_index("round")
    markdown = (ws / "reports" / "bootstrap_rounds.md").read_text()
    assert "## Heart sub-parts: what the heart model saved" in markdown
    for round_number, groups in expected.items():
        row = table.loc[round_number]
        assert row.heart_subjects_with_model == len(groups[True])
        assert row.heart_subjects_without_model == len(groups[False])
        for with_model, column in ((True, "heart_median_percent_changed_with_model"),
                                   (False, "heart_median_percent_changed_without_model")):
            if groups[with_model]:
                assert row[column] == pytest.approx(float(np.median(groups[with_model])))
            else:
                assert np.isnan(row[column])
        cells = [f"{v:.1f}" if groups[w] else "-" for w, v in
                 ((True, row.heart_median_percent_changed_with_model),
                  (False, row.heart_median_percent_changed_without_model))]
        assert (f"| {round_number} | {len(groups[True])} | {cells[0]} | {len(groups[False])} | {cells[1]} |"
                in markdown), markdown
    if expected[0][False]:  # drawn from scratch: every heart voxel is new
        assert table.loc[0].heart_median_percent_changed_without_model == 100.0


def test_a_rough_simulated_annotator_keeps_the_right_labels_it_was_handed():
    truth = np.zeros((4, 6, 6), np.uint8)
    truth[1:3, 1:5, 1:5] = 5
    handed = truth.copy()
    handed[1, 1, 1] = 0  # one voxel missed
    handed[0, 0, 0] = 5  # one voxel too many
    rng = np.random.default_rng(0)
    rough = correct(handed, truth, rng)
    right = (handed == truth) & (handed != 0)
    assert np.array_equal(rough[right], handed[right])
    assert np.array_equal(correct(handed, truth, None), truth)  # a careful annotator: the truth, whatever it got
    assert not np.array_equal(correct(None, truth, np.random.default_rng(0)), truth)  # drawn roughly from scratch
