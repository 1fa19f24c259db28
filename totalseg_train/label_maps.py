"""Reading a label map, the one policy every stage applies (export, evaluation, QA, ingest).

A label map is a 3D single-channel image of class ids: 0 = background, 1..104 = the v1 class table
(``classes.num_classes()``). Integer pixel types are taken as they are. Float maps are taken only
when every value is a whole number (some tools write labels as float); NaN, infinity and fractions
are rejected. Ids outside 0..104 are rejected, listing them. The map returned is always uint8.
Reads go through ``images.read_image``, so a cut-off file is rejected too; every error names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train import classes
from totalseg_train.images import ImageFileError, read_image, voxel_view

LABELS_VERSIONS = ("v1", "v2")
_SHOWN = 20  # bad values listed in a message


class LabelFileError(ImageFileError):
    """A label file that cannot be used; the message names the file(s) and the problem."""


@dataclass(frozen=True)
class LabelMap:
    """A uint8 label image of v1 ids and a read-only NumPy view (z, y, x) of its voxels (``images.voxel_view``)."""

    image: sitk.Image
    array: np.ndarray
    path: Path

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in reversed(self.image.GetSpacing()))


def invalid_label_ids(labels: np.ndarray, max_id: int | None = None) -> list[int | float]:
    """Values of a label array that are not background or a class id (1..``max_id``, default 104):
    negative, larger, fractional or not finite; sorted, NaN last."""
    max_id = classes.num_classes() if max_id is None else max_id
    if labels.size == 0:
        return []
    if np.issubdtype(labels.dtype, np.integer):
        if int(labels.min()) >= 0 and int(labels.max()) <= max_id:
            return []
        return [int(v) for v in np.unique(labels[(labels < 0) | (labels > max_id)])]
    with np.errstate(invalid="ignore"):  # NaN compares False everywhere; ~isfinite catches it
        bad = labels[~np.isfinite(labels) | (labels != np.rint(labels)) | (labels < 0) | (labels > max_id)]
    return [float(v) for v in np.unique(bad)]


def _describe_bad(bad: list[int | float]) -> str:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in bad[:_SHOWN])
    return f"[{shown}{', ...' if len(bad) > _SHOWN else ''}]"


def check_label_array(array: np.ndarray, path: str | Path, labels_version: str = "v1") -> np.ndarray:
    """The policy on an array read from ``path``: its v1 ids as uint8, or LabelFileError naming the file.

    ``labels_version='v2'``: TotalSegmentator v2 ``total`` ids, mapped to v1 by class name (ids of
    classes v1 does not have become background).
    """
    if labels_version not in LABELS_VERSIONS:
        raise ValueError(f"labels_version must be one of {', '.join(LABELS_VERSIONS)}, not {labels_version!r}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):  # e.g. complex
        raise LabelFileError(f"{path}: label maps hold numbers, not {array.dtype}")
    v2 = labels_version == "v2"
    bad = invalid_label_ids(array, len(classes.v2_to_v1_lut()) - 1 if v2 else None)
    if bad:
        if not np.issubdtype(array.dtype, np.integer) and not all(np.isfinite(v) and v == round(v) for v in bad):
            raise LabelFileError(f"{path}: label values must be whole numbers; the {array.dtype} map holds "
                                 f"{_describe_bad(bad)}")
        if v2:
            raise LabelFileError(f"{path}: label ids beyond the v2 'total' map: {_describe_bad(bad)}")
        raise LabelFileError(f"{path}: label ids outside the class table (0 = background, 1..{classes.num_classes()} "
                             f"= v1 classes): {_describe_bad(bad)}; convert v2 'total' maps with "
                             "totalseg_train.classes.map_v2_to_v1")
    if v2:
        return classes.map_v2_to_v1(array.astype(np.intp, copy=False))
    return array.astype(np.uint8, copy=False)


def read_label_map(path: str | Path, verify_data: bool = False, labels_version: str = "v1") -> LabelMap:
    """Read a label map under the policy of this module; LabelFileError naming the file and the problem.

    ``verify_data``: also check the gzip CRC (``images.read_image``), for files about to become
    permanent. ``labels_version``: see ``check_label_array``.
    """
    path = Path(path)
    try:
        image = read_image(path, verify_data=verify_data)
    except ImageFileError as err:
        raise LabelFileError(str(err)) from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise LabelFileError(f"{path}: expected a 3D single-channel label map, got {image.GetDimension()}D "
                             f"with {image.GetNumberOfComponentsPerPixel()} components")
    array = sitk.GetArrayViewFromImage(image)
    labels = check_label_array(array, path, labels_version)
    if labels is not array:
        converted = sitk.GetImageFromArray(labels)
        converted.CopyInformation(image)
        image = converted
    return LabelMap(image, voxel_view(image), path)
