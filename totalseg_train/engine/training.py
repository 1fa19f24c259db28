"""Train one part model with nnU-Net's own training run (fold 0 = our train/validation split)."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from totalseg_train.console import captured, stage_log
from totalseg_train.engine.datasets import PartDataset
from totalseg_train.engine.environment import nnunet_folders, scoped_environment, torch_device
from totalseg_train.engine.planning import Plan
from totalseg_train.engine.wandb_log import finish_active_run

log = logging.getLogger(__name__)
FOLD = 0
FINAL_CHECKPOINT = "checkpoint_final.pth"


def trainer_name(model_cfg: DictConfig) -> str:
    """Our trainer for the experiment's ``mirroring`` and ``augmentation`` (no augmentation: no mirroring either)."""
    if not model_cfg.augmentation:
        return "nnUNetTrainerTotalSegNoDA"
    return "nnUNetTrainerTotalSeg" if model_cfg.mirroring else "nnUNetTrainerTotalSegNoMirroring"


def model_folder(dataset: PartDataset, cfg: DictConfig) -> Path:
    """nnU-Net's training output folder of a part (holds plans.json, dataset.json and fold_0/)."""
    return (nnunet_folders(cfg)["nnUNet_results"] / dataset.name /
            f"{trainer_name(cfg.model)}__{cfg.model.plans_name}__{cfg.model.configuration}")


def fold_folder(folder: Path) -> Path:
    return Path(folder) / f"fold_{FOLD}"


def is_trained(folder: Path) -> bool:
    return (fold_folder(folder) / FINAL_CHECKPOINT).is_file()


def set_torch_threads(device: torch.device, threads: int | None = None) -> None:
    """``threads``, or as nnU-Net's own entry point does: all cores on a CPU, one when a GPU does the work."""
    if threads is None:
        threads = (os.cpu_count() or 1) if device.type == "cpu" else 1
    torch.set_num_threads(max(1, int(threads)))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators: nnU-Net's weights, patch sampling and augmentation
    draw from them (augmentation processes seed themselves, so only data_workers=0 repeats exactly)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_part(plan: Plan, cfg: DictConfig) -> Path:
    """Train (or, with resume=true, continue) the part model; a finished model is left as it is."""
    from nnunetv2.run.run_training import run_training

    folder = model_folder(plan.dataset, cfg)
    if is_trained(folder):
        log.info("%s is trained already (%s); delete it to train again", plan.dataset.name, folder)
        return folder
    device = torch_device(str(cfg.device))
    set_torch_threads(device, cfg.torch_threads)
    if cfg.model.seed is not None:
        seed_everything(int(cfg.model.seed))
    env = {"nnUNet_n_proc_DA": None if cfg.data_workers is None else str(cfg.data_workers)}
    if cfg.logger.name == "wandb":
        env["WANDB_NAME"] = f"{cfg.model.name}-{plan.dataset.part}"
    log.info("training %s (%s, %s epochs) on %s", plan.dataset.name, plan.configuration, cfg.model.epochs, device)
    with scoped_environment(env), captured(stage_log(bool(cfg.verbose))):
        run_training(str(plan.dataset.dataset_id), plan.configuration, FOLD,
                     trainer_class_name=trainer_name(cfg.model),
                     plans_identifier=plan.plans_identifier, num_gpus=int(cfg.num_gpus),
                     continue_training=bool(cfg.resume), device=device)
    if cfg.logger.name == "wandb":
        finish_active_run()
    return folder
