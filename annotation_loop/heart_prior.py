"""The heart model's sub-parts in what annotators are handed.

``python -m data_prep.heart_transfer.apply`` predicts the six heart sub-part classes of every curated
subject into ``bootstrap.heart_predictions`` (``${paths.heart}/predicted``; null or an absent folder:
off), indexed by ``totalseg_train.heart_predictions``. The loop uses them in what it hands out, never
in final labels:

- the first subjects, drawn from scratch, start from a label map holding the heart prediction
  (``write_start_map``, by ``start``);
- each round's predictions take their heart classes from the heart model: the round model's heart
  voxels are cleared, then the heart model's are written (``give_heart``, by the round's ``heart`` step).

Each use is recorded in the ledger (``heart_priors``), so that ingest measures the correction against
what the annotator was given and the round report shows what the heart model saved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from omegaconf import DictConfig

from totalseg_train.heart_predictions import heart_class_ids, read_index
from totalseg_train.images import Geometry, write_image
from totalseg_train.label_maps import LabelFileError, LabelMap, read_label_map

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeartPrediction:
    subject_id: str
    model: str
    file: Path


def heart_predictions(cfg: DictConfig) -> dict[str, HeartPrediction]:
    """subject_id -> the heart model's prediction, for every indexed subject whose file exists; {} when off."""
    folder = cfg.bootstrap.get("heart_predictions")
    if not folder or not Path(folder).is_dir():
        return {}
    index = read_index(folder)
    return {row.subject_id: HeartPrediction(row.subject_id, row.model, Path(folder) / row.file)
            for row in index.itertuples() if (Path(folder) / row.file).is_file()}


def with_heart(labels: np.ndarray, heart: np.ndarray) -> np.ndarray:
    """``labels`` with its heart sub-part voxels cleared, then the heart sub-part voxels of ``heart`` written."""
    ids = heart_class_ids()
    out = np.where(np.isin(labels, ids), 0, labels).astype(np.uint8)
    given = np.isin(heart, ids)
    out[given] = heart[given]
    return out


def _heart_on_grid(prediction: HeartPrediction, geometry: Geometry, target: Path) -> LabelMap | None:
    """The heart prediction, or None (logged, naming both files) when it is unreadable or lies on another
    grid than ``target``'s (an image curated again since the heart model ran: run apply again)."""
    try:
        heart = read_label_map(prediction.file)
    except LabelFileError as err:
        log.warning("no heart prior for %s: %s", prediction.subject_id, err)
        return None
    if not Geometry.of_image(heart.image).matches(geometry):
        log.warning("no heart prior for %s: %s lies on another grid (%s) than %s (%s); run "
                    "python -m data_prep.heart_transfer.apply again", prediction.subject_id, prediction.file,
                    Geometry.of_image(heart.image).describe(), target, geometry.describe())
        return None
    return heart


def write_start_map(prediction: HeartPrediction, image: Path, out: Path) -> bool:
    """Write the label map an annotator starts from: the heart prediction alone, on the image's grid.
    False (nothing written) when the prediction cannot be used."""
    geometry = Geometry.of_file(image)
    heart = _heart_on_grid(prediction, geometry, image)
    if heart is None:
        return False
    start = sitk.GetImageFromArray(with_heart(np.zeros_like(heart.array), heart.array))
    start.CopyInformation(heart.image)  # the image's grid: checked above
    write_image(start, out)
    return True


def give_heart(prediction: HeartPrediction, label_file: Path) -> bool:
    """Replace the heart sub-parts of a round's prediction (``label_file``, rewritten in place) by the heart
    model's. Doing it again gives the same file, so a killed step is simply repeated. False when the heart
    prediction cannot be used (the file is left as it is)."""
    labels = read_label_map(label_file)
    heart = _heart_on_grid(prediction, Geometry.of_image(labels.image), label_file)
    if heart is None:
        return False
    merged = sitk.GetImageFromArray(with_heart(labels.array, heart.array))
    merged.CopyInformation(labels.image)
    write_image(merged, label_file)
    return True
