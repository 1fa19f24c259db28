"""Scoring a ground-truth / prediction pair of label files (the per-subject I/O); both are read under
the one label-map policy of ``totalseg_train.label_maps``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from totalseg_train.evaluate.scores import score_pair
from totalseg_train.images import Geometry, voxel_view
from totalseg_train.label_maps import LabelFileError, LabelMap, read_label_map


def _describe(geometry: Geometry) -> str:
    direction = ", ".join(f"{v:.3g}" for v in geometry.direction)
    return f"{geometry.describe()}, direction ({direction})"


def resample_like(labels: LabelMap, reference: LabelMap) -> LabelMap:
    """``labels`` resampled onto the grid of ``reference`` with nearest neighbour."""
    image = sitk.Resample(labels.image, reference.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                          labels.image.GetPixelID())
    return LabelMap(image, voxel_view(image), labels.path)


def aligned_prediction(gt: LabelMap, pred: LabelMap, resample: bool) -> LabelMap:
    """The prediction on the ground truth's grid: as is, resampled, or LabelFileError naming both files."""
    gt_geometry, pred_geometry = Geometry.of_image(gt.image), Geometry.of_image(pred.image)
    if gt_geometry.matches(pred_geometry):
        return pred
    if resample:
        return resample_like(pred, gt)
    raise LabelFileError(
        f"{pred.path} does not lie on the grid of its ground truth {gt.path}: prediction "
        f"{_describe(pred_geometry)}; ground truth {_describe(gt_geometry)}. "
        "Fix the prediction or pass resample=true to resample it (nearest neighbour)."
    )


def score_files(gt_path: str | Path, pred_path: str | Path | None, tolerance_mm: float, resample: bool) -> pd.DataFrame:
    """Scores of one subject's files; a missing prediction (None or no file) scores 0 for every present class.

    Adds the column prediction_missing to score_pair's table.
    """
    gt = read_label_map(gt_path)
    missing = pred_path is None or not Path(pred_path).exists()
    if missing:
        scores = score_pair(gt.array, np.zeros_like(gt.array), gt.spacing_zyx, tolerance_mm)
    else:
        pred = aligned_prediction(gt, read_label_map(pred_path), resample)  # keeps the image behind the view
        scores = score_pair(gt.array, pred.array, gt.spacing_zyx, tolerance_mm)
    scores["prediction_missing"] = missing
    return scores
