"""Per-structure statistics of one subject, computed on arrays in one pass over the label map.

The voxels of all structures are grouped by label once (a stable counting sort of the foreground's
uint8 labels); every class's statistics then read its own contiguous run of HU values. That costs
one pass over the volume plus one pass over the foreground, instead of one boolean mask over the
whole volume per class (``reference_statistics``, TotalSegmentator's way, kept for the benchmark).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from totalseg_train import classes

COLUMNS = ["class_id", "class_name", "category", "voxels", "volume_ml", "mean_hu", "median_hu", "std_hu", "p5_hu",
           "p95_hu", "complete"]
MEASURES = ["volume_ml", "mean_hu", "median_hu", "std_hu", "p5_hu", "p95_hu"]
_PERCENTILES = (50.0, 5.0, 95.0)  # median, p5, p95


def edge_classes(labels: np.ndarray) -> set[int]:
    """Class ids that touch the first or last slice or the in-plane edge of the field of view: the scan
    cut them, so their volume is not the structure's volume."""
    faces = (labels[0], labels[-1], labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1])
    touching = np.zeros(256, dtype=bool)
    for face in faces:
        touching[np.unique(face)] = True
    return {int(i) for i in np.flatnonzero(touching) if i != classes.BACKGROUND}


def foreground_indices(flat: np.ndarray) -> np.ndarray:
    """Indices of the non-zero voxels of a flat uint8 array, in order.

    Scanned as 64-bit words first: the background of a scan is most of its voxels, and a word of 8
    background voxels is skipped at once (np.flatnonzero alone is about 8x slower on a whole body)."""
    step = 8
    usable = flat.size - flat.size % step
    words = flat[:usable].view(np.uint64)
    index = np.int32 if flat.size < np.iinfo(np.int32).max else np.int64  # halves the index arrays' memory
    candidates = (np.flatnonzero(words).astype(index)[:, None] * step + np.arange(step, dtype=index)).ravel()
    tail = np.arange(usable, flat.size, dtype=index)
    candidates = np.concatenate([candidates, tail])
    return candidates[flat[candidates] != 0]


def _row(class_id: int, values: np.ndarray, voxel_ml: float, complete: bool) -> dict:
    cls = classes.by_id(class_id)
    median, p5, p95 = np.percentile(values, _PERCENTILES)
    return {"class_id": class_id, "class_name": cls.name, "category": cls.category, "voxels": int(values.size),
            "volume_ml": values.size * voxel_ml, "mean_hu": float(values.mean()), "median_hu": float(median),
            "std_hu": float(values.std()), "p5_hu": float(p5), "p95_hu": float(p95), "complete": complete}


def _table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS).astype({"class_id": int, "voxels": np.int64, "complete": bool})


def structure_statistics(labels: np.ndarray, hu: np.ndarray, spacing_zyx: Sequence[float]) -> pd.DataFrame:
    """One row per class present in ``labels`` (uint8 v1 ids, z-y-x): voxels, volume (ml), mean, median,
    std, 5th and 95th percentile of ``hu`` (same shape) and ``complete`` (not cut by the scan's edge)."""
    if labels.shape != hu.shape:
        raise ValueError(f"labels {labels.shape} and image {hu.shape} differ in shape")
    flat = np.ascontiguousarray(labels).ravel()
    foreground = foreground_indices(flat)
    fg_labels = flat[foreground]
    order = np.argsort(fg_labels, kind="stable")  # a counting sort for uint8 keys: O(n)
    values = hu.ravel()[foreground[order]].astype(np.float64)
    counts = np.bincount(fg_labels, minlength=classes.num_classes() + 1)
    ends = np.cumsum(counts)
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    cut = edge_classes(labels)
    rows = [_row(int(i), values[ends[i] - counts[i]:ends[i]], voxel_ml, int(i) not in cut)
            for i in np.flatnonzero(counts) if i != classes.BACKGROUND]
    return _table(rows)


def reference_statistics(labels: np.ndarray, hu: np.ndarray, spacing_zyx: Sequence[float]) -> pd.DataFrame:
    """The same table the plain way: one boolean mask over the whole volume per class (TotalSegmentator's
    ``get_basic_statistics`` loop). For the benchmark and as the tests' independent check."""
    voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
    cut = edge_classes(labels)
    rows = []
    for class_id in classes.class_ids():
        mask = labels == class_id
        if mask.any():
            rows.append(_row(class_id, hu[mask].astype(np.float64), voxel_ml, class_id not in cut))
    return _table(rows)
