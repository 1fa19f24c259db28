"""nnU-Net's environment, derived from the config: its three folders, our trainers, process counts, wandb.

nnU-Net reads its settings from environment variables. Its folders are read whenever they are used, but
``nnUNet_def_n_proc`` is read once, when ``nnunetv2.configuration`` is first imported, so entry points call
``configure_nnunet`` before importing anything from nnunetv2 (the engine's modules import it lazily).
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    import torch

# The folder nnU-Net searches for trainers outside its own package (nnUNet_extTrainer).
TRAINER_DIR = Path(__file__).resolve().parent / "nnunet_ext"
NNUNET_FOLDERS = {"nnUNet_raw": "raw", "nnUNet_preprocessed": "preprocessed", "nnUNet_results": "results"}


def nnunet_folders(cfg: DictConfig) -> dict[str, Path]:
    root = Path(cfg.paths.nnunet)
    return {var: root / sub for var, sub in NNUNET_FOLDERS.items()}


def nnunet_environment(cfg: DictConfig) -> dict[str, str]:
    """The environment variables nnU-Net needs for this config (process-wide ones only)."""
    env = {var: str(path) for var, path in nnunet_folders(cfg).items()}
    env["nnUNet_extTrainer"] = str(TRAINER_DIR)
    env["nnUNet_def_n_proc"] = str(max(1, int(cfg.workers)))
    wandb = cfg.logger.name == "wandb"
    env["nnUNet_wandb_enabled"] = "1" if wandb else "0"
    if wandb:
        env["nnUNet_wandb_mode"] = str(cfg.logger.mode)
        env["nnUNet_wandb_project"] = str(cfg.logger.project)
        env["WANDB_RUN_GROUP"] = str(cfg.model.name)
        if cfg.logger.entity:
            env["WANDB_ENTITY"] = str(cfg.logger.entity)
    return env


def configure_nnunet(cfg: DictConfig) -> None:
    """Point nnU-Net at the workspace's nnunet folders (created if missing) and set its process counts."""
    for path in nnunet_folders(cfg).values():
        path.mkdir(parents=True, exist_ok=True)
    os.environ.update(nnunet_environment(cfg))
    terminable_forks()


def usable_cores() -> int:
    """The CPU cores this process may run on: a SLURM job's allocation or a pinned worker's share, where
    ``os.cpu_count()`` counts the whole machine (threads beyond the allocation wait for each other)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache  # the hook is registered once per process
def terminable_forks() -> None:
    """Forked children (nnU-Net's fork pools) start with the default SIGTERM action.

    A submitit job (a cluster or ``hydra/launcher=local`` job) handles SIGTERM itself, to requeue the job, and
    a forked child inherits that handler, so ``Pool.terminate()`` cannot stop its workers: nnU-Net's planning
    then hung for good in the pool's ``join`` whenever a worker still waited for a task (seen in a local
    two-part sweep). The job's own process keeps submitit's handler."""
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


@contextmanager
def scoped_environment(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, leave alone) environment variables for the duration of a block."""
    saved = {key: os.environ.get(key) for key in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def torch_device(name: str) -> torch.device:
    """The torch device for ``device=cuda|cpu|mps``, with a clear error when it is not available here."""
    import torch  # here, not at the top: stages that only read the engine's files start without torch
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA GPU is available on this machine; use device=cpu (or mps)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError("device=mps but Apple's MPS backend is not available on this machine; use device=cpu")
    if name not in ("cuda", "cpu", "mps"):
        raise ValueError(f"device={name!r}: use cuda, cpu or mps")
    return torch.device(name)
