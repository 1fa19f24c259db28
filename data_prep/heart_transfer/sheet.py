"""The QC sheet of one pair: the native scan with the transferred contours beside the contrast scan with its labels.

Axial and coronal slices through the heart, cropped to the heart's region, in the radiologists'
orientation (the patient's right on the viewer's left, anterior and head up), each class outlined in
its colour from the class table. A reviewer sees at a glance whether the outlines sit on the native
heart as they sit on the contrast one.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402

from totalseg_train import classes  # noqa: E402
from totalseg_train.atomic import atomic_path  # noqa: E402

WINDOW = (-160.0, 240.0)  # soft-tissue window (level 40, width 400)
MARGIN_VOXELS = 8


def _display_array(image: sitk.Image) -> np.ndarray:
    """Voxels as [z, y, x] flipped so that x runs to the patient's left, y to posterior, z to the head."""
    array = sitk.GetArrayFromImage(image)
    signs = np.sign(np.diag(np.reshape(image.GetDirection(), (3, 3))))
    for axis, sign in zip((2, 1, 0), signs):  # direction columns are x, y, z; array axes are z, y, x
        if sign < 0:
            array = np.flip(array, axis)
    return array


def _slices(ct: np.ndarray, labels: np.ndarray, center: np.ndarray, box: tuple[slice, slice, slice]):
    """(axial CT, axial labels), (coronal CT, coronal labels) through ``center`` inside ``box``; coronal head up."""
    z, y, _ = center
    zs, ys, xs = box
    axial = (ct[z, ys, xs], labels[z, ys, xs])
    coronal = (ct[zs, y, xs][::-1], labels[zs, y, xs][::-1])
    return axial, coronal


def _heart_box(labels: np.ndarray) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    idx = np.argwhere(labels > 0)
    low = np.maximum(idx.min(axis=0) - MARGIN_VOXELS, 0)
    high = np.minimum(idx.max(axis=0) + MARGIN_VOXELS + 1, labels.shape)
    center = np.round(idx.mean(axis=0)).astype(int)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high)), center


def _panel(ax, ct: np.ndarray, labels: np.ndarray, aspect: float, title: str) -> None:
    ax.imshow(np.clip(ct, *WINDOW), cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=aspect,
              interpolation="nearest")
    for class_id in np.unique(labels):
        if class_id == 0:
            continue
        colour = np.array(classes.class_colour(int(class_id))) / 255.0
        ax.contour(labels == class_id, levels=[0.5], colors=[colour], linewidths=1.2)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    h, w = ct.shape
    ax.text(2, h / 2, "R", color="yellow", fontsize=8, va="center")
    ax.text(w - 3, h / 2, "L", color="yellow", fontsize=8, va="center", ha="right")


def write_pair_sheet(path: Path, thumb: Path, native: sitk.Image, native_labels: sitk.Image, contrast: sitk.Image,
                     contrast_labels: sitk.Image, title: str, finding: str) -> None:
    """Write the sheet (and its thumbnail) of one pair; ``finding``: the QC flag's reason, or ''."""
    n_ct, n_lab = _display_array(native), _display_array(native_labels)
    c_ct, c_lab = _display_array(contrast), _display_array(contrast_labels)
    n_box, n_center = _heart_box(n_lab)
    c_box, c_center = _heart_box(c_lab)
    sx, sy, sz = native.GetSpacing()
    fig, axes = plt.subplots(2, 2, figsize=(8, 8.6))
    for col, (ct, lab, box, center, name) in enumerate((
            (n_ct, n_lab, n_box, n_center, "native + transferred labels"),
            (c_ct, c_lab, c_box, c_center, "contrast + its labels"))):
        (a_ct, a_lab), (k_ct, k_lab) = _slices(ct, lab, center, box)
        _panel(axes[0, col], a_ct, a_lab, sy / sx, f"{name}, axial")
        _panel(axes[1, col], k_ct, k_lab, sz / sx, "coronal")
    fig.suptitle(title + (f"\nQC: {finding}" if finding else ""), fontsize=10, color="red" if finding else "black")
    fig.tight_layout()
    for target, dpi in ((path, 100), (thumb, 30)):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
