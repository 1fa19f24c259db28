"""The reference evaluation: the paper's per-class loop with DeepMind's surface-distance package.

Used as the oracle by the tests and as baseline (a) by ``make bench-eval``; ``surface-distance`` is a
test extra (pip install -e '.[test]'). As in the paper's code (TotalSegmentator resources/evaluate.py),
surface distances are only computed where the class is in both masks: with NumPy 2 the package crashes
on an empty mask. Dice is the package's ``compute_dice_coefficient`` (the paper adds 1e-6 to the
denominator, a difference below 1e-6 / (|G| + |P|)).
"""

from __future__ import annotations

import numpy as np
from surface_distance import compute_dice_coefficient, compute_surface_dice_at_tolerance, compute_surface_distances

from totalseg_train import classes


def reference_scores(
    gt: np.ndarray, pred: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float
) -> dict[int, tuple[float, float]]:
    """(Dice, NSD) of every class id, computed on full-volume masks class by class."""
    scores = {}
    for class_id in classes.class_ids():
        mask_gt = gt == class_id
        mask_pred = pred == class_id
        if mask_gt.max() and not mask_pred.max():
            scores[class_id] = (0.0, 0.0)
        elif mask_gt.max():
            distances = compute_surface_distances(mask_gt, mask_pred, list(spacing))
            scores[class_id] = (
                float(compute_dice_coefficient(mask_gt, mask_pred)),
                float(compute_surface_dice_at_tolerance(distances, tolerance_mm)),
            )
        else:
            scores[class_id] = (float("nan"), float("nan"))
    return scores
