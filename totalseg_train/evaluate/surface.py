"""Normalized surface distance (surface Dice) with the exact definition of DeepMind's surface-distance.

The reference (``surface_distance.compute_surface_distances`` and ``compute_surface_dice_at_tolerance``)
defines, for a 3D mask zero-padded on every side (so a structure touching the edge of the volume has a
surface there):

* surface elements on the *corner grid* between voxels: the corner between voxels i-1 and i (per axis)
  carries the 8-bit code of its 2x2x2 neighbourhood; codes 0 and 255 are no surface, every other code
  is a surfel whose area comes from a marching-cubes table of normals scaled by the spacing;
* the distance of a surfel to the other surface: scipy's ``distance_transform_edt`` with the spacing as
  sampling, i.e. ``sqrt((d0*s0)**2 + (d1*s1)**2 + (d2*s2)**2)`` for the integer corner offset d to the
  nearest surfel corner of the other mask;
* NSD = (area of the surfels of either mask within the tolerance of the other surface) / (total area).

The reference runs both distance transforms on the bounding box of the union. Here the same numbers come
from the surfel lists alone: every surfel of a mask lies within one corner of its bounding box, distances
only depend on offsets, and a surfel is within the tolerance exactly when a surfel of the other mask sits
at one of the integer offsets whose distance (computed with the reference's floating-point expression)
is <= the tolerance. So the work is a few array passes over the class's box plus table look-ups.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib import resources

import numpy as np

@lru_cache(maxsize=1)
def _surfel_normals() -> tuple[np.ndarray, np.ndarray]:
    """(code per normal, normals (n, 3)) of the 256 neighbourhood codes, from the reference's table."""
    with resources.files("totalseg_train").joinpath("data/surfel_normals.csv").open() as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    codes = np.array([int(r["code"]) for r in rows], dtype=np.intp)
    normals = np.array([[float(r["n0"]), float(r["n1"]), float(r["n2"])] for r in rows])
    return codes, normals


@lru_cache(maxsize=32)
def surfel_area_table(spacing: tuple[float, float, float]) -> np.ndarray:
    """Area in mm^2 of the surface elements of each of the 256 neighbourhood codes at this spacing."""
    s0, s1, s2 = (float(s) for s in spacing)
    codes, normals = _surfel_normals()
    areas = np.linalg.norm(normals * np.array([s1 * s2, s0 * s2, s0 * s1]), axis=1)
    table = np.zeros(256)
    np.add.at(table, codes, areas)
    return table


def neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """2x2x2 neighbourhood code of every corner of a zero-padded 3D mask (shape + 1 per axis).

    Bit order as the reference's kernel: the voxel at (i-1, j-1, k-1) of corner (i, j, k) is bit 7,
    the voxel at (i, j, k) bit 0.
    """
    padded = np.zeros(tuple(n + 2 for n in mask.shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = mask
    code = (padded[:, :, :-1] << 1) | padded[:, :, 1:]
    code = (code[:, :-1] << 2) | code[:, 1:]
    return (code[:-1] << 4) | code[1:]


@lru_cache(maxsize=32)
def tolerance_offsets(spacing: tuple[float, float, float], tolerance_mm: float) -> np.ndarray:
    """Integer corner offsets whose distance is <= tolerance, nearest first (n, 3).

    The distance is computed with the same floating-point expression as scipy's distance transform
    (products with the spacing, squared, summed over axes in order, square root), so that a surfel
    exactly at the tolerance is counted the same way as by the reference.
    """
    if tolerance_mm < 0:
        raise ValueError(f"tolerance must be >= 0 mm, got {tolerance_mm}")
    # One extra step per axis so that rounding in tolerance / spacing never loses an offset.
    reach = [int(np.floor(tolerance_mm / s)) + 1 for s in spacing]
    grid = np.mgrid[tuple(slice(-r, r + 1) for r in reach)].reshape(3, -1)
    scaled = grid.astype(np.float64) * np.asarray(spacing, dtype=np.float64)[:, None]
    distance = np.sqrt(np.add.reduce(scaled * scaled, axis=0))
    inside = distance <= tolerance_mm
    order = np.argsort(distance[inside], kind="stable")
    return np.ascontiguousarray(grid[:, inside][:, order].T)


def _within_tolerance(queries: np.ndarray, targets: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """For flat indices ``queries`` into the flat boolean grid ``targets``: is a target at any offset?"""
    hit = np.zeros(queries.size, dtype=bool)
    pending = np.arange(queries.size)
    for offset in offsets:
        found = targets[queries[pending] + offset]
        if found.any():
            hit[pending[found]] = True
            pending = pending[~found]
            if pending.size == 0:
                break
    return hit


def surface_dice(
    mask_gt: np.ndarray, mask_pred: np.ndarray, spacing: tuple[float, float, float], tolerance_mm: float
) -> float:
    """Surface Dice at ``tolerance_mm`` of two boolean masks of the same shape (spacing per array axis).

    The masks may be crops of larger volumes as long as the crop holds every voxel of both masks:
    the result is then identical to the reference's on the full volumes. NaN when both are empty.
    """
    if mask_gt.shape != mask_pred.shape or mask_gt.ndim != 3:
        raise ValueError(f"need two 3D masks of the same shape, got {mask_gt.shape} and {mask_pred.shape}")
    spacing = tuple(float(s) for s in spacing)
    offsets = tolerance_offsets(spacing, float(tolerance_mm))
    reach = np.abs(offsets).max(axis=0)
    areas = surfel_area_table(spacing)

    code_gt = neighbour_codes(mask_gt)
    code_pred = neighbour_codes(mask_pred)
    # Corner grids with a margin of the tolerance's reach, so that every offset look-up stays inside.
    grid_shape = tuple(int(n + 2 * r) for n, r in zip(code_gt.shape, reach))
    inner = tuple(slice(int(r), int(r + n)) for n, r in zip(code_gt.shape, reach))
    strides = np.array([grid_shape[1] * grid_shape[2], grid_shape[2], 1])
    flat_offsets = offsets @ strides

    surfel_grids, surfel_indices, surfel_areas = [], [], []
    for code in (code_gt, code_pred):
        is_surfel = (code != 0) & (code != 255)  # neighbourhood all outside or all inside: no surface
        grid = np.zeros(grid_shape, dtype=bool)
        grid[inner] = is_surfel
        grid = grid.ravel()
        surfel_grids.append(grid)
        surfel_indices.append(np.flatnonzero(grid))  # C order, the same order as code[is_surfel]
        surfel_areas.append(areas[code[is_surfel]])

    total = surfel_areas[0].sum() + surfel_areas[1].sum()
    if total == 0:
        return float("nan")
    overlap_gt = surfel_areas[0][_within_tolerance(surfel_indices[0], surfel_grids[1], flat_offsets)].sum()
    overlap_pred = surfel_areas[1][_within_tolerance(surfel_indices[1], surfel_grids[0], flat_offsets)].sum()
    return float((overlap_gt + overlap_pred) / total)
