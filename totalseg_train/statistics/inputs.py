"""Reading one subject's label map and image for statistics, and refusing what cannot be measured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train.images import Geometry, ImageFileError, read_image
from totalseg_train.label_maps import read_label_map


class StatisticsInputError(ValueError):
    """A subject that cannot be measured; the message names the file and the problem."""


@dataclass(frozen=True)
class HuCheck:
    """An image is taken as CT in Hounsfield units when a corner of the volume holds air."""

    corner_voxels: int = 3        # edge of the cube at each of the 8 corners
    air_below_hu: float = -900.0  # a corner whose median is at most this is air (or the scanner's padding)

    def problem(self, hu: np.ndarray) -> str | None:
        """None for an HU image, else why not."""
        k = max(1, int(self.corner_voxels))
        medians = [float(np.median(hu[z, y, x])) for z in (slice(0, k), slice(-k, None))
                   for y in (slice(0, k), slice(-k, None)) for x in (slice(0, k), slice(-k, None))]
        if min(medians) <= self.air_below_hu:
            return None
        return (f"not a CT in Hounsfield units: no corner holds air (corner medians {min(medians):.0f} to "
                f"{max(medians):.0f}, air is at most {self.air_below_hu:g}); an MR or a rescaled image?")


@dataclass(frozen=True)
class SubjectVolumes:
    labels: np.ndarray          # uint8 v1 ids, z-y-x
    hu: np.ndarray              # same shape
    spacing_zyx: tuple[float, float, float]
    label_image: sitk.Image     # kept for radiomics, which reads images
    image: sitk.Image


def read_subject(labels_path: Path, image_path: Path, hu_check: HuCheck) -> SubjectVolumes:
    """Label map and image of one subject, on the same grid and in HU; StatisticsInputError otherwise."""
    try:
        label_map = read_label_map(labels_path)
        image = read_image(image_path)
    except ImageFileError as err:
        raise StatisticsInputError(str(err)) from None
    label_grid, image_grid = Geometry.of_image(label_map.image), Geometry.of_image(image)
    if not label_grid.matches(image_grid):
        raise StatisticsInputError(f"{labels_path}: label map on another grid than its image {image_path} "
                                   f"(labels {label_grid.describe()}; image {image_grid.describe()})")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise StatisticsInputError(f"{image_path}: {image.GetNumberOfComponentsPerPixel()} components per voxel, "
                                   "not a CT")
    hu = sitk.GetArrayViewFromImage(image)
    problem = hu_check.problem(hu)
    if problem:
        raise StatisticsInputError(f"{image_path}: {problem}")
    return SubjectVolumes(label_map.array, hu, label_map.spacing_zyx, label_map.image, image)
