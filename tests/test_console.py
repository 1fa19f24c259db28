"""The console shows our bars and summaries; nnU-Net's own output goes to the stage run's nnunet.log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from totalseg_train.console import NNUNET_LOG, TAIL_LINES, captured, log_tail, stage_log, terminal

NNUNET_TRAINING = ["Yayy! New best EMA pseudo Dice", "Epoch time"]  # nnU-Net's epoch report
NNUNET_PREDICTION = "There are 1 cases that I would like to predict"  # nnU-Net's predictor, once per image


def stage_logs(workspace: Path, stage: str) -> list[Path]:
    return sorted((workspace / "logs" / stage).glob(f"*/{NNUNET_LOG}"))


def test_a_captured_block_sends_this_process_its_children_and_c_level_writes_to_the_log(tmp_path, capfd):
    log = tmp_path / "logs" / NNUNET_LOG
    print("before")
    with captured(log):
        print("printed inside")
        sys.stderr.write("warned inside\n")
        subprocess.run([sys.executable, "-c", "import os; print('child process'); os.write(2, b'child fd 2\\n')"],
                       check=True)
        print("our bar", file=terminal())
    print("after")
    console = capfd.readouterr()
    assert console.out == "before\nafter\n"
    assert console.err == "our bar\n"
    assert log.read_text().splitlines() == ["printed inside", "warned inside", "child process", "child fd 2"]


def test_a_failing_block_shows_the_log_tail_and_path_on_the_console(tmp_path, capfd):
    log = tmp_path / NNUNET_LOG
    with pytest.raises(RuntimeError, match="nnU-Net failed"), captured(log):
        for i in range(TAIL_LINES + 10):
            print(f"line {i}")
        raise RuntimeError("nnU-Net failed")
    err = capfd.readouterr().err.splitlines()
    assert err[0] == f"--- last {TAIL_LINES} lines of {log} ---"
    assert err[1:-1] == [f"line {i}" for i in range(10, TAIL_LINES + 10)] == log_tail(log)
    assert err[-1] == "---"


def test_verbose_or_no_hydra_run_leaves_the_console_alone():
    assert stage_log(verbose=True) is None
    assert stage_log(verbose=False) is None  # a library call outside a Hydra stage run


def test_training_shows_its_summary_and_logs_nnunets_epochs(heart_model):
    """The heart_tiny training command (tests/conftest.py's heart_model): our summary on stdout, nnU-Net's epoch
    report only in the run's nnunet.log."""
    stdout = heart_model["stdout"]
    assert "heart_tiny: train" in stdout and "test split: mean Dice" in stdout
    for chatter in NNUNET_TRAINING + ["Using trainer", "Configuration:"]:
        assert chatter not in stdout
    logs = [p.read_text() for p in stage_logs(heart_model["ws"], "train")]
    assert any(all(chatter in text for chatter in NNUNET_TRAINING) for text in logs), logs


def test_prediction_is_logged_and_verbose_shows_it(heart_applied, apply_heart, tmp_path):
    """apply: nnU-Net's predictor output in logs/apply/<time>/nnunet.log; verbose=true: on the console, no log."""
    assert NNUNET_PREDICTION not in heart_applied["stdout"]
    ws = heart_applied["ws"]
    logged = [p for p in stage_logs(ws, "apply") if NNUNET_PREDICTION in p.read_text()]
    assert logged and logged[0].read_text().count(NNUNET_PREDICTION) == len(heart_applied["subjects"])

    table = tmp_path / "one_subject.csv"
    subjects = pd.read_csv(heart_applied["table"], dtype=str, keep_default_na=False)
    subjects.head(1).to_csv(table, index=False)
    before = stage_logs(ws, "apply")
    run = apply_heart(ws, f"subjects_csv={table}", f"out={tmp_path / 'predicted'}", "verbose=true")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert NNUNET_PREDICTION in run.stdout and "heart sub-parts of 1 subjects predicted" in run.stdout
    assert stage_logs(ws, "apply") == before
