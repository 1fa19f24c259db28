"""From file records to series: grouping, slice order and the geometry facts the rules judge."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

IOP = [f"iop_{i}" for i in range(6)]
IPP = ["ipp_x", "ipp_y", "ipp_z"]

# Series-level attributes: the value of the series' first slice (they are constant in practice).
SERIES_ATTRIBUTES = (
    "patient_id", "sex", "age", "study_year", "study_key", "study_uid", "series_uid", "frame_uid", "modality",
    "image_type", "study_description", "series_description", "protocol_name", "series_number", "manufacturer",
    "model", "institution", "kvp", "kernel", "slice_thickness", "contrast_agent", "body_part", "gantry_tilt",
    "pixel_spacing_row", "pixel_spacing_col", "rows", "columns", "frames", "transfer_syntax",
)


@dataclass(frozen=True)
class StackGeometry:
    """Facts about one series' slice stack, computed from positions and orientation only."""

    n_slices: int
    positions_complete: bool
    orientation_consistent: bool
    matrix_consistent: bool
    slice_spacing: float          # median distance between neighbouring slices along the normal, mm
    spacing_deviation: float      # largest deviation of one step from the median, mm
    duplicate_positions: int
    stack_tilt_deg: float         # angle between the stack direction and the slice normal
    z_extent_mm: float
    fov_mm: float
    lateral_offset_mm: float


def slice_normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3], iop[3:6])


def stack_geometry(positions: np.ndarray, orientations: np.ndarray, matrices: np.ndarray,
                   orientation_tol: float = 1e-3) -> tuple[StackGeometry, np.ndarray]:
    """Geometry of a stack and the slice order along its normal.

    ``positions`` [n, 3] ImagePositionPatient, ``orientations`` [n, 6] ImageOrientationPatient,
    ``matrices`` [n, 4] rows, columns, row spacing, column spacing. Returns the geometry and the
    indices that sort the slices along the normal (feet to head for axial scans).
    """
    n = len(positions)
    complete = bool(np.isfinite(positions).all() and np.isfinite(orientations).all() and np.isfinite(matrices).all())
    orientation_ok = complete and bool(np.abs(orientations - orientations[0]).max(initial=0) <= orientation_tol)
    matrix_ok = complete and bool(np.abs(matrices - matrices[0]).max(initial=0) <= 1e-4)
    nan = float("nan")
    if not complete:
        return StackGeometry(n, False, orientation_ok, matrix_ok, nan, nan, 0, nan, nan, nan, nan), np.arange(n)
    normal = slice_normal(orientations[0])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    duplicates = int((np.abs(steps) < 1e-3).sum())
    moving = steps[np.abs(steps) >= 1e-3]
    spacing = float(np.median(moving)) if len(moving) else nan
    deviation = float(np.abs(moving - spacing).max()) if len(moving) else nan
    tilt = 0.0
    if n >= 2 and len(moving):
        stack = positions[order[-1]] - positions[order[0]]
        length = float(np.linalg.norm(stack))
        if length > 0:
            tilt = math.degrees(math.acos(min(1.0, abs(float(stack @ normal)) / length)))
    rows, columns, row_spacing, column_spacing = matrices[0]
    extent = float(along.max() - along.min()) + (spacing if spacing == spacing else 0.0)
    # In-plane centre of the middle slice: IPP is the centre of the first voxel.
    middle = positions[order[n // 2]]
    row_dir, col_dir = orientations[0][:3], orientations[0][3:6]
    centre = middle + row_dir * column_spacing * (columns - 1) / 2 + col_dir * row_spacing * (rows - 1) / 2
    geometry = StackGeometry(
        n_slices=n,
        positions_complete=True,
        orientation_consistent=orientation_ok,
        matrix_consistent=matrix_ok,
        slice_spacing=spacing,
        spacing_deviation=deviation,
        duplicate_positions=duplicates,
        stack_tilt_deg=tilt,
        z_extent_mm=extent,
        fov_mm=float(max(rows * row_spacing, columns * column_spacing)),
        lateral_offset_mm=abs(float(centre[0])),
    )
    return geometry, order


@dataclass
class SeriesTable:
    series: pd.DataFrame               # one row per series_key: attributes + StackGeometry fields
    files: dict[str, list[str]]        # series_key -> relative paths, in slice order


def content_hash(identifiers: list[str]) -> str:
    """Fingerprint of a series' content: changes when slices are added, removed or replaced."""
    return hashlib.sha1("\n".join(sorted(identifiers)).encode()).hexdigest()[:16]


def group_series(files: pd.DataFrame, orientation_tol: float = 1e-3) -> SeriesTable:
    """Group file records by series key (SeriesInstanceUID or its fallback) and describe each stack."""
    files = files.sort_values(["series_key", "instance_number", "path"], kind="stable")
    # The same instance exported twice (same SOPInstanceUID) is one slice.
    has_uid = files["sop_uid"] != ""
    duplicated = has_uid & files.duplicated(["series_key", "sop_uid"])
    files = files[~duplicated]
    rows, paths = [], {}
    for key, group in files.groupby("series_key", sort=True):
        geometry, order = stack_geometry(
            group[IPP].to_numpy(float), group[IOP].to_numpy(float),
            group[["rows", "columns", "pixel_spacing_row", "pixel_spacing_col"]].to_numpy(float), orientation_tol)
        ordered = group["path"].to_numpy()[order]
        paths[key] = list(ordered)
        first = group.iloc[0]
        row = {"series_key": key, **{c: first[c] for c in SERIES_ATTRIBUTES}}
        row.update(geometry.__dict__)
        row["n_files"] = len(group)
        row["content_hash"] = content_hash([u or p for u, p in zip(group["sop_uid"], group["path"])])
        rows.append(row)
    columns = ["series_key", *SERIES_ATTRIBUTES, *StackGeometry.__dataclass_fields__, "n_files", "content_hash"]
    return SeriesTable(pd.DataFrame(rows, columns=columns), paths)
