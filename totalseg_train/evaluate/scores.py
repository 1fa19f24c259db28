"""Dice and NSD of every class of one ground-truth / prediction pair, with the paper's conventions.

Conventions of the paper's evaluation (TotalSegmentator ``resources/evaluate.py``):

* class absent from the ground truth -> Dice and NSD are NaN (left out of every mean); if the
  prediction holds it, the pair is a *false-positive class*, counted separately;
* class in the ground truth but absent from the prediction -> Dice 0 and NSD 0;
* otherwise Dice = 2|G & P| / (|G| + |P|) and NSD as DeepMind's surface-distance computes it.

All Dice values come from one joint histogram of (ground truth, prediction) ids; the surface work of a
class is restricted to the bounding box of its ground truth and prediction.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from totalseg_train import classes
from totalseg_train.evaluate.settings import evaluation_defaults
from totalseg_train.evaluate.surface import surface_dice
from totalseg_train.label_maps import invalid_label_ids

N_LABELS = classes.num_classes() + 1  # background + the class ids


def _foreground_box(gt: np.ndarray, pred: np.ndarray) -> tuple[slice, ...] | None:
    """Bounding box of every labelled voxel of either map (None when both are empty)."""
    box = []
    for axis in range(gt.ndim):
        others = tuple(a for a in range(gt.ndim) if a != axis)
        profile = np.flatnonzero(np.maximum(gt.max(axis=others), pred.max(axis=others)))
        if profile.size == 0:
            return None
        box.append(slice(int(profile[0]), int(profile[-1]) + 1))
    return tuple(box)


def _union_box(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))


def _class_boxes(labels: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Bounding box of every class id (index = id), None where absent."""
    return [None, *ndimage.find_objects(labels, max_label=N_LABELS - 1)]


def score_pair(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: tuple[float, float, float],
    tolerance_mm: float | None = None,
) -> pd.DataFrame:
    """Scores of all 104 classes for one pair of v1 label maps on the same grid (spacing per array axis).

    One row per class: class_id, class_name, part, category, gt_voxels, pred_voxels,
    intersection_voxels, dice, nsd, gt_present, pred_present, false_positive, and where the class's
    ground-truth voxels went wrong: confused_with (the other class, background aside, predicted on most of
    them; 0 when none) and confused_voxels (how many), so that a vertebra labelled as its neighbour is seen.
    """
    if tolerance_mm is None:
        tolerance_mm = float(evaluation_defaults().tolerance_mm)
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(f"need two 3D label maps of the same shape, got {gt.shape} and {pred.shape}")
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        bad = invalid_label_ids(labels)
        if bad:
            raise ValueError(f"{name}: label ids outside the class table (0..{N_LABELS - 1}): {bad}")
    gt = gt.astype(np.uint8, copy=False)
    pred = pred.astype(np.uint8, copy=False)
    spacing = tuple(float(s) for s in spacing)

    gt_voxels = np.zeros(N_LABELS, dtype=np.int64)
    pred_voxels = np.zeros(N_LABELS, dtype=np.int64)
    intersection = np.zeros(N_LABELS, dtype=np.int64)
    confused_with = np.zeros(N_LABELS, dtype=np.int64)
    confused_voxels = np.zeros(N_LABELS, dtype=np.int64)
    dice = np.full(N_LABELS, np.nan)
    nsd = np.full(N_LABELS, np.nan)

    box = _foreground_box(gt, pred)
    if box is not None:
        gt, pred = gt[box], pred[box]
        joint = np.bincount((gt.astype(np.uint16) * N_LABELS + pred).ravel(), minlength=N_LABELS * N_LABELS)
        joint = joint.reshape(N_LABELS, N_LABELS)
        gt_voxels, pred_voxels, intersection = joint.sum(axis=1), joint.sum(axis=0), np.diagonal(joint).copy()
        wrong = joint.copy()
        np.fill_diagonal(wrong, 0)
        wrong[:, 0] = 0
        confused_with = wrong.argmax(axis=1)
        confused_voxels = wrong[np.arange(N_LABELS), confused_with]  # a row of zeros gives class 0
        gt_boxes, pred_boxes = _class_boxes(gt), _class_boxes(pred)
        for c in np.flatnonzero(gt_voxels[1:]) + 1:
            if pred_voxels[c] == 0:
                dice[c] = nsd[c] = 0.0
                continue
            dice[c] = 2 * intersection[c] / (gt_voxels[c] + pred_voxels[c])
            class_box = _union_box(gt_boxes[c], pred_boxes[c])
            nsd[c] = surface_dice(gt[class_box] == c, pred[class_box] == c, spacing, tolerance_mm)

    table = [(c.id, c.name, c.part, c.category) for c in classes.all_classes()]
    ids = np.array([row[0] for row in table])
    gt_present, pred_present = gt_voxels[ids] > 0, pred_voxels[ids] > 0
    return pd.DataFrame(
        {
            "class_id": ids,
            "class_name": [row[1] for row in table],
            "part": [row[2] for row in table],
            "category": [row[3] for row in table],
            "gt_voxels": gt_voxels[ids],
            "pred_voxels": pred_voxels[ids],
            "intersection_voxels": intersection[ids],
            "dice": dice[ids],
            "nsd": nsd[ids],
            "gt_present": gt_present,
            "pred_present": pred_present,
            "false_positive": pred_present & ~gt_present,
            "confused_with": confused_with[ids],
            "confused_voxels": confused_voxels[ids],
        }
    )
