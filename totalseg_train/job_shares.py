"""Each job's share of this machine when several run on it side by side: its CPU cores and its GPUs.

Two jobs threaded over the same cores wait on each other: OpenMP threads spin at every barrier, and a tiny
nnU-Net training step ran 9x slower with two trainings each on both cores of a 2-core machine, while two on one
core each ran as fast as one alone on one core. So jobs side by side (a local sweep's jobs, the test suite's
workers) each get cores of their own, and everything a job starts (nnU-Net's "all cores", its workers) stays
within them.

Standard library only: the test suite pins its workers with it before numpy and torch size their pools.
"""

from __future__ import annotations

from collections.abc import Sequence


def core_share(cores: Sequence[int], index: int, count: int, per_job: int | None = None) -> list[int]:
    """The cores of job ``index`` (from 0) of ``count``: every ``count``-th core from its own, or with
    ``per_job``, that many consecutive ones. With more jobs than cores, jobs take turns round the cores
    (several jobs on one core share it; none waits on another's threads)."""
    ordered = sorted(cores)
    if per_job:
        take = min(per_job, len(ordered))
        return sorted({ordered[(index * take + j) % len(ordered)] for j in range(take)})
    groups = min(count, len(ordered))
    return ordered[index % groups::groups]


def gpu_share(gpus: Sequence[str], index: int, per_job: int) -> list[str]:
    """The GPUs (CUDA_VISIBLE_DEVICES entries) of job ``index``: the next ``per_job`` of ``gpus`` in turn, so
    that jobs side by side train on different GPUs while there are enough (then they take turns)."""
    if per_job > len(gpus):
        raise ValueError(f"{per_job} GPUs per job asked for, but this machine shows {len(gpus)}"
                         f" ({','.join(gpus) or 'none'})")
    return [gpus[(index * per_job + j) % len(gpus)] for j in range(per_job)]


def gpu_crowding(gpus: Sequence[str], jobs: int, per_job: int) -> str | None:
    """When ``jobs`` side by side asking ``per_job`` GPUs each need more than ``gpus``: what happens (GPUs shared
    and their memory with them: two highres trainings outgrow most GPUs) and the batch size that fits; else None."""
    if not per_job or jobs * per_job <= len(gpus):
        return None
    fit = len(gpus) // per_job
    crowd = -(-jobs * per_job // len(gpus))
    return (f"{jobs} jobs at once with {per_job} GPU{'s' if per_job > 1 else ''} each, but this machine shows"
            f" {len(gpus)} ({','.join(gpus)}): up to {crowd} jobs share a GPU and its memory;"
            f" hydra.sweeper.max_batch_size={fit} runs {fit} at a time")
