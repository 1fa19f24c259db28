"""QA sheets drawn at the size and detail a reviewer can see: panels fitted to the labels, meshes simplified."""

from __future__ import annotations

import numpy as np
import pytest

from annotation_loop.qa.meshing import MIN_FACES, ClassMesh, VoxelGrid, mean_edge_mm, mesh_classes, mesh_mask, simplified
from annotation_loop.qa.render_cohort import sheet_meshes, style_from_config, views_from_config
from annotation_loop.qa.renderer import SheetRenderer, mesh_bounds, panel_scale
from totalseg_train.config import compose_config
from totalseg_train.label_maps import read_label_map

RADIUS_MM = 30.0


def _render_cfg(*overrides: str):
    return compose_config("qa", ["labels_dir=unused", *overrides]).render


def _ball_mesh(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> tuple[ClassMesh, np.ndarray]:
    """Marching cubes of a ball of RADIUS_MM on a 1.5 mm grid, and its centre in patient coordinates."""
    n, spacing = 50, 1.5
    zz, yy, xx = np.mgrid[:n, :n, :n] * spacing
    c = (n - 1) * spacing / 2
    mask = (xx - c) ** 2 + (yy - c) ** 2 + (zz - c) ** 2 <= RADIUS_MM**2
    grid = VoxelGrid((spacing,) * 3, (10.0, -20.0, 30.0), direction)
    vertices, faces, normals = mesh_mask(mask, (0, 0, 0), grid)
    centre = grid.index_to_patient() @ np.array([(n - 1) / 2] * 3 + [1.0])
    return ClassMesh(1, vertices, faces, normals), centre[:3]


def _area(mesh: ClassMesh) -> float:
    corners = mesh.vertices[mesh.faces].astype(np.float64)
    return float(np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1).sum() / 2)


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (1, 0, 0, 0, -1, 0, 0, 0, 1)], ids=["LPS", "RAS", "mirrored"])
def test_a_simplified_mesh_keeps_its_shape_and_faces_outward_with_fewer_triangles(direction):
    ball, centre = _ball_mesh(direction)
    small = simplified(ball, edge_mm=6.0)
    assert len(small.faces) < len(ball.faces) / 5
    assert 4.0 < mean_edge_mm(small.vertices, small.faces) < 9.0
    sphere = 4 * np.pi * RADIUS_MM**2
    assert _area(ball) == pytest.approx(sphere, rel=0.12)  # marching cubes' terraces add area
    assert _area(small) == pytest.approx(sphere, rel=0.05)
    distance = np.linalg.norm(small.vertices - centre, axis=1)
    assert np.abs(distance - distance.mean()).max() < 1.5  # still a ball, no spikes or holes
    np.testing.assert_allclose(np.linalg.norm(small.normals, axis=1), 1.0, atol=1e-5)
    # The normals the renderer lights point out of the ball, whichever way the grid runs (a mirrored grid
    # flips the triangles' winding, from which the simplified normals are worked out).
    outward = np.einsum("ij,ij->i", small.normals, small.vertices - centre) > 0
    assert outward.mean() > 0.99
    assert small.vertices.dtype == np.float32 and small.faces.dtype == np.int32


def test_simplification_keeps_small_meshes_recognisable_and_skips_little_gains():
    ball, _ = _ball_mesh()
    assert len(simplified(ball, edge_mm=500.0).faces) == pytest.approx(MIN_FACES, abs=4)
    assert simplified(ball, edge_mm=0.5) is ball  # already finer than asked: not worth a pass


def test_panels_share_one_scale_fitted_to_the_labels():
    cfg = _render_cfg()
    views, style = views_from_config(cfg.views), style_from_config(cfg)
    renderer = SheetRenderer(4, views, style)
    try:
        body = renderer.layout(np.array([-250.0, -225.0, -900.0]), np.array([250.0, 225.0, 900.0]))
        slab = renderer.layout(np.array([-183.0, -150.0, -45.0]), np.array([183.0, 150.0, 45.0]))
    finally:
        renderer.close()
    # A whole body fills the panel height; the box's width and depth get panels of the same scale.
    assert {p.rect[3] for p in body} == {style.panel_height}
    scale = panel_scale(np.array([-250.0, -225.0, -900.0]), np.array([250.0, 225.0, 900.0]), views, style)
    assert scale == pytest.approx(style.panel_height / (1800 * style.margin))
    assert [p.rect[2] for p in body[:2]] == [round(scale * 500 * style.margin), round(scale * 450 * style.margin)]
    # A 9 cm slab is limited by its width: short panels, not black margins above and below.
    slab_scale = style.max_panel_width / (366 * style.margin)
    assert [p.rect[2] for p in slab[:2]] == [style.max_panel_width, round(slab_scale * 300 * style.margin)]
    assert {p.rect[3] for p in slab} == {max(style.min_panel_height, round(slab_scale * 90 * style.margin))}
    assert slab[0].rect[3] < 0.3 * style.panel_height


def test_sheet_meshes_are_cut_to_the_panels_scale(shared_dir):
    label_map = read_label_map(shared_dir / "data" / "ct_example" / "example_seg.nii.gz", labels_version="v2")
    grid = VoxelGrid.of_image(label_map.image)
    cfg = _render_cfg()
    full = mesh_classes(label_map.array, grid, cfg.mesh_spacing_mm, cfg.smooth_sigma)
    unchanged = sheet_meshes(label_map.array, grid, _render_cfg("render.mesh_edge_px=0"))
    assert [len(m.faces) for m in unchanged] == [len(m.faces) for m in full]
    cut = sheet_meshes(label_map.array, grid, cfg)
    assert [m.class_id for m in cut] == [m.class_id for m in full]
    assert sum(len(m.faces) for m in cut) < 0.4 * sum(len(m.faces) for m in full)
    scale = panel_scale(*mesh_bounds(full), views_from_config(cfg.views), style_from_config(cfg))
    big = [m for m in cut if len(m.faces) > 4 * MIN_FACES]
    edges_px = [mean_edge_mm(m.vertices, m.faces) * scale for m in big]
    assert np.median(edges_px) == pytest.approx(cfg.mesh_edge_px, rel=0.35)
    lo, hi = mesh_bounds(cut)
    np.testing.assert_allclose(lo, mesh_bounds(full)[0], atol=3.0)  # the same box: the same layout
    np.testing.assert_allclose(hi, mesh_bounds(full)[1], atol=3.0)
