"""The console shows our bars and summaries; nnU-Net's own output goes to the stage run's nnunet.log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, train_overrides

from totalseg_train.console import NNUNET_LOG, TAIL_LINES, captured, log_tail, stage_log, terminal

NNUNET_TRAINING = ["Yayy! New best EMA pseudo Dice", "Epoch time"]  # nnU-Net's epoch report
# nnU-Net's predictor prints this whenever it is made for a CPU (the tests' device), once per part model
NNUNET_PREDICTION = "perform_everything_on_device=True is only supported for cuda devices"


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


def test_training_shows_bars_and_summary_and_logs_nnunets_output(tiny_run):
    """tests/conftest.py's tiny_run (train, predict and score the test split): our bars and summary on the
    console, nnU-Net's plans, epoch report and predictor output only in logs/train/<time>/nnunet.log."""
    stdout = tiny_run.with_name("tiny_run.stdout").read_text()
    stderr = tiny_run.with_name("tiny_run.stderr").read_text()
    assert "test split: mean Dice" in stdout
    assert "training Dataset390_tiny: 100%" in stderr and "predicting (tiny): 100%" in stderr
    for chatter in NNUNET_TRAINING + [NNUNET_PREDICTION, "Using trainer", "Configuration:", "Plans were saved"]:
        assert chatter not in stdout + stderr, chatter
    logs = [p.read_text() for p in stage_logs(tiny_run, "train")]
    assert any(all(c in text for c in NNUNET_TRAINING + [NNUNET_PREDICTION, "Plans were saved"]) for text in logs)


def test_verbose_shows_nnunets_output_on_the_console(tiny_run, tmp_path):
    """verbose=true on tiny_run's trained model, results in a new folder: the test split is predicted again,
    and nnU-Net's predictor output is on the console, not in a log."""
    before = stage_logs(tiny_run, "train")
    run = subprocess.run([sys.executable, "-m", "totalseg_train", *train_overrides(tiny_run),
                          f"paths.results={tmp_path}", "verbose=true"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert NNUNET_PREDICTION in run.stdout and "test split: mean Dice" in run.stdout
    assert stage_logs(tiny_run, "train") == before
