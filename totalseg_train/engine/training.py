"""Train one part model with nnU-Net's own training run (fold 0 = our train/validation split)."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from totalseg_train.atomic import remove_stale_temporaries, write_text
from totalseg_train.console import captured, stage_log
from totalseg_train.engine.datasets import PartDataset
from totalseg_train.engine.environment import nnunet_folders, scoped_environment, torch_device, usable_cores
from totalseg_train.engine.planning import Plan
from totalseg_train.engine.wandb_log import finish_active_run

if TYPE_CHECKING:  # torch is imported where it is used: withdrawal and reports read the engine's files only
    import torch

log = logging.getLogger(__name__)
FOLD = 0
FINAL_CHECKPOINT = "checkpoint_final.pth"
CHECKPOINTS = (FINAL_CHECKPOINT, "checkpoint_latest.pth", "checkpoint_best.pth")
TRAINED_WITH = "totalseg_trained_with.json"  # in a part's model folder: the settings and data it was trained on


class TrainedWithOtherSettings(ValueError):
    """A model folder holds a training (finished or not) of other settings or other subjects than asked for."""


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
    """``threads``, or as nnU-Net's own entry point does: all (usable) cores on a CPU, one when a GPU does the
    work."""
    import torch

    if threads is None:
        threads = usable_cores() if device.type == "cpu" else 1
    torch.set_num_threads(max(1, int(threads)))


def augmentation_workers(data_workers: int | None, num_gpus: int = 1) -> str | None:
    """nnU-Net's augmentation processes per GPU (``nnUNet_n_proc_DA``): ``data_workers``; for null, the user's
    own ``nnUNet_n_proc_DA`` where set (None: left as it is), else nnU-Net's choice (12 outside its own
    institute's hosts) capped at this process's cores per GPU: nnU-Net caps it at ``os.cpu_count()``, the whole
    machine, where a SLURM job or a local sweep's job has only its share (12 processes on one pinned core)."""
    if data_workers is not None:
        return str(int(data_workers))
    if "nnUNet_n_proc_DA" in os.environ:
        return None
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    return str(min(get_allowed_n_proc_DA(), max(1, usable_cores() // max(1, num_gpus))))


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's generators: nnU-Net's weights, patch sampling and augmentation
    draw from them (augmentation processes seed themselves, so only data_workers=0 repeats exactly)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def trained_with(plan: Plan, cfg: DictConfig) -> dict:
    """What makes a part's weights what they are: trainer, the planned and the trained configuration (spacing,
    patch, network, schedule, optimizer, initial weights) and fold 0's train / validation subjects."""
    plans = plan.plans()["configurations"]
    split = json.loads((plan.preprocessed_dir / "splits_final.json").read_text())[FOLD]
    return {"trainer": trainer_name(cfg.model), "planned": plans.get("3d_fullres", {}),
            "configuration": plans[plan.configuration],
            "subjects": {"train": sorted(split["train"]), "val": sorted(split["val"])}}


def differences(before: object, now: object, where: str = "") -> list[str]:
    """Readable lines ``key: before -> now`` for every leaf that differs between two JSON-like values."""
    if isinstance(before, dict) and isinstance(now, dict):
        return [line for key in sorted(set(before) | set(now), key=str)
                for line in differences(before.get(key), now.get(key), f"{where}.{key}" if where else str(key))]
    if before == now:
        return []
    if isinstance(before, list) and isinstance(now, list) and where.startswith("subjects"):
        added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
        return [f"{where}: {len(added)} added {added[:5]}, {len(removed)} removed {removed[:5]}"]
    return [f"{where}: {before!r} -> {now!r}"]


def is_validated(folder: Path) -> bool:
    """Whether nnU-Net's final validation of the trained fold finished (its summary.json is written last)."""
    return (fold_folder(folder) / "validation" / "summary.json").is_file()


def has_checkpoint(folder: Path) -> bool:
    """Whether a training has started in the part's model folder (any of nnU-Net's checkpoints is there)."""
    return any((fold_folder(folder) / name).is_file() for name in CHECKPOINTS)


def check_trained_with(folder: Path, record: dict) -> None:
    """Record what the part is trained with, or stop when its folder holds a training of something else
    (nnU-Net would continue or keep it, and the run would report settings the weights never saw)."""
    path = Path(folder) / TRAINED_WITH
    if path.is_file():
        changed = differences(json.loads(path.read_text()), record)
        if changed:
            raise TrainedWithOtherSettings(
                f"{folder} holds a training with other settings or subjects than this run asks for:\n  "
                + "\n  ".join(changed[:12])
                + "\nUse another experiment name (model.name=...) for a new model, or delete the folder to train "
                  "this one again.")
        return
    if has_checkpoint(folder):
        log.warning("%s has checkpoints but no record of its settings (trained before the record existed); "
                    "recording this run's settings for it", folder)
    write_text(path, json.dumps(record, indent=1, sort_keys=True))


def train_part(plan: Plan, cfg: DictConfig) -> Path:
    """Train the part model, continuing a killed training from its latest checkpoint (``resume``, on by
    default); a finished model is left as it is. Stops when the folder was trained with other settings."""
    from nnunetv2.run.run_training import run_training

    folder = model_folder(plan.dataset, cfg)
    remove_stale_temporaries(folder)  # a checkpoint a killed training was saving
    check_trained_with(folder, trained_with(plan, cfg))
    validating = is_trained(folder)
    if validating and (not cfg.model.final_validation or is_validated(folder)):
        log.info("%s is trained already (%s); delete it to train again", plan.dataset.name, folder)
        return folder
    device = torch_device(str(cfg.device))
    set_torch_threads(device, cfg.torch_threads)
    if cfg.model.seed is not None:
        seed_everything(int(cfg.model.seed))
    env = {"nnUNet_n_proc_DA": augmentation_workers(cfg.data_workers, int(cfg.num_gpus))}
    if cfg.logger.name == "wandb":
        env["WANDB_NAME"] = f"{cfg.model.name}-{plan.dataset.part}"
    resume = bool(cfg.resume) and has_checkpoint(folder)
    if validating:  # killed between the final checkpoint and the end of nnU-Net's final validation
        log.info("%s is trained; running its final validation, which a killed run left unfinished", plan.dataset.name)
    else:
        log.info("%s %s (%s, %s epochs) on %s", "continuing" if resume else "training", plan.dataset.name,
                 plan.configuration, cfg.model.epochs, device)
    with scoped_environment(env), captured(stage_log(bool(cfg.verbose))):
        run_training(str(plan.dataset.dataset_id), plan.configuration, FOLD,
                     trainer_class_name=trainer_name(cfg.model),
                     plans_identifier=plan.plans_identifier, num_gpus=int(cfg.num_gpus),
                     continue_training=resume and not validating, only_run_validation=validating, device=device)
    if cfg.logger.name == "wandb":
        finish_active_run()
    return folder
