"""TotalSegmentator's public dataset layout, shared by import, release and the prediction command's masks.

``<root>/<image_id>/ct.nii.gz``, ``<root>/<image_id>/segmentations/<class_name>.nii.gz`` (one 0/1 mask per
class, every class present as a file even when empty) and a semicolon-separated ``<root>/meta.csv``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train import classes
from totalseg_train.atomic import atomic_path
from totalseg_train.images import NIFTI_SUFFIX, read_image, write_image

CT_FILE = "ct.nii.gz"
SEGMENTATIONS = "segmentations"
META_FILE = "meta.csv"
META_SEPARATOR = ";"


def ct_path(root: str | Path, image_id: str) -> Path:
    return Path(root) / image_id / CT_FILE


def segmentations_dir(root: str | Path, image_id: str) -> Path:
    return Path(root) / image_id / SEGMENTATIONS


def mask_name(path: Path) -> str:
    """The class name a mask file is named for."""
    return path.name[: -len(NIFTI_SUFFIX)]


def class_masks(labels: np.ndarray, class_ids: list[int]) -> dict[int, np.ndarray]:
    """One uint8 0/1 mask per class id, empty ones included."""
    return {c: (labels == c).astype(np.uint8) for c in class_ids}


def write_masks(label_file: Path, class_ids: list[int], folder: Path) -> None:
    """``<folder>/<class_name>.nii.gz`` for every class, on the label map's grid; the folder appears whole."""
    label = read_image(label_file)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for class_id, mask in class_masks(sitk.GetArrayFromImage(label), class_ids).items():
            image = sitk.GetImageFromArray(mask)
            image.CopyInformation(label)
            write_image(image, tmp / f"{classes.by_id(class_id).name}{NIFTI_SUFFIX}")
