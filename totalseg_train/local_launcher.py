"""What ``hydra/launcher=local`` adds to submitit's local launcher: every job of a sweep on its own share of this
machine (``totalseg_train.job_shares``).

submitit's local executor starts every job with the same first ``gpus_per_node`` GPUs (five training parts
"one per GPU" all trained on GPU 0) and on every core (CPU jobs side by side wait on each other's threads).
Job i of the n that run at once gets the i-th ``gpus_per_node`` of the GPUs the sweep's process sees, in turn,
and every n-th core, or ``cpus_per_task`` cores where set. Hydra only accepts launchers from the
``hydra_plugins`` package, so this is a callback of every stage (configs/hydra/default.yaml): the sweep's
process plans the shares before the first job starts and hands them down in the environment; each job takes
its own before its task runs (its task initialises CUDA later) and logs it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from totalseg_train.job_shares import core_share, gpu_crowding, gpu_share

log = logging.getLogger(__name__)

SUBMITIT_LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
PLAN_VARIABLE = "TOTALSEG_LOCAL_JOB_SHARES"


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices or UUIDs)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu.strip() for gpu in listed.split(",") if gpu.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def jobs_at_once(config: DictConfig) -> int:
    """How many jobs of this sweep the launcher starts together: its first batch, as Hydra's basic sweeper
    splits the sweep's overrides (all of them, unless ``hydra.sweeper.max_batch_size`` is set)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    arguments = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return len(BasicSweeper.split_arguments(overrides, sweeper.get("max_batch_size"))[0])


class LocalJobShares(Callback):
    """Plans the shares of a ``hydra/launcher=local`` sweep in its process; applies one in each job."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher, sweeper = config.hydra.launcher, config.hydra.sweeper
        if (launcher.get("_target_") != SUBMITIT_LOCAL or sweeper.get("_target_") != BASIC_SWEEPER
                or not hasattr(os, "sched_setaffinity")):  # Linux only: elsewhere submitit's local jobs as they are
            return
        gpus_per_job = int(launcher.get("gpus_per_node") or 0)
        gpus = visible_gpus() if gpus_per_job else []
        try:
            gpu_share(gpus, 0, gpus_per_job)
        except ValueError as err:  # Hydra turns a callback's exceptions into warnings: stop before any job starts
            print(f"error: hydra.launcher.gpus_per_node={gpus_per_job}: {err}", file=sys.stderr)
            sys.exit(2)
        jobs = jobs_at_once(config)
        crowding = gpu_crowding(gpus, jobs, gpus_per_job)
        if crowding:  # a warning, not an error: a large GPU may well hold two trainings
            log.warning(crowding)
        plan = {"jobs": jobs, "cores": sorted(os.sched_getaffinity(0)),
                "cores_per_job": launcher.get("cpus_per_task"), "gpus": gpus, "gpus_per_job": gpus_per_job}
        os.environ[PLAN_VARIABLE] = json.dumps(plan)  # submitit's local jobs start with this environment

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        plan = os.environ.pop(PLAN_VARIABLE, None)  # the job's own processes and commands plan their own
        if plan is None or config.hydra.mode != RunMode.MULTIRUN or os.environ.get("SUBMITIT_EXECUTOR") != "local":
            return
        plan = json.loads(plan)
        index = config.hydra.job.num % plan["jobs"]
        os.sched_setaffinity(0, core_share(plan["cores"], index, plan["jobs"], plan["cores_per_job"]))
        gpus = gpu_share(plan["gpus"], index, plan["gpus_per_job"])
        if plan["gpus_per_job"]:  # otherwise submitit's empty CUDA_VISIBLE_DEVICES hides every GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        log.info(f"local job {config.hydra.job.num}: cores {','.join(map(str, sorted(os.sched_getaffinity(0))))};"
                 f" GPUs {','.join(gpus) or 'none'}")
