"""Registration of a native CT onto the contrast CT of the same exam, around the heart, with SimpleITK.

The transform is solved in the direction the label transfer needs: it maps points of the native scan
(SimpleITK's fixed image) to points of the contrast scan (the moving image), so the contrast labels are
resampled onto the native grid through it directly. A B-spline transform has no closed-form inverse,
so registering the other way round would need one. Both scans of an exam share a frame of reference:
the start is the identity in patient coordinates (the headers), then a rigid Euler3D stage (Mattes
mutual information: the blood pool is bright with contrast and grey without, so intensities do not
match), then an optional B-spline stage for breathing and heart position.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from omegaconf import DictConfig


class RegistrationError(RuntimeError):
    """Registration could not run or diverged; the message says why."""


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in patient coordinates (mm)."""

    low: np.ndarray
    high: np.ndarray

    def grown(self, margin_mm: float) -> "Box":
        return Box(self.low - margin_mm, self.high + margin_mm)

    def intersection(self, other: "Box") -> "Box | None":
        low, high = np.maximum(self.low, other.low), np.minimum(self.high, other.high)
        return Box(low, high) if np.all(high > low) else None

    @property
    def center(self) -> np.ndarray:
        return (self.low + self.high) / 2


def physical_box(image: sitk.Image, index_low=None, index_high=None) -> Box:
    """The box spanned by the centres of voxels ``index_low``..``index_high`` (default: the whole image)."""
    size = image.GetSize()
    low = [0, 0, 0] if index_low is None else index_low
    high = [s - 1 for s in size] if index_high is None else index_high
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (x, y, z)])
                        for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    return Box(corners.min(axis=0), corners.max(axis=0))


def mask_box(mask: sitk.Image) -> Box | None:
    """Physical bounding box of a mask's non-zero voxels; None for an empty mask."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.Cast(mask > 0, sitk.sitkUInt8))
    if not stats.HasLabel(1):
        return None
    x, y, z, sx, sy, sz = stats.GetBoundingBox(1)
    return physical_box(mask, (x, y, z), (x + sx - 1, y + sy - 1, z + sz - 1))


def crop_to_box(image: sitk.Image, box: Box) -> sitk.Image:
    """The part of ``image`` whose voxel centres lie inside ``box`` (at least one voxel per axis)."""
    corners = [image.TransformPhysicalPointToContinuousIndex([float(c) for c in (x, y, z)])
               for x in (box.low[0], box.high[0]) for y in (box.low[1], box.high[1]) for z in (box.low[2], box.high[2])]
    corners = np.array(corners)
    size = np.array(image.GetSize())
    low = np.clip(np.floor(corners.min(axis=0)).astype(int), 0, size - 1)
    high = np.clip(np.ceil(corners.max(axis=0)).astype(int), 0, size - 1)
    return sitk.RegionOfInterest(image, [int(v) for v in high - low + 1], [int(v) for v in low])


@dataclass
class RegistrationResult:
    transform: sitk.Transform        # native point -> contrast point
    rigid: sitk.Euler3DTransform     # the rigid stage alone
    metric_start: float              # Mattes MI at the identity (lower is better)
    metric_rigid: float
    metric_final: float
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    rigid_seconds: float
    deformable_seconds: float


MIN_LEVEL_VOXELS = 8  # a resolution level must keep this many voxels along the region's shortest axis


def levels(stage: DictConfig, region_size: tuple[int, ...]) -> tuple[list[int], list[float]]:
    """The stage's (shrink factors, smoothing sigmas) without the levels too coarse for a small region
    (a heart cut by the scan's edge spans a few slices); the finest level always stays."""
    pairs = list(zip((int(f) for f in stage.shrink_factors), (float(s) for s in stage.smoothing_sigmas_mm)))
    kept = [p for p in pairs[:-1] if min(region_size) // p[0] >= MIN_LEVEL_VOXELS] + pairs[-1:]
    return [f for f, _ in kept], [s for _, s in kept]


def _method(cfg: DictConfig, seed: int, mask: sitk.Image | None, stage: DictConfig | None = None,
            region_size: tuple[int, ...] = ()) -> sitk.ImageRegistrationMethod:
    """Seeded Mattes mutual information inside ``mask``; with ``stage``, its resolution levels."""
    method = sitk.ImageRegistrationMethod()
    if mask is not None:
        method.SetMetricMovingMask(mask)
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(cfg.histogram_bins))
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(float(cfg.sampling_percentage), seed)
    method.SetInterpolator(sitk.sitkLinear)
    if stage is not None:
        shrink, sigmas = levels(stage, region_size)
        method.SetShrinkFactorsPerLevel(shrink)
        method.SetSmoothingSigmasPerLevel(sigmas)
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


def _metric_at(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, cfg: DictConfig, seed: int,
               mask: sitk.Image | None) -> float:
    """The metric of ``transform`` at full resolution: start and results are compared on one scale."""
    method = _method(cfg, seed, mask)
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(fixed, moving))


def _failure(err: RuntimeError) -> str:
    """ITK's exception as a reason: its message without the file, class and address it starts with."""
    message = str(err).strip().splitlines()[-1]
    message = re.sub(r"^ITK ERROR: \w+(<[^>]*>)?\(0x[0-9a-f]+\): ", "", message)
    if "map outside moving image buffer" in message:
        # The optimizer stepped the native region off the contrast region: it ran away from the start.
        return "diverged: the native region left the contrast scan's region (" + message.split(". ")[0] + ")"
    return f"failed ({message})"


def register(native: sitk.Image, contrast: sitk.Image, cfg: DictConfig,
             contrast_mask: sitk.Image | None = None) -> RegistrationResult:
    """Register ``native`` (fixed) to ``contrast`` (moving); both already cropped to the heart's region.

    ``cfg``: the ``registration`` section of configs/heart_transfer.yaml. ``contrast_mask``: where on
    the contrast scan the metric looks (the heart and a rim around it), so the heart drives the result.
    """
    fixed = sitk.Cast(native, sitk.sitkFloat32)
    moving = sitk.Cast(contrast, sitk.sitkFloat32)
    seed = int(cfg.seed)
    if seed < 1:  # SimpleITK's sitkWallClock is 0: every run would sample differently
        raise ValueError(f"registration.seed={seed}: use a seed of at least 1 so that a pair registers the same way")
    center = physical_box(fixed).center
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter([float(c) for c in center])  # identity in patient coordinates: the headers' alignment
    metric_start = _metric_at(fixed, moving, rigid, cfg, seed, contrast_mask)

    start = time.perf_counter()
    method = _method(cfg, seed, contrast_mask, cfg.rigid, fixed.GetSize())
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=float(cfg.rigid.learning_rate), minStep=float(cfg.rigid.min_step),
        numberOfIterations=int(cfg.rigid.iterations), relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(rigid, inPlace=True)
    try:
        method.Execute(fixed, moving)
    except RuntimeError as err:
        raise RegistrationError(f"rigid registration {_failure(err)}") from None
    rigid_seconds = time.perf_counter() - start
    params = rigid.GetParameters()
    if not all(math.isfinite(v) for v in params):
        raise RegistrationError("rigid registration diverged (non-finite parameters)")
    rotation = tuple(math.degrees(a) for a in params[:3])
    translation = tuple(float(t) for t in params[3:])
    metric_rigid = _metric_at(fixed, moving, rigid, cfg, seed, contrast_mask)

    transform: sitk.Transform = sitk.Euler3DTransform(rigid)
    metric_final, deformable_seconds = metric_rigid, 0.0
    if cfg.deformable.enabled:
        start = time.perf_counter()
        physical = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
        mesh = [max(1, int(round(extent / float(cfg.deformable.grid_spacing_mm)))) for extent in physical]
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        method = _method(cfg, seed, contrast_mask, cfg.deformable, fixed.GetSize())
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=int(cfg.deformable.iterations),
                                    maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000,
                                    costFunctionConvergenceFactor=1e7,
                                    lowerBound=-float(cfg.deformable.max_displacement_mm),
                                    upperBound=float(cfg.deformable.max_displacement_mm))
        method.SetMovingInitialTransform(rigid)
        method.SetInitialTransform(bspline, inPlace=True)
        try:
            method.Execute(fixed, moving)
        except RuntimeError as err:
            raise RegistrationError(f"deformable registration {_failure(err)}") from None
        if not np.all(np.isfinite(bspline.GetParameters())):
            raise RegistrationError("deformable registration diverged (non-finite parameters)")
        # Applied last-added first: the B-spline moves a native point, then the rigid motion.
        transform = sitk.CompositeTransform([sitk.Euler3DTransform(rigid), bspline])
        metric_final = _metric_at(fixed, moving, transform, cfg, seed, contrast_mask)
        deformable_seconds = time.perf_counter() - start
    return RegistrationResult(transform, rigid, metric_start, metric_rigid, metric_final, translation, rotation,
                              rigid_seconds, deformable_seconds)
