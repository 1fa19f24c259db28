"""Faces made unrecognisable before a release: the CT voxels where the ``face`` class lies, grown by a margin,
blurred or replaced. Every other voxel keeps its value exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from totalseg_train import classes

METHODS = ("blur", "fill")
FACE = "face"


@dataclass(frozen=True)
class DefaceSettings:
    method: str = "blur"       # blur: Gaussian of sigma_mm inside the region; fill: fill_hu inside it
    margin_mm: float = 10.0    # the face mask grown by this much (skin, nose and ears lie just outside it)
    sigma_mm: float = 8.0
    fill_hu: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"face.method {self.method!r} is not one of {', '.join(METHODS)}")
        if self.margin_mm < 0 or self.sigma_mm <= 0:
            raise ValueError(f"face.margin_mm must be >= 0 and face.sigma_mm > 0 (got {self.margin_mm}, {self.sigma_mm})")

    @classmethod
    def from_config(cls, cfg) -> "DefaceSettings":
        return cls(str(cfg.method), float(cfg.margin_mm), float(cfg.sigma_mm), float(cfg.fill_hu))


def _box(mask: np.ndarray, pad: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``pad`` voxels per axis, within the array."""
    where = np.argwhere(mask)
    lo = np.maximum(where.min(axis=0) - pad, 0)
    hi = np.minimum(where.max(axis=0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def face_region(labels: np.ndarray, spacing_zyx: tuple[float, float, float], margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` of the face class (z, y, x); all False where the map has no face."""
    face = labels == classes.id_of(FACE)
    region = np.zeros(labels.shape, dtype=bool)
    if not face.any():
        return region
    spacing = np.asarray(spacing_zyx, dtype=float)
    box = _box(face, np.ceil(margin_mm / spacing).astype(int) + 1)
    distance = ndimage.distance_transform_edt(~face[box], sampling=spacing)
    region[box] = distance <= margin_mm
    return region


def deface(ct: np.ndarray, labels: np.ndarray, spacing_zyx: tuple[float, float, float],
           settings: DefaceSettings) -> tuple[np.ndarray, int]:
    """The CT with its face region blurred or filled, in the CT's dtype, and the number of voxels in the region.
    Voxels outside the region are the input's, unchanged."""
    region = face_region(labels, spacing_zyx, settings.margin_mm)
    n = int(region.sum())
    if n == 0:
        return ct, 0
    out = ct.copy()
    if settings.method == "fill":
        values = np.full(n, settings.fill_hu)
    else:
        sigma = settings.sigma_mm / np.asarray(spacing_zyx, dtype=float)
        box = _box(region, np.ceil(3 * sigma).astype(int) + 1)  # the filter's reach around the region
        blurred = ndimage.gaussian_filter(ct[box].astype(np.float32), sigma=sigma, mode="nearest")
        values = blurred[region[box]]
    if np.issubdtype(ct.dtype, np.integer):
        info = np.iinfo(ct.dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    out[region] = values.astype(ct.dtype)
    return out, n
