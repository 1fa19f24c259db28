"""A trained model of an experiment: ``<paths.results>/<experiment>/model.json`` lists its part models.

The manifest names each part's nnU-Net model folder (relative to the manifest) and the v1 class ids of
its local labels, so prediction needs nothing but this folder (and the nnU-Net model folders it names).
It is the same whichever part job writes it; whether a part is trained is read from its folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from totalseg_train.atomic import write_text
from totalseg_train.engine.training import FINAL_CHECKPOINT, fold_folder, is_trained

MANIFEST = "model.json"


class UntrainedModel(RuntimeError):
    """A model some of whose part models have no final checkpoint yet."""


@dataclass(frozen=True)
class PartModel:
    part: str
    dataset: str
    folder: Path
    v1_class_ids: tuple[int, ...]

    def to_global(self) -> np.ndarray:
        """Lookup table local id -> v1 id."""
        return np.array([0, *self.v1_class_ids], dtype=np.uint8)


@dataclass(frozen=True)
class TrainedModel:
    experiment: str
    parts: tuple[PartModel, ...]
    tile_step_size: float
    directory: Path
    windows_per_batch: int  # sliding windows through the network at a time (1: nnU-Net's own predictor)

    def untrained_parts(self) -> list[str]:
        return [p.part for p in self.parts if not is_trained(p.folder)]

    def require_trained(self) -> None:
        untrained = self.untrained_parts()
        if untrained:
            raise UntrainedModel(f"{self.experiment}: part model(s) {', '.join(untrained)} are not trained yet")

    def class_ids(self) -> list[int]:
        """The v1 ids the model predicts, all parts together, sorted."""
        return sorted({i for p in self.parts for i in p.v1_class_ids})

    def trained_ns(self) -> int:
        """When its newest part finished training (final checkpoint's mtime, ns): differs once retrained or resumed."""
        return max((fold_folder(p.folder) / FINAL_CHECKPOINT).stat().st_mtime_ns for p in self.parts)


def model_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.results) / str(cfg.model.name)


def write_manifest(directory: Path, experiment: str, parts: list[PartModel], tile_step_size: float,
                   windows_per_batch: int) -> Path:
    doc = {
        "experiment": experiment,
        "tile_step_size": tile_step_size,
        "windows_per_batch": windows_per_batch,
        "parts": [{"part": p.part, "dataset": p.dataset, "folder": os.path.relpath(p.folder, directory),
                   "v1_class_ids": list(p.v1_class_ids)} for p in parts],
    }
    path = Path(directory) / MANIFEST
    write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


def read_model_manifest(model: DictConfig | str | Path) -> TrainedModel:
    """The trained model of a config (its experiment's results folder) or of a model folder / model.json."""
    path = model_dir(model) if isinstance(model, DictConfig) else Path(model)
    manifest = path if path.name == MANIFEST else path / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no trained model here (train it first: python -m totalseg_train)")
    doc = json.loads(manifest.read_text())
    parts = tuple(PartModel(p["part"], p["dataset"], (manifest.parent / p["folder"]).resolve(),
                            tuple(p["v1_class_ids"])) for p in doc["parts"])
    # Models written before windows_per_batch was recorded predicted one window at a time.
    return TrainedModel(doc["experiment"], parts, float(doc["tile_step_size"]), manifest.parent,
                        int(doc.get("windows_per_batch", 1)))
