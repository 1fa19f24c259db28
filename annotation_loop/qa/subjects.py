"""Finding and reading the subjects of a label folder (and their CTs, where there are any)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from annotation_loop.qa.meshing import VoxelGrid
from totalseg_train import classes
from totalseg_train.images import Geometry

SUFFIX = ".nii.gz"
CT_OUTSIDE_HU = -1024.0  # value for CT voxels resampled from outside the scan


class SubjectError(ValueError):
    """A subject's input is unusable; the message names the file and the problem."""


@dataclass
class LabelMap:
    subject_id: str
    path: Path
    labels: np.ndarray  # (z, y, x) uint8 v1 class ids
    grid: VoxelGrid
    image: sitk.Image  # the label image (geometry reference)


def subject_ids(labels_dir: str | Path, wanted: list[str] | None = None) -> list[str]:
    """Subjects with a ``<subject_id>.nii.gz`` in ``labels_dir`` (restricted to ``wanted`` if given)."""
    labels_dir = Path(labels_dir)
    if not labels_dir.is_dir():
        raise FileNotFoundError(f"labels folder {labels_dir} does not exist")
    found = sorted(p.name[: -len(SUFFIX)] for p in labels_dir.glob(f"*{SUFFIX}") if not p.name.startswith("."))
    if wanted is None:
        return found
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise FileNotFoundError(f"no label file in {labels_dir} for subjects {', '.join(missing)}")
    return [s for s in found if s in set(wanted)]


def read_label_map(path: str | Path, labels_version: str = "v1") -> LabelMap:
    """A label map as v1 class ids; ``labels_version='v2'`` maps TotalSegmentator v2 ``total`` ids by name."""
    path = Path(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise SubjectError(f"{path}: cannot read the label map ({str(exc).strip().splitlines()[-1]})") from exc
    if image.GetNumberOfComponentsPerPixel() != 1 or image.GetDimension() != 3:
        raise SubjectError(f"{path}: a label map must be a 3D single-channel image")
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.array_equal(array, np.round(array)):
            raise SubjectError(f"{path}: label values must be whole numbers, found {array.dtype} fractions")
        array = array.astype(np.int32)
    if array.size and array.min() < 0:
        raise SubjectError(f"{path}: negative label value {int(array.min())}")
    if labels_version == "v2":
        array = classes.map_v2_to_v1(array.astype(np.int64))
    elif labels_version != "v1":
        raise ValueError(f"labels_version must be v1 or v2, not {labels_version!r}")
    elif array.size and array.max() > classes.num_classes():
        raise SubjectError(
            f"{path}: label {int(array.max())} is not a v1 class id (1..{classes.num_classes()}); "
            "for TotalSegmentator v2 label maps set labels_version=v2"
        )
    return LabelMap(path.name[: -len(SUFFIX)], path, array.astype(np.uint8), VoxelGrid.of_image(image), image)


def read_ct_image(label_map: LabelMap, images_dir: str | Path | None) -> sitk.Image | None:
    """The subject's CT (HU, float) resampled onto the label map's grid, or None when there is none."""
    if images_dir is None:
        return None
    path = Path(images_dir) / f"{label_map.subject_id}{SUFFIX}"
    if not path.exists():
        return None
    try:
        ct = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as exc:
        raise SubjectError(f"{path}: cannot read the CT ({str(exc).strip().splitlines()[-1]})") from exc
    if ct.GetDimension() != 3:
        raise SubjectError(f"{path}: the CT must be a 3D image")
    if not Geometry.of_image(ct).matches(Geometry.of_image(label_map.image)):
        ct = sitk.Resample(ct, label_map.image, sitk.Transform(), sitk.sitkLinear, CT_OUTSIDE_HU, sitk.sitkFloat32)
    return ct


def read_ct_on(label_map: LabelMap, images_dir: str | Path | None) -> np.ndarray | None:
    """The subject's CT as an array on the label map's grid, or None."""
    ct = read_ct_image(label_map, images_dir)
    return None if ct is None else sitk.GetArrayFromImage(ct)


def v1_label_image(label_map: LabelMap) -> sitk.Image:
    """The label map (v1 ids) as an image with the file's geometry."""
    image = sitk.GetImageFromArray(label_map.labels)
    image.CopyInformation(label_map.image)
    return image
