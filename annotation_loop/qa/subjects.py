"""Finding the subjects of a label folder and reading their CTs, where there are any.

Label maps are read with ``totalseg_train.label_maps.read_label_map``, the policy every stage applies.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train.images import NIFTI_SUFFIX, Geometry, ImageFileError, nifti_path, read_image, subject_id_of
from totalseg_train.label_maps import LabelMap

CT_OUTSIDE_HU = -1024.0  # value for CT voxels resampled from outside the scan


def subject_ids(labels_dir: str | Path, wanted: list[str] | None = None) -> list[str]:
    """Subjects with a ``<subject_id>.nii.gz`` in ``labels_dir`` (restricted to ``wanted`` if given)."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} does not exist")
    found = sorted(subject_id_of(p) for p in labels_dir.glob(f"*{NIFTI_SUFFIX}") if not p.name.startswith("."))
    if wanted is None:
        return found
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise FileNotFoundError(f"no label file in {labels_dir} for subjects {', '.join(missing)}")
    return [s for s in found if s in set(wanted)]


def read_ct_image(label_map: LabelMap, images_dir: str | Path | None) -> sitk.Image | None:
    """The subject's CT (HU, float) resampled onto the label map's grid, or None when there is none.

    ImageFileError naming the CT when it is cut off, unreadable or not 3D.
    """
    if images_dir is None:
        return None
    path = nifti_path(images_dir, subject_id_of(label_map.path))
    if not path.exists():
        return None
    ct = read_image(path, sitk.sitkFloat32)
    if ct.GetDimension() != 3:
        raise ImageFileError(f"{path}: the CT must be a 3D image")
    if not Geometry.of_image(ct).matches(Geometry.of_image(label_map.image)):
        ct = sitk.Resample(ct, label_map.image, sitk.Transform(), sitk.sitkLinear, CT_OUTSIDE_HU, sitk.sitkFloat32)
    return ct


def read_ct_on(label_map: LabelMap, images_dir: str | Path | None) -> np.ndarray | None:
    """The subject's CT as an array on the label map's grid, or None."""
    ct = read_ct_image(label_map, images_dir)
    return None if ct is None else sitk.GetArrayFromImage(ct)
