"""Each job's share of the machine when jobs run side by side (``totalseg_train.job_shares``), on lists; how
many jobs a local sweep starts at once (``totalseg_train.local_launcher``), on sweep configs; nnU-Net's
augmentation processes within the cores a job may use."""

from __future__ import annotations

import os

import pytest
from omegaconf import DictConfig, OmegaConf

from totalseg_train.job_shares import core_share, gpu_crowding, gpu_share
from totalseg_train.local_launcher import jobs_at_once


def test_jobs_split_the_cores_evenly_and_take_turns_when_there_are_more_jobs_than_cores():
    assert [core_share([3, 0, 2, 1], i, 2) for i in range(2)] == [[0, 2], [1, 3]]
    assert [core_share(range(4), i, 3) for i in range(3)] == [[0, 3], [1], [2]]
    assert [core_share([4, 5], i, 5) for i in range(5)] == [[4], [5], [4], [5], [4]]
    assert core_share([7], 0, 1) == [7]
    shares = [core_share(range(16), i, 5) for i in range(5)]
    assert sorted(c for share in shares for c in share) == list(range(16)), "every core used once"


def test_cores_per_job_are_consecutive_in_turn_and_never_more_than_the_machine_has():
    assert [core_share(range(8), i, 4, per_job=2) for i in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [core_share(range(4), i, 3, per_job=3) for i in range(3)] == [[0, 1, 2], [0, 1, 3], [0, 2, 3]]
    assert core_share(range(2), 1, 2, per_job=8) == [0, 1]


def test_each_job_sees_its_own_gpus_and_jobs_take_turns_when_there_are_more_jobs_than_gpus():
    assert [gpu_share(["0", "1", "2", "3", "4"], i, 1) for i in range(5)] == [["0"], ["1"], ["2"], ["3"], ["4"]]
    assert [gpu_share(["3", "5"], i, 1) for i in range(3)] == [["3"], ["5"], ["3"]]
    assert [gpu_share(list("0123"), i, 2) for i in range(2)] == [["0", "1"], ["2", "3"]]
    with pytest.raises(ValueError, match="2 GPUs per job asked for, but this machine shows 1 \\(0\\)"):
        gpu_share(["0"], 0, 2)
    with pytest.raises(ValueError, match="shows 0 \\(none\\)"):
        gpu_share([], 0, 1)


def test_more_jobs_than_gpus_are_named_with_how_many_share_one_and_the_batch_size_that_fits():
    assert gpu_crowding(list("0123"), 5, 1) == ("5 jobs at once with 1 GPU each, but this machine shows 4 (0,1,2,3):"
                                                " up to 2 jobs share a GPU and its memory;"
                                                " hydra.sweeper.max_batch_size=4 runs 4 at a time")
    assert "with 2 GPUs each, but this machine shows 3 (0,1,2): up to 2 jobs share" in gpu_crowding(list("012"), 2, 2)
    assert "max_batch_size=1 runs 1 at a time" in gpu_crowding(list("012"), 2, 2)
    assert "up to 3 jobs share" in gpu_crowding(["3", "5"], 5, 1)
    assert gpu_crowding(list("0123"), 4, 1) is None and gpu_crowding(list("0123"), 2, 2) is None
    assert gpu_crowding([], 16, 0) is None, "CPU jobs need no GPU"


def test_the_jobs_a_sweep_starts_at_once_are_its_first_batch_as_hydras_basic_sweeper_splits_it():
    def sweep(task: list[str], params: dict | None = None, max_batch_size: int | None = None) -> DictConfig:
        return OmegaConf.create({"hydra": {"overrides": {"task": task},
                                           "sweeper": {"params": params, "max_batch_size": max_batch_size}}})

    assert jobs_at_once(sweep(["shard.index=0,1,2", "shard.count=3", "hydra/launcher=local"])) == 3
    assert jobs_at_once(sweep(["part=organs,vertebrae,cardiac,muscles,ribs"], max_batch_size=4)) == 4
    assert jobs_at_once(sweep(["a=1,2,3"], params={"b": "x,y"})) == 6
    assert jobs_at_once(sweep(["shard.index=range(0,16)", "shard.count=16"])) == 16


def test_nnunets_augmentation_processes_are_capped_at_the_cores_a_job_may_use(monkeypatch):
    """nnU-Net's own choice is 12 augmentation processes capped at ``os.cpu_count()``, the whole machine: a local
    sweep's job pinned to one core would start 12 on it."""
    from totalseg_train.engine.training import augmentation_workers

    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)
    assert augmentation_workers(0) == "0" and augmentation_workers(3) == "3", "data_workers as set"
    cores = os.sched_getaffinity(0)
    assert augmentation_workers(None) == str(min(12, len(cores)))
    try:
        os.sched_setaffinity(0, [min(cores)])
        assert augmentation_workers(None) == "1" and augmentation_workers(None, num_gpus=2) == "1"
    finally:
        os.sched_setaffinity(0, cores)
    monkeypatch.setenv("nnUNet_n_proc_DA", "5")
    assert augmentation_workers(None) is None, "a user's own nnUNet_n_proc_DA is left as it is"
