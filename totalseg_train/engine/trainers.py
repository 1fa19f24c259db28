"""nnU-Net trainers of the engine. nnU-Net finds them by name through ``nnUNet_extTrainer`` (see nnunet_ext/).

The training schedule (epochs, iterations per epoch) comes from the trained configuration of the plans
file, where the engine writes it from the config, so one trainer class serves every experiment and a
model folder records how it was trained.
"""

from __future__ import annotations

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)

from totalseg_train.engine.planning import SCHEDULE_KEY


class nnUNetTrainerTotalSeg(nnUNetTrainer):
    """nnU-Net's default trainer with the schedule read from the plans' configuration."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        schedule = self.configuration_manager.configuration.get(SCHEDULE_KEY, {})
        self.num_epochs = int(schedule.get("num_epochs", self.num_epochs))
        self.num_iterations_per_epoch = int(schedule.get("num_iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(
            schedule.get("num_val_iterations_per_epoch", self.num_val_iterations_per_epoch))


class nnUNetTrainerTotalSegNoMirroring(nnUNetTrainerTotalSeg, nnUNetTrainerNoMirroring):
    """Without mirroring, in training and at inference (nnU-Net's own variant): left and right
    structures are separate classes."""
