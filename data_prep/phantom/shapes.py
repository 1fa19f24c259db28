"""Parametric shapes in patient coordinates (mm) and their rasterisation onto a voxel grid.

Every shape answers two questions: its axis-aligned bounds, and which points lie inside.
Rasterisation only evaluates the voxels inside the bounds, so a cohort of whole-body
phantoms costs little more than the voxels the structures actually cover.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Bounds = tuple[np.ndarray, np.ndarray]


class Shape(Protocol):
    def bounds(self) -> Bounds: ...

    def contains(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray: ...


def rotation(rx_deg: float = 0.0, ry_deg: float = 0.0, rz_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx (angles in degrees)."""
    ax, ay, az = np.deg2rad([rx_deg, ry_deg, rz_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _local(x, y, z, center: np.ndarray, rot: np.ndarray):
    """Coordinates of (x, y, z) in a frame centred at ``center`` with axes ``rot``'s columns."""
    dx, dy, dz = x - center[0], y - center[1], z - center[2]
    return (
        rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
        rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
        rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz,
    )


def _rotated_box(center: np.ndarray, half: np.ndarray, rot: np.ndarray) -> Bounds:
    extent = np.abs(rot) @ half
    return center - extent, center + extent


@dataclass
class Ellipsoid:
    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def bounds(self) -> Bounds:
        return _rotated_box(np.asarray(self.center, float), np.asarray(self.radii, float), self.rot)

    def contains(self, x, y, z):
        lx, ly, lz = _local(x, y, z, self.center, self.rot)
        rx, ry, rz = self.radii
        return (lx / rx) ** 2 + (ly / ry) ** 2 + (lz / rz) ** 2 <= 1.0


@dataclass
class Cylinder:
    """Elliptic cylinder along the local z axis."""

    center: np.ndarray
    radii: np.ndarray  # (rx, ry)
    half_height: float
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))

    def bounds(self) -> Bounds:
        half = np.array([self.radii[0], self.radii[1], self.half_height], float)
        return _rotated_box(np.asarray(self.center, float), half, self.rot)

    def contains(self, x, y, z):
        lx, ly, lz = _local(x, y, z, self.center, self.rot)
        return ((lx / self.radii[0]) ** 2 + (ly / self.radii[1]) ** 2 <= 1.0) & (np.abs(lz) <= self.half_height)


@dataclass
class Tube:
    """Union of capsules along a polyline: vessels, bowel, ribs, long bones."""

    points: np.ndarray  # (n, 3)
    radius: float

    def bounds(self) -> Bounds:
        pts = np.asarray(self.points, float)
        return pts.min(axis=0) - self.radius, pts.max(axis=0) + self.radius

    def contains(self, x, y, z):
        pts = np.asarray(self.points, float)
        inside = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y), np.shape(z)), dtype=bool)
        r2 = self.radius**2
        for a, b in zip(pts[:-1], pts[1:]):
            ab = b - a
            denom = float(ab @ ab) or 1.0
            t = ((x - a[0]) * ab[0] + (y - a[1]) * ab[1] + (z - a[2]) * ab[2]) / denom
            t = np.clip(t, 0.0, 1.0)
            d2 = (x - a[0] - t * ab[0]) ** 2 + (y - a[1] - t * ab[1]) ** 2 + (z - a[2] - t * ab[2]) ** 2
            inside |= d2 <= r2
        return inside


@dataclass
class Union:
    parts: list

    def bounds(self) -> Bounds:
        lows, highs = zip(*(p.bounds() for p in self.parts))
        return np.min(lows, axis=0), np.max(highs, axis=0)

    def contains(self, x, y, z):
        inside = self.parts[0].contains(x, y, z)
        for p in self.parts[1:]:
            inside = inside | p.contains(x, y, z)
        return inside


@dataclass
class Clip:
    """The part of ``shape`` on the positive side of every plane (point, normal)."""

    shape: object
    planes: list[tuple[np.ndarray, np.ndarray]]

    def bounds(self) -> Bounds:
        return self.shape.bounds()

    def contains(self, x, y, z):
        inside = self.shape.contains(x, y, z)
        for point, normal in self.planes:
            inside = inside & ((x - point[0]) * normal[0] + (y - point[1]) * normal[1] + (z - point[2]) * normal[2] >= 0)
        return inside


@dataclass
class Shell:
    """An ellipsoid minus a concentric ellipsoid scaled by ``inner_scale`` (myocardium)."""

    outer: Ellipsoid
    inner_scale: float

    def bounds(self) -> Bounds:
        return self.outer.bounds()

    def contains(self, x, y, z):
        inner = Ellipsoid(self.outer.center, np.asarray(self.outer.radii) * self.inner_scale, self.outer.rot)
        return self.outer.contains(x, y, z) & ~inner.contains(x, y, z)


@dataclass(frozen=True)
class Grid:
    """An axial voxel grid in patient coordinates (LPS, identity direction), arrays indexed [z, y, x]."""

    origin: tuple[float, float, float]  # x, y, z of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # x, y, z
    shape: tuple[int, int, int]  # nz, ny, nx

    def axis(self, dim: int) -> np.ndarray:
        """Patient coordinate of every voxel centre along x (0), y (1) or z (2)."""
        n = self.shape[2 - dim]
        return self.origin[dim] + self.spacing[dim] * np.arange(n)

    def index_range(self, low: np.ndarray, high: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Voxel slices (z, y, x) covering the box [low, high]; None if outside the grid."""
        out = []
        for dim in (2, 1, 0):
            n = self.shape[2 - dim]
            start = int(np.floor((low[dim] - self.origin[dim]) / self.spacing[dim]))
            stop = int(np.ceil((high[dim] - self.origin[dim]) / self.spacing[dim])) + 1
            start, stop = max(start, 0), min(stop, n)
            if start >= stop:
                return None
            out.append(slice(start, stop))
        return tuple(out)


@dataclass(frozen=True)
class RigidMotion:
    """Patient motion between two series: p_moved = R (p - center) + center + t."""

    rot: np.ndarray
    translation: np.ndarray
    center: np.ndarray

    def apply_bounds(self, low: np.ndarray, high: np.ndarray) -> Bounds:
        corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1]) for c in (low[2], high[2])])
        moved = (corners - self.center) @ self.rot.T + self.center + self.translation
        return moved.min(axis=0), moved.max(axis=0)

    def inverse_points(self, x, y, z):
        """Anatomy coordinates of patient points seen after the motion."""
        t, c = self.translation, self.center
        lx, ly, lz = _local(x - t[0], y - t[1], z - t[2], c, self.rot)
        return lx + c[0], ly + c[1], lz + c[2]

    def forward_point(self, point: np.ndarray) -> np.ndarray:
        """Where the anatomy point ``point`` (x, y, z) is seen after the motion."""
        return self.rot @ (np.asarray(point, float) - self.center) + self.center + self.translation


@dataclass(frozen=True)
class PlateauBump:
    """A smooth local displacement field, in mm: u(q) = amplitude * exp(-s^2 / (2 sigma^2)) with
    s = max(|q - center| - radius, 0). Everything within ``radius`` of the centre moves as one,
    beyond it the displacement fades as a Gaussian of width ``sigma``.

    Its largest gradient is |amplitude| / sigma * exp(-1/2); below 1, q -> q - u(q) is invertible.
    """

    amplitude: np.ndarray  # (3,) displacement on the plateau
    center: np.ndarray
    radius: float
    sigma: float

    def __post_init__(self) -> None:
        if self.max_gradient >= 1.0:
            raise ValueError(f"displacement gradient {self.max_gradient:.2f} >= 1: the deformation would fold")

    @property
    def max_gradient(self) -> float:
        return float(np.linalg.norm(self.amplitude) / self.sigma * np.exp(-0.5))

    def __call__(self, x, y, z):
        c = self.center
        r = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2)
        weight = np.exp(-np.maximum(r - self.radius, 0.0) ** 2 / (2.0 * self.sigma**2))
        return self.amplitude[0] * weight, self.amplitude[1] * weight, self.amplitude[2] * weight


@dataclass(frozen=True)
class DeformedMotion:
    """A local non-rigid deformation followed by a rigid motion.

    The deformed anatomy holds at q what the anatomy holds at q - u(q) (u a ``PlateauBump``);
    the rigid motion then moves q. Defined backwards because painting asks, for every voxel,
    which anatomy point it shows; the forward map (for recorded landmarks) is solved iteratively.
    """

    rigid: RigidMotion
    bump: PlateauBump

    def apply_bounds(self, low: np.ndarray, high: np.ndarray) -> Bounds:
        # |u| never exceeds the amplitude: growing by it keeps every deformed shape inside.
        reach = np.abs(self.bump.amplitude)
        return self.rigid.apply_bounds(np.asarray(low) - reach, np.asarray(high) + reach)

    def inverse_points(self, x, y, z):
        """Anatomy coordinates of patient points seen after the deformation and the motion."""
        qx, qy, qz = self.rigid.inverse_points(x, y, z)
        ux, uy, uz = self.bump(qx, qy, qz)
        return qx - ux, qy - uy, qz - uz

    def forward_point(self, point: np.ndarray, tol_mm: float = 1e-6) -> np.ndarray:
        """Where the anatomy point ``point`` (x, y, z) is seen: solves q - u(q) = point by fixed-point
        iteration (a contraction, as u's gradient is below 1), then applies the rigid motion."""
        a = np.asarray(point, float)
        q = a.copy()
        for _ in range(200):
            q_next = a + np.array(self.bump(*q))
            converged = np.abs(q_next - q).max() < tol_mm
            q = q_next
            if converged:
                return self.rigid.forward_point(q)
        raise RuntimeError(f"deformation inverse did not converge at {a}")


Motion = RigidMotion | DeformedMotion


def crop_coordinates(grid: Grid, region: tuple[slice, slice, slice], motion: Motion | None = None):
    """Anatomy-frame coordinates of the voxel centres in ``region`` (broadcastable without motion)."""
    zs, ys, xs = region
    z = grid.axis(2)[zs][:, None, None]
    y = grid.axis(1)[ys][None, :, None]
    x = grid.axis(0)[xs][None, None, :]
    if motion is None:
        return x, y, z
    x, y, z = np.broadcast_arrays(x, y, z)
    return motion.inverse_points(x, y, z)


def paint(labels: np.ndarray, grid: Grid, shape, value: int, motion: Motion | None = None) -> int:
    """Set ``labels`` to ``value`` inside ``shape``; returns the number of voxels painted."""
    low, high = shape.bounds()
    if motion is not None:
        low, high = motion.apply_bounds(low, high)
    region = grid.index_range(low, high)
    if region is None:
        return 0
    inside = shape.contains(*crop_coordinates(grid, region, motion))
    inside = np.broadcast_to(inside, labels[region].shape)
    labels[region][inside] = value
    return int(inside.sum())
