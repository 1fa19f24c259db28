"""Two copies of one stage started at once: the second stops before writing anything, naming the lock and the
process holding it; a training sweep's shared final step waits instead. Locks die with their process."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from annotation_loop.ingest import ingest
from annotation_loop.qa import render_subjects
from annotation_loop.round import run_round
from annotation_loop.start import start
from annotation_loop.withdraw import withdraw
from conftest import REPO, train_overrides
from data_prep.curate.pipeline import curate
from data_prep.heart_transfer.apply import apply_heart_model
from data_prep.heart_transfer.stage import run as transfer_hearts
from data_prep.phantom.truth_labels import export_truth_labels
from totalseg_train.aging.study import run as aging_study
from totalseg_train.atomic import TMP_MARK
from totalseg_train.config import compose_config
from totalseg_train.evaluate import evaluate_folders
from totalseg_train.report.build import build_report
from totalseg_train.stage_lock import StageRunning, exclusive, lock_file, stage_lock
from totalseg_train.statistics.stage import run as measure_statistics


def _cfg(name: str, ws: Path, *more: str):
    return compose_config(name, [f"paths.workspace={ws}", *more])


# (stage as its lock names it, the folder it locks, the call): each call would write into the workspace.
STAGES = {
    "curate": (lambda ws: ws / "curated", lambda ws: curate(_cfg("curate", ws))),
    "truth-labels": (lambda ws: ws / "truth_labels",
                     lambda ws: export_truth_labels(ws / "key.csv", ws / "truth", ws / "images", ws / "truth_labels")),
    "qa": (lambda ws: ws / "qa", lambda ws: render_subjects(ws / "labels", ws / "qa", progress=False)),
    "ingest": (lambda ws: ws / "annotation", lambda ws: ingest(_cfg("ingest", ws, f"corrected_dir={ws}/in"))),
    "start": (lambda ws: ws / "annotation", lambda ws: start(_cfg("bootstrap_start", ws))),
    "round": (lambda ws: ws / "annotation", lambda ws: run_round(_cfg("round", ws))),
    "withdraw": (lambda ws: ws / "annotation", lambda ws: withdraw(_cfg("withdraw", ws))),
    "evaluate": (lambda ws: ws / "scores",
                 lambda ws: evaluate_folders(ws / "truth", ws / "predicted", ws / "scores", progress=False)),
    "heart-transfer": (lambda ws: ws / "heart",
                       lambda ws: transfer_hearts(_cfg("heart_transfer", ws, f"labels_dir={ws}/labels"))),
    "heart-apply": (lambda ws: ws / "heart" / "predicted", lambda ws: apply_heart_model(_cfg("heart_apply", ws))),
    "statistics": (lambda ws: ws / "reports" / "statistics", lambda ws: measure_statistics(_cfg("statistics", ws))),
    "aging": (lambda ws: ws / "reports" / "aging", lambda ws: aging_study(_cfg("aging", ws))),
    "report": (lambda ws: ws / "reports" / "paper", lambda ws: build_report(_cfg("report", ws))),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_second_copy_of_a_stage_stops_before_writing(tmp_path, stage):
    folder_of, call = STAGES[stage]
    folder = folder_of(tmp_path)
    with stage_lock(folder, stage):  # the first copy, still running
        with pytest.raises(StageRunning, match=rf"{stage} on {folder} is already running \(pid \d+ since .*"
                                               rf"Lock file: {lock_file(folder, stage)}"):
            call(tmp_path)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert written == []


def test_withdrawal_waits_for_no_round_and_no_ingest(tmp_path):
    for running in ("round", "ingest"):
        with stage_lock(tmp_path / "annotation", running):
            with pytest.raises(StageRunning, match=rf"^{running} on "):
                withdraw(_cfg("withdraw", tmp_path))


def _hold(path: Path, started, release) -> None:
    with exclusive(path, "a bootstrap round"):
        started.set()
        release.wait(30)


def test_a_lock_refuses_or_waits_while_held_and_is_free_once_its_holder_is_gone(tmp_path):
    lock = tmp_path / ".round.lock"
    ctx = mp.get_context("spawn")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock, started, release))
    holder.start()
    try:
        assert started.wait(30)
        with pytest.raises(StageRunning, match=rf"already running \(pid {holder.pid} since"):
            with exclusive(lock, "a bootstrap round"):
                pass
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(_time_to_acquire(lock)))
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive() and waited == []  # still waiting for the holder
        release.set()
        waiter.join(30)
        assert len(waited) == 1 and waited[0] >= 1.0
    finally:
        release.set()
        holder.join(30)
    never = ctx.Event()
    holder = ctx.Process(target=_hold, args=(lock, started, never))
    started.clear()
    holder.start()
    assert started.wait(30)
    holder.kill()  # kill -9: the kernel releases the lock
    holder.join(30)
    with exclusive(lock, "a bootstrap round"):
        assert lock.read_text().startswith(f"pid {os.getpid()} since")


def _time_to_acquire(lock: Path) -> float:
    began = time.monotonic()
    with exclusive(lock, "the summary", wait=True):
        return time.monotonic() - began


def test_a_second_training_of_the_same_part_stops_with_one_line(tiny_run):
    ws = tiny_run
    with stage_lock(ws / "results" / "tiny", "train-all"):
        run = subprocess.run([sys.executable, "-m", "totalseg_train", *train_overrides(ws)],
                             capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-3000:]
    assert f"error: train-all on {ws / 'results' / 'tiny'} is already running (pid" in run.stderr
    assert "Traceback" not in run.stderr


def test_the_lock_holder_removes_only_what_dead_processes_left(tmp_path):
    folder = tmp_path / "labels"
    folder.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        running = folder / f"{TMP_MARK}{writer.pid}-s0001.nii.gz"  # being written by a process still running
        running.write_bytes(b"half")
        reused = folder / f"{TMP_MARK}{writer.pid}-s0002.nii.gz"  # left before that pid was given to the process
        reused.write_bytes(b"half")
        os.utime(reused, (time.time() - 600, time.time() - 600))
        dead = folder / f"{TMP_MARK}999999999-s0003.nii.gz"
        dead.write_bytes(b"half")
        with stage_lock(folder, "qa"):
            assert sorted(p.name for p in folder.iterdir()) == [running.name]
    finally:
        writer.kill()
        writer.wait()
    with stage_lock(folder, "qa"):
        assert list(folder.iterdir()) == []
