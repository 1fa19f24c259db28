"""Plan and preprocess a part dataset through nnU-Net's Python API, with the experiment's overrides.

nnU-Net's planner runs at the experiment's target spacing under the plans name of the config; the
experiment's configuration (e.g. ``3d_fullres_tiny``) is then added to that plans file as a configuration
that ``inherits_from`` nnU-Net's ``3d_fullres`` and overrides what the experiment changes (batch size,
patch size, network) plus the training settings our trainers read. Planning and preprocessing are
skipped when the exported cases and the planning settings are unchanged since the last run.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from totalseg_train.atomic import write_text
from totalseg_train.console import captured, stage_log
from totalseg_train.engine.datasets import PartDataset
from totalseg_train.engine.environment import nnunet_folders
from totalseg_train.engine.export import CHANNEL, raw_dataset_dir
from totalseg_train.engine.split import Split
from totalseg_train.images import nifti_path

log = logging.getLogger(__name__)
BASE_CONFIGURATION = "3d_fullres"
STAMP = "totalseg_stamp.json"
TRAINING_KEY = "totalseg_training"  # how our trainers train a configuration of the plans


@dataclass(frozen=True)
class Plan:
    """Where a part's plans live and which of its configurations the experiment trains."""

    dataset: PartDataset
    plans_identifier: str
    configuration: str
    preprocessed_dir: Path

    @property
    def plans_file(self) -> Path:
        return self.preprocessed_dir / f"{self.plans_identifier}.json"

    def plans(self) -> dict:
        return json.loads(self.plans_file.read_text())


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s values, merging nested dictionaries key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = deep_merge(base[key], value)
        else:
            merged[key] = value
    return merged


def training_settings(model_cfg: DictConfig, initial_checkpoint: Path | None = None) -> dict:
    """What our trainers read: schedule, optimizer, learning rate, checkpoint interval, initial weights, final
    validation."""
    return {"num_epochs": int(model_cfg.epochs), "num_iterations_per_epoch": int(model_cfg.iterations_per_epoch),
            "num_val_iterations_per_epoch": int(model_cfg.val_iterations), "optimizer": str(model_cfg.optimizer),
            "initial_lr": float(model_cfg.initial_lr), "checkpoint_every": int(model_cfg.checkpoint_every),
            "initial_checkpoint": str(initial_checkpoint) if initial_checkpoint else None,
            "final_validation": bool(model_cfg.final_validation)}


def experiment_configuration(plans: dict, overrides: dict, training: dict) -> dict:
    """The experiment's configuration entry: inherits from 3d_fullres and overrides what it changes.

    nnU-Net resolves ``inherits_from`` one key deep, so a nested override (``architecture``) is written
    whole: the planned value with the override's keys merged in.
    """
    base = plans["configurations"][BASE_CONFIGURATION]
    entry = {"inherits_from": BASE_CONFIGURATION}
    for key, value in overrides.items():
        entry[key] = deep_merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    entry[TRAINING_KEY] = training
    return entry


def _stamp(dataset: PartDataset, cfg: DictConfig, cases: list[str], preprocessed: bool) -> dict:
    raw = raw_dataset_dir(nnunet_folders(cfg)["nnUNet_raw"], dataset)
    files = {sid: [nifti_path(raw / "imagesTr", f"{sid}{CHANNEL}").stat().st_mtime_ns,
                   nifti_path(raw / "labelsTr", sid).stat().st_mtime_ns] for sid in sorted(cases)}
    return {"cases": files, "spacing_mm": [float(s) for s in cfg.model.spacing_mm],
            "gpu_memory_gb": float(cfg.model.gpu_memory_gb), "plans_name": str(cfg.model.plans_name),
            "preprocessed": preprocessed}


def _read_stamp(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def plan_and_preprocess(dataset: PartDataset, split: Split, cases: list[str], cfg: DictConfig,
                        preprocess: bool = True, initial_checkpoint: Path | None = None) -> Plan:
    """Fingerprint, plan (experiment spacing), add the experiment's configuration, write the split as
    fold 0, and preprocess that configuration. ``cases``: the exported train and validation subjects;
    ``initial_checkpoint``: weights that start the part's training."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprint_dataset,
                                                                      plan_experiment_dataset,
                                                                      preprocess_dataset)

    folders = nnunet_folders(cfg)
    plan = Plan(dataset, str(cfg.model.plans_name), str(cfg.model.configuration),
                folders["nnUNet_preprocessed"] / dataset.name)
    stamp_file = plan.preprocessed_dir / STAMP
    stored = _read_stamp(stamp_file)
    wanted = _stamp(dataset, cfg, cases, preprocessed=False)
    stored_settings = {k: v for k, v in (stored or {}).items() if k != "preprocessed"}
    unchanged = stored_settings == {k: v for k, v in wanted.items() if k != "preprocessed"} and plan.plans_file.is_file()
    workers = max(1, int(cfg.workers))
    nnunet_log = stage_log(bool(cfg.verbose))
    if not unchanged:
        stamp_file.unlink(missing_ok=True)
        log.info("planning %s at %s mm", dataset.name, list(cfg.model.spacing_mm))
        # nnU-Net's spacing is in array order (z, y, x); the config's is x, y, z like SimpleITK's.
        spacing_zyx = tuple(float(s) for s in reversed(list(cfg.model.spacing_mm)))
        with captured(nnunet_log):
            extract_fingerprint_dataset(dataset.dataset_id, num_processes=workers, clean=True, verbose=False,
                                        show_progress_bar=False)
            plan_experiment_dataset(dataset.dataset_id, ExperimentPlanner,
                                    gpu_memory_target_in_gb=float(cfg.model.gpu_memory_gb),
                                    overwrite_target_spacing=spacing_zyx, overwrite_plans_name=plan.plans_identifier)
    plans = plan.plans()
    overrides = OmegaConf.to_container(cfg.model.plan_overrides, resolve=True) or {}
    plans["configurations"][plan.configuration] = experiment_configuration(
        plans, overrides, training_settings(cfg.model, initial_checkpoint))
    write_text(plan.plans_file, json.dumps(plans, indent=1) + "\n")
    _write_splits(plan, split, cases, folders["nnUNet_raw"])
    if preprocess and not (unchanged and stored and stored["preprocessed"]):
        log.info("preprocessing %s (%s)", dataset.name, plan.configuration)
        # Ground truth copies of earlier runs may belong to subjects that are not in the dataset any more.
        shutil.rmtree(plan.preprocessed_dir / "gt_segmentations", ignore_errors=True)
        with captured(nnunet_log):
            preprocess_dataset(dataset.dataset_id, plan.plans_identifier, [plan.configuration], [workers],
                               show_progress_bar=False)
        wanted["preprocessed"] = True
    else:
        wanted["preprocessed"] = bool(unchanged and stored and stored["preprocessed"])
    write_text(stamp_file, json.dumps(wanted) + "\n")
    return plan


def _write_splits(plan: Plan, split: Split, cases: list[str], raw_root: Path) -> None:
    """nnU-Net's splits_final.json (fold 0 = our train/validation), restricted to the exported cases."""
    exported = set(cases)
    fold0 = [{g: [s for s in subjects if s in exported] for g, subjects in fold.items()}
             for fold in split.nnunet_splits()]
    if not fold0[0]["train"] or not fold0[0]["val"]:
        raise ValueError(f"{plan.dataset.name}: fold 0 needs training and validation subjects, has {fold0[0]}")
    text = json.dumps(fold0, indent=1) + "\n"
    write_text(plan.preprocessed_dir / "splits_final.json", text)
    write_text(raw_dataset_dir(raw_root, plan.dataset) / "splits_final.json", text)
