"""Reading and writing NIfTI volumes with SimpleITK, atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train.atomic import atomic_path


def write_image(image: sitk.Image, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def image_from_array(
    array_zyx: np.ndarray,
    spacing_xyz: tuple[float, float, float],
    origin_xyz: tuple[float, float, float],
    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin_xyz])
    image.SetDirection([float(d) for d in direction])
    return image


@dataclass(frozen=True)
class Geometry:
    """Size, spacing, origin and direction of an image: what two label maps must share to be compared."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    @classmethod
    def of_image(cls, image: sitk.Image) -> "Geometry":
        return cls(image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())

    @classmethod
    def of_file(cls, path: str | Path) -> "Geometry":
        """Read from the header only, without loading the voxels."""
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return cls(reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())

    def matches(self, other: "Geometry", tol: float = 1e-3) -> bool:
        return (
            self.size == other.size
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def describe(self) -> str:
        spacing = ", ".join(f"{v:.3g}" for v in self.spacing)
        origin = ", ".join(f"{v:.1f}" for v in self.origin)
        return f"size {self.size}, spacing ({spacing}), origin ({origin})"


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-3) -> bool:
    """True when two images share size, spacing, origin and direction (within ``tol``)."""
    return Geometry.of_image(a).matches(Geometry.of_image(b), tol)
