"""Reading a ground-truth / prediction pair of label files and scoring it (the per-subject I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from totalseg_train.evaluate.scores import invalid_label_ids, score_pair
from totalseg_train.images import Geometry


class LabelFileError(ValueError):
    """A label file that cannot be evaluated; the message names the file(s) and the problem."""


@dataclass(frozen=True)
class LabelMap:
    """A label image and a NumPy view (z, y, x) of its voxels; the view is valid while the image lives."""

    image: sitk.Image
    array: np.ndarray
    path: Path

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in reversed(self.image.GetSpacing()))


def read_label_map(path: str | Path) -> LabelMap:
    """Read a v1 label map; LabelFileError if it is not a 3D map of class ids of the table."""
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise LabelFileError(f"{path}: cannot read the label map ({str(err).strip().splitlines()[-1]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelFileError(f"{path}: expected a 3D single-channel label map, got {image.GetDimension()}D "
                             f"with {image.GetNumberOfComponentsPerPixel()} components")
    array = sitk.GetArrayViewFromImage(image)
    bad = invalid_label_ids(array)
    if bad:
        shown = ", ".join(str(v) for v in bad[:20]) + (" ..." if len(bad) > 20 else "")
        raise LabelFileError(f"{path}: label ids outside the class table (0 = background, 1..104 = v1 classes): "
                             f"{shown}; convert v2 'total' maps with totalseg_train.classes.map_v2_to_v1")
    return LabelMap(image, array, path)


def _describe(geometry: Geometry) -> str:
    direction = ", ".join(f"{v:.3g}" for v in geometry.direction)
    return f"{geometry.describe()}, direction ({direction})"


def resample_like(labels: LabelMap, reference: LabelMap) -> LabelMap:
    """``labels`` resampled onto the grid of ``reference`` with nearest neighbour."""
    image = sitk.Resample(labels.image, reference.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                          labels.image.GetPixelID())
    return LabelMap(image, sitk.GetArrayViewFromImage(image), labels.path)


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
