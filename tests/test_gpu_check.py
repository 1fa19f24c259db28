"""make gpu-check's own arithmetic (the check itself runs on a lent GPU machine; its CPU rehearsal is in the
README): epoch times read from a real nnU-Net training log, GPU memory from nvidia-smi's query output."""

from __future__ import annotations

import pytest

from data_prep.gpu_check import epoch_seconds, gpu_memory_mb
from data_prep.gpu_bundle import CARRIED, pinned


def test_epoch_times_are_read_from_nnunets_own_training_log(tiny_run):
    logs = sorted(tiny_run.rglob("training_log_*.txt"))
    assert logs, "the tiny training wrote no nnU-Net training log"
    times = epoch_seconds(logs[-1].read_text())
    assert len(times) == 2 and all(0 < t < 600 for t in times)  # tiny_run: model.epochs=2


def test_gpu_memory_is_the_largest_reading_of_every_gpu():
    assert gpu_memory_mb("1024\n81920\n512\n") == 81920.0
    assert gpu_memory_mb(" 143\n") == 143.0
    with pytest.raises(ValueError):
        gpu_memory_mb("")


def test_the_bundle_pins_every_carried_package_at_the_version_installed_here():
    from importlib import metadata

    pins = dict(p.split("==") for p in pinned())
    assert list(pins) == list(CARRIED) and "nnunetv2" in pins and "wandb" not in pins
    assert pins["nnunetv2"] == metadata.version("nnunetv2") == "2.8.1"
