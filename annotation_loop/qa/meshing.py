"""Surface meshes of a label map in patient coordinates, one per class, for overview renders.

The plain way (a marching cubes on the full-size mask of every class) spends nearly all its
time on empty voxels. Here every class is cut out by its bounding box (one pass over the
volume for all classes), averaged down to the mesh spacing of an overview render (the
occupied fraction of each block keeps thin structures and gives smooth surfaces), and
meshed once; the same mesh serves every view. A panel of a whole body shows about half a pixel per
millimetre: ``simplified`` then cuts each mesh down to triangles a few pixels wide (quadric edge
collapse keeps the shape, where coarser blocks would lose a vertebra's processes).
"""

from __future__ import annotations

from dataclasses import dataclass

import fast_simplification
import numpy as np
from scipy import ndimage
from skimage.measure import marching_cubes

LEVEL = 0.5  # iso-level on the occupied fraction: the surface of the class
MIN_FACES = 64  # simplification stops here: a small class keeps a recognisable shape


@dataclass(frozen=True)
class VoxelGrid:
    """Where the voxels of an array (z, y, x) lie in patient coordinates (LPS, mm)."""

    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # row-major 3 x 3, columns = image axes x, y, z in LPS

    @classmethod
    def of_image(cls, image) -> "VoxelGrid":
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    def index_to_patient(self) -> np.ndarray:
        """4 x 4 affine from continuous index (x, y, z) to LPS millimetres."""
        affine = np.eye(4)
        affine[:3, :3] = np.reshape(self.direction, (3, 3)) @ np.diag(self.spacing_xyz)
        affine[:3, 3] = self.origin_xyz
        return affine

    def corners_patient(self, shape_zyx: tuple[int, int, int]) -> np.ndarray:
        """The 8 corner voxel centres of an array of ``shape_zyx`` in LPS (8 x 3)."""
        nz, ny, nx = shape_zyx
        idx = np.array([[x, y, z, 1.0] for x in (0, nx - 1) for y in (0, ny - 1) for z in (0, nz - 1)])
        return (idx @ self.index_to_patient().T)[:, :3]


@dataclass
class ClassMesh:
    class_id: int
    vertices: np.ndarray  # (n, 3) float32, LPS mm
    faces: np.ndarray  # (m, 3) int32
    normals: np.ndarray  # (n, 3) float32, unit, pointing out of the structure


def block_factors(spacing_xyz, mesh_spacing_mm: float) -> tuple[int, int, int]:
    """Integer downsampling factor per array axis (z, y, x) that brings voxels near ``mesh_spacing_mm``."""
    sx, sy, sz = spacing_xyz
    return tuple(max(1, int(round(mesh_spacing_mm / s))) for s in (sz, sy, sx))


def occupied_fraction(mask: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    """Mean of ``mask`` over blocks of ``factors`` voxels (the array is zero-padded to whole blocks)."""
    if factors == (1, 1, 1):
        return mask.astype(np.float32)
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factors)]
    padded = np.pad(mask, pad)
    (nz, ny, nx), (fz, fy, fx) = padded.shape, factors
    blocks = padded.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx)
    return blocks.mean(axis=(1, 3, 5), dtype=np.float32)


def mesh_mask(
    mask: np.ndarray,
    start_zyx: tuple[int, int, int],
    grid: VoxelGrid,
    factors: tuple[int, int, int] = (1, 1, 1),
    smooth_sigma: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Marching cubes of a cropped boolean mask whose first voxel is ``start_zyx`` of the full array.

    Returns vertices (LPS mm), faces and unit normals, or None when the mask is empty.
    """
    if not mask.any():
        return None
    frac = occupied_fraction(mask, factors)
    if smooth_sigma > 0:
        frac = ndimage.gaussian_filter(frac, smooth_sigma, mode="constant")
    # A structure thinner than a block still gets a surface: lower the level to its peak.
    level = min(LEVEL, 0.5 * float(frac.max()))
    frac = np.pad(frac, 1)  # closed surfaces where the structure touches the crop
    verts_zyx, faces, normals_zyx, _ = marching_cubes(frac, level=level)
    f = np.asarray(factors, dtype=np.float64)
    # Block b (after the 1-voxel pad) is centred on full-resolution index b * f + (f - 1) / 2.
    index_zyx = (verts_zyx - 1.0) * f + (f - 1.0) / 2.0 + np.asarray(start_zyx, dtype=np.float64)
    affine = grid.index_to_patient()
    vertices = index_zyx[:, ::-1] @ affine[:3, :3].T + affine[:3, 3]
    # Normals are gradients in block-index space: map them with the inverse transpose.
    linear = affine[:3, :3] @ np.diag(f[::-1])
    normals = normals_zyx[:, ::-1] @ np.linalg.inv(linear)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    if np.linalg.det(affine[:3, :3]) < 0:
        # A mirrored grid (e.g. rows stored posterior to anterior) turns the triangles inside out;
        # the renderer would take the faces for back faces and light them from behind.
        faces = faces[:, ::-1]
    return vertices.astype(np.float32), faces.astype(np.int32), normals.astype(np.float32)


def class_boxes(labels: np.ndarray, pad: int = 1) -> dict[int, tuple[slice, slice, slice]]:
    """Bounding box (grown by ``pad`` voxels) of every class present, found in one pass."""
    boxes = {}
    for class_id, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        boxes[class_id] = tuple(
            slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, labels.shape)
        )
    return boxes


def mesh_classes(
    labels: np.ndarray,
    grid: VoxelGrid,
    mesh_spacing_mm: float,
    smooth_sigma: float = 0.0,
    class_ids: list[int] | None = None,
) -> list[ClassMesh]:
    """One mesh per class present (or per class of ``class_ids``), cropped and at the mesh spacing."""
    factors = block_factors(grid.spacing_xyz, mesh_spacing_mm)
    boxes = class_boxes(labels)
    meshes = []
    for class_id, box in sorted(boxes.items()):
        if class_ids is not None and class_id not in class_ids:
            continue
        start = tuple(s.start for s in box)
        result = mesh_mask(labels[box] == class_id, start, grid, factors, smooth_sigma)
        if result is not None:
            meshes.append(ClassMesh(class_id, *result))
    return meshes


def _face_sample(faces: np.ndarray) -> np.ndarray:
    """About 2000 faces spread over the mesh: enough for a mean, cheap on a whole-body organ."""
    return faces[:: max(1, len(faces) // 2000)]


def mean_edge_mm(vertices: np.ndarray, faces: np.ndarray) -> float:
    corners = vertices[_face_sample(faces)]
    return float(np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).mean())


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normals at the vertices: the area-weighted mean of the adjacent faces' normals (winding gives the side)."""
    corners = vertices[faces].astype(np.float64)
    face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals = np.stack([np.bincount(faces.ravel(), np.repeat(face_normals[:, k], 3), minlength=len(vertices))
                        for k in range(3)], axis=1)
    return (normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def simplified(mesh: ClassMesh, edge_mm: float) -> ClassMesh:
    """The mesh cut to triangles whose edges are about ``edge_mm`` long (never below MIN_FACES faces)."""
    keep = (mean_edge_mm(mesh.vertices, mesh.faces) / edge_mm) ** 2  # triangles per area go with 1 / edge^2
    target = max(MIN_FACES, int(keep * len(mesh.faces)))
    if target >= 0.8 * len(mesh.faces):  # too little to gain
        return mesh
    # Which way the faces wind relative to the outward normals of marching cubes (a mirrored grid flips them).
    sample = _face_sample(mesh.faces)
    corners = mesh.vertices[sample]
    outward = np.einsum("ij,ij->", np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]),
                        mesh.normals[sample].sum(axis=1)) >= 0
    vertices, faces = fast_simplification.simplify(mesh.vertices, mesh.faces, target_count=target)
    normals = vertex_normals(vertices, faces)
    return ClassMesh(mesh.class_id, vertices.astype(np.float32), faces.astype(np.int32),
                     normals if outward else -normals)
