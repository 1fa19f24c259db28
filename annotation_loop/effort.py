"""How much an annotator changed: voxels, slices touched and Dice, per class, from two label maps."""

from __future__ import annotations

import numpy as np

from totalseg_train import classes

K = classes.num_classes() + 1
TOTAL = 0  # class_id of the row that sums over all classes


def correction_effort(prediction: np.ndarray, correction: np.ndarray) -> list[dict]:
    """Effort per class present in either map, plus a TOTAL row (class_id 0) for the whole subject.

    Arrays are indexed [z, y, x]; a slice is an axial slice, as annotators work. Dice is between
    the prediction and the correction of that class (1.0 when unchanged); voxels_labelled counts the
    correction's voxels of the class (all labelled voxels in the TOTAL row), the scale of the change.
    """
    if prediction.shape != correction.shape:
        raise ValueError(f"prediction {prediction.shape} and correction {correction.shape} differ in shape")
    pred = prediction.astype(np.int64, copy=False).ravel()
    corr = correction.astype(np.int64, copy=False).ravel()
    joint = np.bincount(pred * K + corr, minlength=K * K).reshape(K, K)
    in_pred, in_corr, both = joint.sum(axis=1), joint.sum(axis=0), np.diag(joint)
    changed = in_pred + in_corr - 2 * both

    diff = np.flatnonzero(pred != corr)
    z = diff // (prediction.shape[1] * prediction.shape[2])
    # Each changed voxel touches the class it had and the class it got, in its slice.
    zc = np.unique(np.concatenate([z * K + pred[diff], z * K + corr[diff]]))
    slices = np.bincount(zc % K, minlength=K)

    rows = []
    for c in np.flatnonzero((in_pred + in_corr)[1:] > 0) + 1:
        dice = 2.0 * both[c] / (in_pred[c] + in_corr[c])
        rows.append({"class_id": int(c), "voxels_changed": int(changed[c]), "slices_touched": int(slices[c]),
                     "voxels_labelled": int(in_corr[c]), "dice": float(dice)})
    rows.append({"class_id": TOTAL, "voxels_changed": int(diff.size), "slices_touched": int(np.unique(z).size),
                 "voxels_labelled": int(in_corr[1:].sum()), "dice": None})
    return rows
