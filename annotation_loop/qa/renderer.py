"""One offscreen fury window that renders the panels of a QA sheet, reused for every subject.

Every (class group, view) pair is a viewport of the same window with its own scene and an
orthographic camera, so a whole sheet is one frame and one read-back. Each class is uploaded
once per subject: the panels showing it share its geometry and material.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annotation_loop.qa.headless import require_adapter
from annotation_loop.qa.meshing import ClassMesh

# Screen direction of each patient axis (LPS): the letter a radiologist writes at that image edge.
_AXIS_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


def _linear_rgb(srgb: tuple[int, int, int]) -> np.ndarray:
    """8-bit sRGB to the linear light values pygfx expects for vertex colours."""
    c = np.asarray(srgb, np.float32) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


@dataclass(frozen=True)
class View:
    """A camera looking along ``look`` (LPS) with ``up`` at the top of the image."""

    name: str
    look: tuple[float, float, float]
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)

    def screen_right(self) -> np.ndarray:
        right = np.cross(np.asarray(self.look, float), np.asarray(self.up, float))
        return right / np.linalg.norm(right)

    def edge_letters(self) -> tuple[str, str]:
        """Orientation letters at the left and right image edges (anterior view: R, L)."""
        right = self.screen_right()
        axis = int(np.argmax(np.abs(right)))
        sign = 1 if right[axis] > 0 else -1
        return _AXIS_LETTERS[(axis, -sign)], _AXIS_LETTERS[(axis, sign)]


@dataclass(frozen=True)
class Panel:
    group: int
    view: View
    rect: tuple[int, int, int, int]  # x, y, w, h in pixels of the rendered frame (y down)


@dataclass(frozen=True)
class RenderStyle:
    panel_height: int = 560  # the tallest a panel gets; a subject wider than tall gets less (same scale)
    max_panel_width: int = 420
    min_panel_width: int = 120
    min_panel_height: int = 120
    sheet_aspect: float = 1.8  # groups wrap into rows so that the sheet comes closest to this width / height
    margin: float = 1.06  # frame around the subject's labels
    background: tuple[float, float, float] = (0.07, 0.07, 0.08)
    material: str = "phong"  # phong (lit) | basic (flat class colours)
    light_intensity: float = 2.2
    ambient_intensity: float = 0.9
    antialias: str = "fxaa"  # pygfx's post-processing anti-aliasing: fxaa | ddaa (finer, 2x the frame time) | none


def _box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def panel_scale(lo: np.ndarray, hi: np.ndarray, views: Sequence[View], style: RenderStyle) -> float:
    """Pixels per millimetre of a subject's panels: its labels' box (``lo`` .. ``hi``, LPS mm) fitted into
    ``panel_height`` x ``max_panel_width`` in every view.

    A whole body fills the height; a short slab (30 slices of the abdomen) gets short panels rather than
    black margins that would cost rendering time and bury the anatomy in a large sheet.
    """
    extents = [_extent_mm(lo, hi, view, style.margin) for view in views]
    return min(style.panel_height / max(tall for _, tall in extents),
               style.max_panel_width / max(across for across, _ in extents))


def _extent_mm(lo: np.ndarray, hi: np.ndarray, view: View, margin: float) -> tuple[float, float]:
    """Width and height (mm, with the margin) of the box ``lo`` .. ``hi`` as ``view`` sees it."""
    corners = _box_corners(lo, hi)
    return (max(np.ptp(corners @ view.screen_right()), 1.0) * margin,
            max(np.ptp(corners @ np.asarray(view.up, float)), 1.0) * margin)


def mesh_bounds(meshes: Sequence[ClassMesh]) -> tuple[np.ndarray, np.ndarray]:
    """Lowest and highest vertex coordinates (LPS mm) of all meshes; the origin when there are none."""
    points = np.concatenate([m.vertices for m in meshes]) if meshes else np.zeros((1, 3), np.float32)
    return points.min(axis=0).astype(float), points.max(axis=0).astype(float)


class SheetRenderer:
    """Renders the panels of one subject's QA sheet offscreen; create once, call ``render`` per subject.

    Built from fury's window pieces (Scene, create_screen, render_screens) on an offscreen canvas
    that is resized to each subject's layout, so that no pixel is rendered twice or for nothing.
    """

    def __init__(self, n_groups: int, views: Sequence[View], style: RenderStyle = RenderStyle()):
        self.adapter = require_adapter()
        from fury import window
        from fury.lib import AmbientLight, DirectionalLight, OffscreenCanvas, PerspectiveCamera, Renderer

        self.views = list(views)
        self.n_groups = n_groups
        self.style = style
        self.canvas = OffscreenCanvas(size=(style.max_panel_width, style.panel_height), pixel_ratio=1)
        self.renderer = Renderer(self.canvas)
        self.renderer.pixel_ratio = 1
        self.renderer.ppaa = style.antialias
        self.screens = []
        for _ in range(n_groups * len(self.views)):
            scene = window.Scene(background=(*style.background, 1.0),
                                 lights=[AmbientLight(intensity=style.ambient_intensity)])
            camera = PerspectiveCamera(0)  # fov 0: orthographic, true proportions at any depth
            camera.add(DirectionalLight(intensity=style.light_intensity))  # a headlight: lit where the reader looks
            scene.add(camera)
            self.screens.append(window.create_screen(self.renderer, scene=scene, camera=camera))
        self._content: list = []

    def _group_actor(self, meshes: list[ClassMesh], colours: dict[int, tuple[int, int, int]]):
        """All classes of a group as one mesh with per-vertex class colours (one draw call, not one per class)."""
        from fury import actor

        if not meshes:
            return None
        offsets = np.cumsum([0] + [len(m.vertices) for m in meshes[:-1]])
        vertices = np.concatenate([m.vertices for m in meshes])
        faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])
        normals = np.concatenate([m.normals for m in meshes])
        rgb = np.concatenate([np.tile(_linear_rgb(colours[m.class_id]), (len(m.vertices), 1)) for m in meshes])
        surface = actor.surface(vertices, faces, normals=normals, colors=rgb, material=self.style.material)
        surface.material.flat_shading = False  # the normals of marching cubes give smooth organs
        surface.material.alpha_mode = "solid"  # opaque: no sorting or blending pass
        surface.material.pick_write = False  # nothing is picked offscreen
        return surface

    def layout(self, lo: np.ndarray, hi: np.ndarray) -> list[Panel]:
        """Panel rectangles at one scale (``panel_scale``) for every view, class groups wrapped into rows."""
        scale = panel_scale(lo, hi, self.views, self.style)
        extents = [_extent_mm(lo, hi, view, self.style.margin) for view in self.views]
        h = int(np.clip(round(scale * max(tall for _, tall in extents)), self.style.min_panel_height,
                        self.style.panel_height))
        widths = [int(np.clip(round(scale * across), self.style.min_panel_width, self.style.max_panel_width))
                  for across, _ in extents]
        block = sum(widths)

        def misfit(rows: int) -> float:
            per_row = -(-self.n_groups // rows)
            return abs(np.log(per_row * block / (rows * h) / self.style.sheet_aspect))

        rows = min(range(1, self.n_groups + 1), key=misfit)
        per_row = -(-self.n_groups // rows)
        panels = []
        for group in range(self.n_groups):
            x, y = (group % per_row) * block, (group // per_row) * h
            for view, w in zip(self.views, widths):
                panels.append(Panel(group, view, (x, y, w, h)))
                x += w
        return panels

    def render(
        self, group_meshes: list[list[ClassMesh]], colours: dict[int, tuple[int, int, int]]
    ) -> tuple[np.ndarray, list[Panel]]:
        """RGB frame with one panel per (group, view), and the panels' rectangles in it."""
        if len(group_meshes) != self.n_groups:
            raise ValueError(f"expected meshes for {self.n_groups} groups, got {len(group_meshes)}")
        from fury.actor import create_mesh
        from fury.window import render_screens

        for screen, old in zip(self.screens, self._content):
            if old:
                screen.scene.remove(*old)
        lo, hi = mesh_bounds([m for meshes in group_meshes for m in meshes])
        panels = self.layout(lo, hi)
        size = (max(p.rect[0] + p.rect[2] for p in panels), max(p.rect[1] + p.rect[3] for p in panels))
        if tuple(self.canvas.get_logical_size()) != size:
            self.canvas.set_logical_size(*size)
        group_actors = [self._group_actor(meshes, colours) for meshes in group_meshes]
        self._content = []
        for index, (panel, screen) in enumerate(zip(panels, self.screens)):
            shown = group_actors[panel.group]
            if shown is not None and index % len(self.views):  # later views share the first view's GPU buffers
                shown = create_mesh(shown.geometry, shown.material)
            self._content.append([shown] if shown is not None else [])
            if shown is not None:
                screen.scene.add(shown)
            screen.bounding_box = panel.rect
            self._aim(screen.camera, panel.view, lo, hi)
        self.canvas.request_draw(lambda: render_screens(self.renderer, self.screens))
        frame = np.asarray(self.canvas.draw())[..., :3]  # the offscreen canvas hands back its image
        return np.ascontiguousarray(frame[: size[1], : size[0]]), panels

    def _aim(self, camera, view: View, lo: np.ndarray, hi: np.ndarray) -> None:
        centre, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2 + 1.0
        look = np.asarray(view.look, float) / np.linalg.norm(view.look)
        camera.world.reference_up = np.asarray(view.up, float)
        camera.world.position = centre - look * 2 * radius
        camera.look_at(centre)
        camera.width, camera.height = _extent_mm(lo, hi, view, self.style.margin)
        camera.depth_range = (0.01 * radius, 4 * radius)

    def close(self) -> None:
        self.canvas.close()
