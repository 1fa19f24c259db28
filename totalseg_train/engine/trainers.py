"""nnU-Net trainers of the engine. nnU-Net finds them by name through ``nnUNet_extTrainer`` (see nnunet_ext/).

How a configuration is trained (epochs, iterations, optimizer, learning rate, checkpoint interval, initial
weights, final validation) comes from the trained configuration of the plans file, where the engine writes it from the
config, so these classes serve every experiment and a model folder records how it was trained. Mirroring
and augmentation choose the class: nnU-Net's own variants switch them off.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoDA import nnUNetTrainerNoDA
from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
    nnUNetTrainerNoMirroring,
)
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from totalseg_train.atomic import atomic_path
from totalseg_train.console import terminal
from totalseg_train.engine.planning import TRAINING_KEY

OPTIMIZERS = ("sgd", "adamw")
# nnU-Net redraws progress.png (matplotlib, about 0.7 s on a CPU) after every epoch: 13 % of a tiny training's
# time. It is drawn after the first and the last epoch and otherwise at most this often.
PROGRESS_PLOT_EVERY_S = 30.0


class nnUNetTrainerTotalSeg(nnUNetTrainer):
    """nnU-Net's default trainer with the training settings read from the plans' configuration."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        settings = self.configuration_manager.configuration.get(TRAINING_KEY, {})
        self.num_epochs = int(settings.get("num_epochs", self.num_epochs))
        self.num_iterations_per_epoch = int(settings.get("num_iterations_per_epoch", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(
            settings.get("num_val_iterations_per_epoch", self.num_val_iterations_per_epoch))
        self.initial_lr = float(settings.get("initial_lr", self.initial_lr))
        self.save_every = int(settings.get("checkpoint_every", self.save_every))
        self.optimizer_name = str(settings.get("optimizer", "sgd"))
        if self.optimizer_name not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer_name!r} is not one of {', '.join(OPTIMIZERS)}")
        self.initial_checkpoint = settings.get("initial_checkpoint")
        self.final_validation = bool(settings.get("final_validation", True))
        # nnU-Net's epoch end draws progress.png in place (matplotlib): a kill while it draws leaves a cut-off
        # PNG. Its logger's method is wrapped to draw into a scratch folder and rename the picture into place.
        self._plot_in_place = self.logger.plot_progress_png
        self.logger.plot_progress_png = self._plot_progress_atomically
        self._plotted_at = float("-inf")

    def on_train_start(self):
        super().on_train_start()
        # Our one line per training on the console (nnU-Net's own epoch report goes to the stage's log).
        self.progress = tqdm(total=self.num_epochs, initial=self.current_epoch, unit="epoch", file=terminal(),
                             desc=f"training {self.plans_manager.dataset_name}", disable=self.local_rank != 0)

    def on_epoch_end(self):
        super().on_epoch_end()
        self.progress.set_postfix(pseudo_dice=f"{self.logger.get_value('ema_fg_dice', step=-1):.3f}", refresh=False)
        self.progress.update(1)

    def on_train_end(self):
        self.progress.close()
        super().on_train_end()

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written under a temporary name and renamed into place: a training killed while
        saving keeps its previous checkpoint, not a cut-off file that no resume can load (and that, as
        checkpoint_final.pth, would pass for a trained model)."""
        if self.local_rank != 0 or self.disable_checkpointing:
            super().save_checkpoint(filename)
            return
        with atomic_path(filename) as tmp:
            super().save_checkpoint(str(tmp))

    def _plot_progress_atomically(self, output_folder: str) -> None:
        last_epoch = self.current_epoch == self.num_epochs - 1
        if not last_epoch and time.monotonic() - self._plotted_at < PROGRESS_PLOT_EVERY_S:
            return
        self._plotted_at = time.monotonic()
        with atomic_path(Path(output_folder) / "progress.png") as tmp:
            scratch = tmp.with_name(f"{tmp.name}.d")  # a temporary's name: removed with them if the run dies
            scratch.mkdir()
            try:
                self._plot_in_place(str(scratch))
                (scratch / "progress.png").replace(tmp)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    def configure_optimizers(self):
        if self.optimizer_name == "sgd":
            return super().configure_optimizers()
        # As nnU-Net's nnUNetTrainerAdam: AdamW (amsgrad) under the same polynomial decay.
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.initial_lr, weight_decay=self.weight_decay,
                                      amsgrad=True)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if self.final_validation:
            super().perform_actual_validation(save_probabilities)
        else:
            self.print_to_log_file("final validation skipped (final_validation=false)")

    def initialize(self):
        fresh = not self.was_initialized
        super().initialize()
        # A resumed training loads its own checkpoint after this, so the initial weights only start a new one.
        if fresh and self.initial_checkpoint:
            self._load_initial_weights(self.initial_checkpoint)

    def _load_initial_weights(self, checkpoint: str) -> None:
        """Every weight, segmentation layers included (nnU-Net's pretrained loading re-initialises those:
        it transfers to a new task; here the task is the same and training continues)."""
        weights = torch.load(checkpoint, map_location=self.device, weights_only=False)["network_weights"]
        network = self.network.module if isinstance(self.network, DistributedDataParallel) else self.network
        if isinstance(network, OptimizedModule):
            network = network._orig_mod
        network.load_state_dict(weights)
        self.print_to_log_file(f"initial weights: {checkpoint}")


class nnUNetTrainerTotalSegNoMirroring(nnUNetTrainerTotalSeg, nnUNetTrainerNoMirroring):
    """Without mirroring, in training and at inference (nnU-Net's own variant): left and right
    structures are separate classes."""


class nnUNetTrainerTotalSegNoDA(nnUNetTrainerTotalSeg, nnUNetTrainerNoDA):
    """Without data augmentation, mirroring included, in training and at inference (nnU-Net's own variant):
    patches as sampled, for a phantom whose subjects vary little and a model trained in minutes."""
