"""The annotation bootstrap end to end, as users run it: a tiny loop on a phantom cohort.

start (5 drawn from scratch) -> simulated annotator -> ingest -> round at N=5 (killed with SIGKILL during
training, prediction and rendering, then re-run) -> simulated corrections -> ingest -> round at N=20 ->
simulated corrections -> ingest. One scenario, run once per module; each test checks one promise of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from scipy.stats import spearmanr

from annotation_loop.label_store import LabelStore
from annotation_loop.ledger import IN_CORRECTION, PREDICTED, REVIEWED, UNLABELED, WITHDRAWN, Ledger
from annotation_loop.round import STEPS
from totalseg_train.atomic import TMP_MARK
from totalseg_train.images import Geometry

REPO = Path(__file__).resolve().parent.parent
SCHEDULE = [5, 20, 25]


def loop_overrides(ws: Path) -> list[str]:
    # Seeded training in one process on one thread repeats exactly (torch's sums, and so the weights, differ with
    # the thread count), so the rounds' efforts are the same on every run. Tiny's 30 epochs are needed: with 20,
    # round 1's predictions needed more correction than drawing from scratch. Round 2 starts from round 1's
    # weights and fine-tunes for 10.
    return [f"paths.workspace={ws}", "bootstrap.experiment=tiny", f"bootstrap.schedule=[{','.join(map(str, SCHEDULE))}]",
            "bootstrap.warm_start_epochs=10",
            'bootstrap.train_overrides=["data_workers=0","model.seed=0","torch_threads=1"]']


def cli(module: str, ws: Path, *extra: str) -> str:
    run = subprocess.run([sys.executable, "-m", module, *loop_overrides(ws), *extra],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, f"{module} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}"
    return run.stdout


def kill_when(module: str, ws: Path, extra: list[str], ready: Callable[[], bool], log: Path,
              timeout_s: float = 900) -> None:
    """Run a CLI and SIGKILL it (with every process it started) as soon as ``ready()`` holds."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", module, *loop_overrides(ws), *extra], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            assert proc.poll() is None, f"{module} ended (rc {proc.returncode}) before the kill point; see {log}"
            assert time.monotonic() < deadline, f"{module}: kill point not reached in {timeout_s} s"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def correct_and_ingest(ws: Path) -> None:
    cli("annotation_loop.simulate", ws)
    cli("annotation_loop.ingest", ws, f"corrected_dir={ws / 'annotation' / 'incoming' / 'simulated'}")


def steps_of(ws: Path, number: int) -> list[str]:
    ledger = Ledger(ws / "annotation" / "ledger.sqlite")
    try:
        return list(ledger.round(number)["steps"])
    finally:
        ledger.close()


def event_rows(ws: Path) -> list[dict]:
    ledger = Ledger(ws / "annotation" / "ledger.sqlite")
    try:
        return ledger.events()
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def loop(tmp_path_factory, coarse_cohort) -> dict:
    """Run the scenario on 30 phantom patients (33 curated subjects); returns the workspace and what was
    observed at each kill."""
    ws = coarse_cohort(tmp_path_factory.mktemp("bootstrap_loop"), 30)
    cli("annotation_loop.start", ws)
    correct_and_ingest(ws)

    annotation, log = ws / "annotation", ws / "killed_rounds.log"
    store = LabelStore(annotation)
    round1 = store.round_dir(1)
    observed: dict = {"ws": ws}

    kill_when("annotation_loop.round", ws, ["n_reviewed=5"], lambda: any(round1.rglob("training_log_*.txt")), log)
    observed["steps_after_training_kill"] = steps_of(ws, 1)

    def predicting() -> bool:  # nnU-Net has written a raw prediction into the round's temporary folder
        return any(p.suffix == ".gz" for t in store.predicted_dir(1).glob(f"{TMP_MARK}*") for p in t.rglob("*"))
    kill_when("annotation_loop.round", ws, ["n_reviewed=5"], predicting, log)
    observed["steps_after_prediction_kill"] = steps_of(ws, 1)
    checkpoint = next(round1.rglob("checkpoint_final.pth"))
    observed["checkpoint_mtime"] = checkpoint.stat().st_mtime_ns

    qa_sheets = ws / "qa" / "round_01" / "subjects"
    kill_when("annotation_loop.round", ws, ["n_reviewed=5"], lambda: any(qa_sheets.glob("*.png")), log)
    observed["steps_after_render_kill"] = steps_of(ws, 1)
    observed["predictions_mtime"] = {p.name: p.stat().st_mtime_ns for p in store.predicted_dir(1).glob("*.nii.gz")}

    observed["resumed_output"] = cli("annotation_loop.round", ws, "n_reviewed=5")
    observed["training_logs_round1"] = len(list(round1.rglob("training_log_*.txt")))
    correct_and_ingest(ws)

    observed["round2_output"] = cli("annotation_loop.round", ws)  # the next scheduled round: N=20
    correct_and_ingest(ws)
    observed["events_before_rerun"] = len(event_rows(ws))
    observed["rerun_output"] = cli("annotation_loop.round", ws, "n_reviewed=5")
    return observed


def test_each_round_needs_less_correction_than_the_one_before(loop):
    table = pd.read_csv(loop["ws"] / "reports" / "bootstrap_rounds.csv")
    assert list(table["round"]) == [0, 1, 2] and list(table.subjects) == [5, 15, 5]
    changed = list(table.median_percent_changed)  # of each subject's label map: subjects differ in size
    assert changed[0] == 100.0 and changed[0] > changed[1] > changed[2], table.to_string()
    assert table.mean_dice[2] > table.mean_dice[1] > 0.0, table.to_string()
    assert (table.median_voxels_changed > 0).all() and (table.median_minutes > 0).all()
    epochs = [torch.load(next((loop["ws"] / "annotation" / "rounds" / f"round_0{n}").rglob("checkpoint_final.pth")),
                         map_location="cpu", weights_only=False)["current_epoch"] for n in (1, 2)]
    assert epochs == [30, 10]  # round 2 fine-tunes round 1's model (bootstrap.warm_start_epochs)
    markdown = (loop["ws"] / "reports" / "bootstrap_rounds.md").read_text()
    effort_table = markdown.split("\n## ")[0]
    assert effort_table.count("\n| ") == 5 and (loop["ws"] / "reports" / "bootstrap_rounds.png").stat().st_size > 5000


def test_the_round_report_measures_the_worklist_order_against_the_correction_effort(loop):
    """Spearman's rho of the worklist's expected effort, of entropy alone and of random orders against the share
    of each subject's label map the annotator changed, per round, recomputed here from the worklists and ledger."""
    ws = loop["ws"]
    order = pd.read_csv(ws / "reports" / "worklist_order.csv")
    assert order["round"].tolist() == [1, 2] and order.subjects.tolist() == [15, 5]
    ledger = Ledger(ws / "annotation" / "ledger.sqlite")
    try:
        efforts = pd.DataFrame(ledger.efforts())
    finally:
        ledger.close()
    for r in order.itertuples():
        worklist = pd.read_csv(ws / "annotation" / "worklists" / f"round_{r.round:02d}.csv", dtype={"subject_id": str})
        total = efforts[(efforts.class_id == 0) & (efforts["round"] == r.round)].groupby("subject_id").first()
        joined = worklist.set_index("subject_id").join(total, how="inner")
        changed = joined.voxels_changed / joined.voxels_labelled
        assert r.spearman_worklist == pytest.approx(spearmanr(joined.expected_effort, changed).statistic)
        assert r.spearman_entropy == pytest.approx(spearmanr(joined.entropy, changed).statistic)
        assert r.worklist_ci_low <= r.spearman_worklist <= r.worklist_ci_high
        assert r.random_ci_low < 0 < r.random_ci_high and abs(r.spearman_random_mean) < 0.1
    assert "## Worklist order against the measured correction effort" in (ws / "reports" / "bootstrap_rounds.md").read_text()


def test_a_round_killed_in_training_prediction_or_rendering_resumes_without_redoing_finished_steps(loop):
    assert "train" not in loop["steps_after_training_kill"]
    assert "train" in loop["steps_after_prediction_kill"] and "predict" not in loop["steps_after_prediction_kill"]
    assert "predict" in loop["steps_after_render_kill"] and "qa" not in loop["steps_after_render_kill"]
    assert "resumed; steps already done: select, train, predict, heart, tables" in loop["resumed_output"]
    ws = loop["ws"]
    round1 = LabelStore(ws / "annotation").round_dir(1)
    # The killed training was started again once; the finished one was not repeated after later kills.
    assert loop["training_logs_round1"] == 2
    assert next(round1.rglob("checkpoint_final.pth")).stat().st_mtime_ns == loop["checkpoint_mtime"]
    predicted = LabelStore(ws / "annotation").predicted_dir(1)
    assert {p.name: p.stat().st_mtime_ns for p in predicted.glob("*.nii.gz")} == loop["predictions_mtime"]
    assert not [p for p in ws.rglob(f"{TMP_MARK}*")], "temporary files left behind"


def test_a_finished_round_run_again_does_nothing(loop):
    assert "has finished already; nothing to do" in loop["rerun_output"]
    assert len(event_rows(loop["ws"])) == loop["events_before_rerun"]


def test_the_ledger_holds_each_move_once(loop):
    ledger = Ledger(loop["ws"] / "annotation" / "ledger.sqlite")
    try:
        rounds = ledger.rounds()
        assert [(r["number"], r["n_reviewed"], r["experiment"]) for r in rounds] == [(1, 5, "tiny"), (2, 20, "tiny")]
        for r in rounds:
            assert r["steps"] == list(STEPS) and r["finished_at"] and r["model"]
        assert ledger.counts()[REVIEWED] == 25 and ledger.counts()[UNLABELED] == len(ledger.subjects()) - 25
        batch1 = pd.read_csv(ledger.path.parent / "rounds" / "round_01" / "batch.csv", dtype=str).subject_id
        assert len(batch1) == 15
        for subject_id in batch1:
            moves = [(e["from_state"], e["to_state"], e["round"]) for e in ledger.events(subject_id)]
            assert moves == [(None, UNLABELED, None), (UNLABELED, PREDICTED, 1), (PREDICTED, IN_CORRECTION, 1),
                             (IN_CORRECTION, REVIEWED, 1)], (subject_id, moves)
            assert ledger.subject(subject_id).source == "corrected_prediction"
        efforts = pd.DataFrame(ledger.efforts())
        assert not efforts.duplicated(["subject_id", "version", "class_id"]).any()
        assert efforts[efforts.class_id == 0].subject_id.nunique() == 25
    finally:
        ledger.close()


def test_round_two_continues_from_round_ones_weights(loop):
    ws = loop["ws"]
    store = LabelStore(ws / "annotation")
    plans = next(store.round_dir(2).rglob("plans.json"))
    settings = json.loads(plans.read_text())["configurations"]["3d_fullres_tiny"]["totalseg_training"]
    assert settings["initial_checkpoint"] == str(next(store.round_dir(1).rglob("checkpoint_final.pth")))
    assert settings["final_validation"] is False


def test_annotators_get_predictions_label_tables_qa_sheets_and_a_ranked_worklist(loop):
    ws = loop["ws"]
    store = LabelStore(ws / "annotation")
    batch = list(pd.read_csv(store.round_dir(2) / "batch.csv", dtype=str).subject_id)
    worklist = pd.read_csv(ws / "annotation" / "worklists" / "round_02.csv", dtype={"subject_id": str})
    assert sorted(worklist.subject_id) == sorted(batch) and list(worklist["rank"]) == list(range(1, 6))
    expected_work = worklist.expected_effort.tolist()
    assert expected_work == sorted(expected_work, reverse=True)
    for subject_id in batch:
        prediction = sitk.ReadImage(str(store.predicted(2, subject_id)))
        image = ws / "curated" / "images" / f"{subject_id}.nii.gz"
        assert Geometry.of_image(prediction).matches(Geometry.of_file(image))
        assert np.count_nonzero(sitk.GetArrayViewFromImage(prediction)) > 0
        assert (ws / "qa" / "round_02" / "subjects" / f"{subject_id}.png").stat().st_size > 10_000
    tables = {p.name for p in store.predicted_dir(2).iterdir() if p.is_file() and not p.name.endswith(".nii.gz")}
    assert {"labels_slicer.ctbl", "labels_itksnap.txt"} <= tables


def subject_files(root: Path, subject_ids: set[str], keep: tuple[str, ...]) -> list[Path]:
    """Files and folders under ``root`` named for a subject (``<id>``, ``<id>.*``, ``<id>_*``), outside ``keep``."""
    found = []
    for path in root.rglob("*"):
        if any(part in keep for part in path.relative_to(root).parts):
            continue
        stem = path.name.split(".")[0].split("_")[0]
        if stem in subject_ids:
            found.append(path)
    return found


def test_a_withdrawn_patient_leaves_every_output_and_the_report_names_the_models_that_saw_them(loop, tmp_path):
    """A copy of the finished loop: a patient of round 1's batch (predicted, corrected, final, rendered, trained on in
    round 2) withdraws; curation retires the subjects, the withdraw stage removes them everywhere else."""
    ws = tmp_path / "ws"
    shutil.copytree(loop["ws"], ws, symlinks=True)
    key = pd.read_csv(ws / "private" / "pseudonym_key.csv", dtype=str, keep_default_na=False)
    batch1 = pd.read_csv(ws / "annotation" / "rounds" / "round_01" / "batch.csv", dtype=str).subject_id
    patient_id = key.set_index("subject_id").PatientID[batch1.iloc[0]]
    gone = set(key.loc[key.PatientID == patient_id, "subject_id"])
    assert subject_files(ws, gone, ("raw", "private", "logs"))  # the subject's files are there before
    registry = pd.read_csv(ws / "raw" / "consent.csv", dtype=str, keep_default_na=False)
    registry.loc[registry.patient_id == patient_id, "research_consent"] = "no"
    registry.to_csv(ws / "raw" / "consent.csv", index=False)
    curation = subprocess.run([sys.executable, "-m", "data_prep.curate", f"paths.workspace={ws}", "progress=false"],
                              capture_output=True, text=True, cwd=REPO)
    assert curation.returncode == 0, curation.stderr[-3000:]
    assert "python -m annotation_loop.withdraw" in curation.stdout
    assert set(pd.read_csv(ws / "curated" / "withdrawn.csv", dtype=str).subject_id) == gone

    out = cli("annotation_loop.withdraw", ws)
    assert "trained models that saw it (weights kept)" in out
    assert subject_files(ws, gone, ("raw", "private", "logs")) == []
    for table in [*ws.rglob("*.csv"), *ws.rglob("*.parquet")]:
        if table.name.startswith("withdraw") or "logs" in table.parts or "private" in table.parts:
            continue
        frame = pd.read_parquet(table) if table.suffix == ".parquet" else pd.read_csv(table, dtype=str)
        assert not frame.astype(str).isin(gone).any().any(), table
    split = json.loads((ws / "annotation" / "rounds" / "round_02" / "nnunet" / "split.json").read_text())
    assert not gone & set(split["train"] + split["val"]) and not gone & set(split["patients"])
    ledger = Ledger(ws / "annotation" / "ledger.sqlite")
    try:
        for sid in gone & set(batch1):
            subject = ledger.subject(sid)
            assert subject.state == WITHDRAWN and subject.prediction is None
            assert [e["to_state"] for e in ledger.events(sid)][-2:] == [REVIEWED, WITHDRAWN]
    finally:
        ledger.close()
    report = pd.read_csv(ws / "reports" / "withdrawals.csv", dtype=str)
    assert set(report.subject_id) == gone
    models = report[report.action.str.startswith("model")]
    assert any("round_02" in p for p in models.path) and (report.action == "deleted").sum() > 10
    # Run again: nothing more to remove, the report unchanged; the audit finds no trace of them.
    assert "nothing to remove" in cli("annotation_loop.withdraw", ws)
    assert len(pd.read_csv(ws / "reports" / "withdrawals.csv")) == len(report)
    audit = subprocess.run([sys.executable, "-m", "data_prep.audit", f"paths.workspace={ws}"], capture_output=True,
                           text=True, cwd=REPO)
    assert audit.returncode == 0, audit.stderr[-3000:]
