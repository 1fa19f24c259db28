"""Per-subject measurements of a label map that the QA flags are computed from (no rendering).

Everything is measured in patient coordinates (LPS, mm: x grows to the patient's left, y to
the back, z to the head), whatever the orientation the file is stored in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import convex_hull_object

from annotation_loop.qa.meshing import VoxelGrid, class_boxes
from totalseg_train import classes


@dataclass(frozen=True)
class StatsParams:
    min_component_mm3: float = 1000.0  # smaller islands are ignored when counting components
    body_hu: float = -500.0  # with a CT: voxels above this are tissue...
    body_block_mm: float = 3.0  # ...judged on blocks of this size...
    body_min_piece_ml: float = 10.0  # ...pieces smaller than this dropped, the others made convex per axial slice
    isolation_block_mm: float = 6.0  # without a CT: blocks on which the distance between labels is judged
    isolation_mm: float = 60.0  # without a CT: a piece of a class this far from every other label is outside


# The per-class table's columns and types, also for a label map without any class (an all-background map, or
# what a round model that has learnt nothing predicts): untyped empty columns would turn the cohort's flags
# into object arithmetic.
CLASS_COLUMNS = {"class_id": "int64", "class_name": "object", "voxels": "int64", "volume_ml": "float64",
                 "cx": "float64", "cy": "float64", "cz": "float64", "z_top": "float64", "z_bottom": "float64",
                 "truncated": "bool", "n_components": "int64", "largest_component_fraction": "float64",
                 "stray_mm": "float64", "stray_voxel_mm": "float64", "surface_share": "float64",
                 "thickness_voxels": "float64", "outside_fraction": "float64", "outside_ml": "float64",
                 "head_end_share": "float64", "foot_end_share": "float64", "edge_voxels": "int64",
                 "inside_hu": "float64", "inside_spread_hu": "float64", "border_hu": "float64",
                 "around_hu": "float64"}


@dataclass
class SubjectStats:
    classes: pd.DataFrame  # one row per class present
    scan: dict  # subject-level facts: z range of the scan, x range, centre of the labels, body source


def _axial_axis(grid: VoxelGrid) -> int:
    """Array axis (0 = z, 1 = y, 2 = x of the array) that runs closest to the patient's head-foot axis."""
    direction = np.reshape(grid.direction, (3, 3))
    image_axis = int(np.argmax(np.abs(direction[2, :])))  # image axis x, y or z
    return 2 - image_axis


def body_mask_from_ct(ct: np.ndarray, grid: VoxelGrid, params: StatsParams) -> np.ndarray:
    """The patient's body from the CT: tissue above ``body_hu``, each piece of it made convex per axial slice.

    Worked out on blocks of ``body_block_mm``. Pieces smaller than ``body_min_piece_ml`` (noise) are
    dropped; in each axial slice every remaining piece (trunk, an arm, a leg) is replaced by its
    convex hull, so lungs, airways and bowel gas are body even where the airway leaves the scan or
    the chest wall is thin. The table is usually below ``body_hu`` and so not body.
    """
    factors = _factors(grid, params.body_block_mm)
    tissue = _block_sum(ct > params.body_hu, factors) > 0
    pieces, _ = ndimage.label(tissue)
    block_ml = float(np.prod(factors) * np.prod(grid.spacing_xyz)) / 1000.0
    keep = np.bincount(pieces.ravel()) * block_ml >= params.body_min_piece_ml
    keep[0] = False
    slices = np.moveaxis(keep[pieces], _axial_axis(grid), 0)
    body = np.zeros_like(slices)
    for i in np.flatnonzero(slices.any(axis=(1, 2))):
        body[i] = convex_hull_object(slices[i], connectivity=2)
    full = np.moveaxis(body, 0, _axial_axis(grid))
    full = full.repeat(factors[0], 0).repeat(factors[1], 1).repeat(factors[2], 2)
    return full[: ct.shape[0], : ct.shape[1], : ct.shape[2]]


def _spacing_zyx(grid: VoxelGrid) -> tuple[float, float, float]:
    return tuple(grid.spacing_xyz[::-1])


def _factors(grid: VoxelGrid, block_mm: float) -> tuple[int, int, int]:
    return tuple(max(1, int(round(block_mm / s))) for s in _spacing_zyx(grid))


def _block_sum(mask: np.ndarray, factors: tuple[int, int, int]) -> np.ndarray:
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factors)]
    padded = np.pad(mask, pad)
    (nz, ny, nx), (fz, fy, fx) = padded.shape, factors
    return padded.reshape(nz // fz, fz, ny // fy, fy, nx // fx, fx).sum(axis=(1, 3, 5), dtype=np.int64)


def isolated_voxels(labels: np.ndarray, grid: VoxelGrid, params: StatsParams):
    """Without a CT, a function class_id, box -> number of its voxels isolated from all other labels.

    The body is not visible in a label map, but the anatomy is dense: every structure lies close
    to some other labelled structure. A piece of a class (a connected group of ``isolation_block_mm``
    blocks) with no other label within ``isolation_mm`` sits apart from the rest of the anatomy:
    in the air, on the table, or far from where it belongs. Stray labels close to the skin are
    not seen this way; with a CT the body itself is used.
    """
    factors = _factors(grid, params.isolation_block_mm)
    any_count = _block_sum(labels > 0, factors)
    reach = max(1, int(round(params.isolation_mm / params.isolation_block_mm)))
    cube = np.ones((3, 3, 3), bool)

    def count(class_id: int, box: tuple[slice, ...]) -> int:
        coarse = tuple(
            slice(max(0, s.start // f - reach), min(n, (s.stop - 1) // f + reach + 1))
            for s, f, n in zip(box, factors, any_count.shape)
        )
        full = tuple(slice(c.start * f, c.stop * f) for c, f in zip(coarse, factors))
        own = _block_sum(labels[full] == class_id, factors)[tuple(slice(0, c.stop - c.start) for c in coarse)]
        others = any_count[coarse] > own
        near_others = ndimage.binary_dilation(others, structure=cube, iterations=reach)
        pieces, n = ndimage.label(own > 0, structure=cube)
        if n == 0:
            return 0
        near = ndimage.maximum(near_others, pieces, index=np.arange(1, n + 1))
        voxels = ndimage.sum(own, pieces, index=np.arange(1, n + 1))
        return int(np.sum(np.asarray(voxels)[~np.asarray(near, bool)]))

    return count


_CUBE = np.ones((3, 3, 3), bool)


def surface_share(mask: np.ndarray) -> float:
    """Exposed voxel faces / (2 x voxels): how much of a class the voxel grid's half-voxel uncertainty touches.

    About 3 / n for a cube n voxels wide: 0.1 for a liver at 1.5 mm, 1 and more for a structure one or two
    voxels thick (a thin muscle or the esophagus at 6 mm), whose volume and connectivity the grid cannot
    show reliably.
    """
    padded = np.pad(mask, 1)
    faces = sum(int(np.count_nonzero(np.diff(padded, axis=a))) for a in range(3))
    return faces / (2.0 * max(1, int(np.count_nonzero(mask))))


def thickness_voxels(mask: np.ndarray, spacing_zyx) -> float:
    """Diameter of the largest ball inside the class, in voxels of the grid's coarsest spacing: how many voxels
    thick the grid draws the class (a cut or a hole does not make it thinner)."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)
    return float(2.0 * depth.max() / max(spacing_zyx))


def end_shares(mask: np.ndarray, axial_axis: int, head_last: bool) -> tuple[float, float]:
    """The area of the class's head-most and foot-most axial slices, each as a share of its widest slice's.

    A class ends where it tapers (a kidney's pole, a lung's apex: a small share) or against a neighbour's
    face; one cut off at a wrong level ends in a full cross-section. ``head_last``: the array's last slices
    along ``axial_axis`` are the head's.
    """
    area = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axial_axis))
    drawn = np.flatnonzero(area)
    first, last = area[drawn[0]] / area.max(), area[drawn[-1]] / area.max()
    return (float(last), float(first)) if head_last else (float(first), float(last))


NO_EDGE = {"edge_voxels": 0, "inside_hu": np.nan, "inside_spread_hu": np.nan, "border_hu": np.nan,
           "around_hu": np.nan}  # without a CT, or a class with no inside or no background beside it


def edge_intensities(mask: np.ndarray, background: np.ndarray, ct: np.ndarray) -> dict:
    """Where a class's border lies against the CT's edges: the median HU of its inside (voxels with no face on
    anything else), with the interquartile range there, of its border (its voxels facing background) and of the
    background around it (background voxels facing it and no other class: a joint space or a fascia between
    two labels takes the partial volume of both), and the fewest voxels of the three (``edge_voxels``).

    Drawn on the organ's edge, the border looks like the inside (or brighter: a bone's cortex); drawn beyond
    it, like the tissue around. Arrays of one box, padded by a voxel beyond the class where the scan allows.
    """
    inside = mask & ~ndimage.binary_dilation(~mask)
    border = mask & ndimage.binary_dilation(background)
    around = background & ndimage.binary_dilation(mask) & ~ndimage.binary_dilation(~mask & ~background)
    counts = [int(np.count_nonzero(m)) for m in (inside, border, around)]
    if min(counts) == 0:
        return dict(NO_EDGE)
    q25, median, q75 = np.percentile(ct[inside], [25, 50, 75])
    return {"edge_voxels": min(counts), "inside_hu": float(median), "inside_spread_hu": float(q75 - q25),
            "border_hu": float(np.median(ct[border])), "around_hu": float(np.median(ct[around]))}


def _stray_mm(components: np.ndarray, sizes: np.ndarray, min_voxels: int, spacing_zyx, box: tuple[slice, ...],
              shape: tuple[int, ...]) -> tuple[float, float]:
    """How far the most isolated piece of a class (of at least ``min_voxels``) lies from every other piece of it,
    in mm, measured twice: between the pieces' bounding boxes, and between their nearest voxels (which also sees
    a piece dropped inside the class's own box: between a rib's arms, among the heart's chambers); (0, 0) for a
    class in one piece.

    Measured to the nearest other piece, not to the largest: a tube that the grid or an overlying structure
    breaks into a chain of pieces is not stray, a piece dropped far from its class is. A piece touching the
    edge of the scan (``box`` of ``components`` in an array of ``shape``) is never stray: it may join the rest
    of its class outside the scan.
    """
    if len(sizes) < 2:
        return 0.0, 0.0
    boxes = ndimage.find_objects(components)
    lo = np.array([[s.start for s in piece] for piece in boxes], float)
    hi = np.array([[s.stop - 1 for s in piece] for piece in boxes], float)
    start = np.array([s.start for s in box], float)
    at_edge = ((lo + start) == 0).any(axis=1) | ((hi + start) == np.array(shape) - 1).any(axis=1)
    judged = (sizes >= min_voxels) & ~at_edge
    if not judged.any():
        return 0.0, 0.0
    gap = np.maximum(0.0, np.maximum(lo[:, None] - hi[None], lo[None] - hi[:, None]) - 1) * np.asarray(spacing_zyx)
    distance = np.sqrt((gap ** 2).sum(axis=2))
    np.fill_diagonal(distance, np.inf)
    # Nearest voxels: a piece's nearest voxel to another piece lies on both their surfaces.
    pieces = components > 0
    surface = pieces & ~ndimage.binary_erosion(pieces, structure=_CUBE)
    points = np.argwhere(surface) * np.asarray(spacing_zyx)
    owner = components[surface]
    nearest = [cKDTree(points[owner != k]).query(points[owner == k])[0].min() for k in np.flatnonzero(judged) + 1]
    return float(distance.min(axis=1)[judged].max()), float(max(nearest))


def measure(
    labels: np.ndarray, grid: VoxelGrid, params: StatsParams = StatsParams(), ct: np.ndarray | None = None,
    body: np.ndarray | None = None,
) -> SubjectStats:
    """Volume, centroid, extent, components, share outside the body and, with a CT, the intensities at the
    border of every class present. ``body``: the CT's ``body_mask_from_ct``, where several label maps are
    measured on one CT."""
    affine = grid.index_to_patient()
    spacing_zyx = _spacing_zyx(grid)
    voxel_mm3 = float(np.prod(grid.spacing_xyz))
    min_voxels = max(1, int(np.ceil(params.min_component_mm3 / voxel_mm3)))
    if ct is not None:
        # A label one voxel beyond the skin is where the grid puts the edge of the lung or the chest wall on a
        # coarse grid (a 6 mm voxel straddles the skin), not outside the body: the body is grown by a voxel.
        body = ndimage.binary_dilation(body_mask_from_ct(ct, grid, params) if body is None else body, structure=_CUBE)
        body_source = "ct"

        def outside_count(class_id, box, mask):
            return int(np.count_nonzero(mask & ~body[box]))
    else:
        isolated = isolated_voxels(labels, grid, params)
        body_source = "labels"

        def outside_count(class_id, box, mask):
            return isolated(class_id, box)
    axial = _axial_axis(grid)
    head_last = bool(affine[2, 2 - axial] > 0)  # patient z (to the head) grows along the array's axial axis
    rows = []
    total, weighted = 0, np.zeros(3)
    for class_id, box in sorted(class_boxes(labels, pad=0).items()):
        if class_id > classes.num_classes():
            raise ValueError(f"label id {class_id} is not a v1 class id (1..{classes.num_classes()})")
        mask = labels[box] == class_id
        idx = np.nonzero(mask)
        n = len(idx[0])
        start = np.array([s.start for s in box])
        centroid_zyx = np.array([i.mean() for i in idx]) + start
        centroid = affine[:3, :3] @ centroid_zyx[::-1] + affine[:3, 3]
        corners = np.array(
            [[x, y, z, 1.0] for z in (box[0].start, box[0].stop - 1) for y in (box[1].start, box[1].stop - 1)
             for x in (box[2].start, box[2].stop - 1)]
        ) @ affine.T
        # Pieces touching at an edge or a corner are one piece: a thin oblique structure (the esophagus on a
        # coarse grid) is drawn as voxels meeting at their corners.
        components, _ = ndimage.label(mask, structure=_CUBE)
        sizes = np.bincount(components.ravel())[1:]
        touches = any(s.start == 0 or s.stop == size for s, size in zip(box, labels.shape))
        outside = outside_count(class_id, box, mask)
        head_share, foot_share = end_shares(mask, axial, head_last)
        stray_box, stray_voxel = _stray_mm(components, sizes, min_voxels, spacing_zyx, box, labels.shape)
        edge = NO_EDGE
        if ct is not None:
            wider = tuple(slice(max(0, s.start - 1), min(size, s.stop + 1)) for s, size in zip(box, labels.shape))
            edge = edge_intensities(labels[wider] == class_id, labels[wider] == 0, ct[wider])
        rows.append(
            {
                "class_id": class_id,
                "class_name": classes.by_id(class_id).name,
                "voxels": n,
                "volume_ml": n * voxel_mm3 / 1000.0,
                "cx": centroid[0],
                "cy": centroid[1],
                "cz": centroid[2],
                "z_top": corners[:, 2].max(),
                "z_bottom": corners[:, 2].min(),
                "truncated": bool(touches),
                "n_components": int(np.count_nonzero(sizes >= min_voxels)),
                "largest_component_fraction": float(sizes.max() / n),
                "stray_mm": stray_box,
                "stray_voxel_mm": stray_voxel,
                "surface_share": surface_share(mask),
                "thickness_voxels": thickness_voxels(mask, spacing_zyx),
                "outside_fraction": outside / n,
                "outside_ml": outside * voxel_mm3 / 1000.0,
                "head_end_share": head_share,
                "foot_end_share": foot_share,
                **edge,
            }
        )
        total += n
        weighted += n * centroid
    image_corners = grid.corners_patient(labels.shape)
    scan = {
        "z_min": float(image_corners[:, 2].min()),
        "z_max": float(image_corners[:, 2].max()),
        "x_min": float(image_corners[:, 0].min()),
        "x_max": float(image_corners[:, 0].max()),
        "labels_cx": float(weighted[0] / total) if total else np.nan,
        "slice_mm": float(grid.spacing_xyz[2 - axial]),
        "body_source": body_source,
    }
    return SubjectStats(pd.DataFrame(rows, columns=list(CLASS_COLUMNS)).astype(CLASS_COLUMNS), scan)
