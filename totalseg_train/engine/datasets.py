"""The nnU-Net datasets of a model: one per part model, with part-local label ids from the class table.

A part is one of the class table's parts or subsets (``classes.model_parts``), or ``all``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from omegaconf import DictConfig

from totalseg_train import classes
from totalseg_train.images import NIFTI_SUFFIX

ALL = "all"  # the part name of a single model over all 104 classes


@dataclass(frozen=True)
class PartDataset:
    """One part model of an experiment and the nnU-Net dataset it trains on."""

    experiment: str
    part: str
    dataset_id: int

    @property
    def name(self) -> str:
        """nnU-Net's dataset folder name, Dataset<id>_<name>."""
        suffix = self.experiment if self.part == ALL else f"{self.experiment}_{self.part}"
        return f"Dataset{self.dataset_id:03d}_{suffix}"

    def global_ids(self) -> list[int]:
        """v1 class ids of this part, in local-id order (local id i+1 is global_ids()[i])."""
        if self.part == ALL:
            return classes.class_ids()
        return sorted(classes.part_local_ids(self.part))

    def to_local(self) -> np.ndarray:
        """Lookup table v1 id -> local id (0 for classes of other parts)."""
        lut = np.zeros(256, dtype=np.uint8)
        for local, global_id in enumerate(self.global_ids(), start=1):
            lut[global_id] = local
        return lut

    def to_global(self) -> np.ndarray:
        """Lookup table local id -> v1 id."""
        return np.array([0, *self.global_ids()], dtype=np.uint8)

    def dataset_json(self, num_training: int) -> dict:
        """nnU-Net's dataset.json; class names come from the class table."""
        labels = {"background": 0}
        labels.update({classes.by_id(g).name: local for local, g in enumerate(self.global_ids(), start=1)})
        return {
            "channel_names": {"0": "CT"},  # CT: nnU-Net's global HU percentile normalisation
            "labels": labels,
            "numTraining": num_training,
            "file_ending": NIFTI_SUFFIX,
            "name": self.name,
            "description": f"TotalSegmentator {self.experiment} model, part {self.part}",
            "v1_class_ids": self.global_ids(),
        }


def part_datasets(cfg: DictConfig) -> list[PartDataset]:
    """The datasets of every part model of the configured experiment (part i: dataset_id + i)."""
    parts = list(cfg.model.parts)
    for part in parts:
        if part != ALL and part not in classes.model_parts():
            raise ValueError(f"model.parts: unknown part {part!r}; use {ALL!r} or some of "
                             f"{', '.join(classes.model_parts())}")
    if ALL in parts and len(parts) > 1:
        raise ValueError(f"model.parts: {ALL!r} is a model of its own and cannot be combined with parts")
    if len(set(parts)) != len(parts):
        raise ValueError(f"model.parts lists a part twice: {parts}")
    return [PartDataset(str(cfg.model.name), part, int(cfg.model.dataset_id) + i) for i, part in enumerate(parts)]


def selected_datasets(cfg: DictConfig) -> list[PartDataset]:
    """The part datasets this job works on: all of them, or the one named by ``part=``."""
    datasets = part_datasets(cfg)
    if cfg.part is None:
        return datasets
    chosen = [d for d in datasets if d.part == cfg.part]
    if not chosen:
        raise ValueError(f"part={cfg.part}: the {cfg.model.name} model has parts {[d.part for d in datasets]}")
    return chosen
