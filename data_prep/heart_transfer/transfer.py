"""Carry heart sub-part labels from a contrast CT onto the native CT of the same exam.

``transfer_labels`` is the whole computation on SimpleITK images (no files): check the input, crop
both scans to the heart's region, register, resample the labels onto the native grid, and measure
the result (``qc``). The stage command (``python -m data_prep.heart_transfer``) adds the files.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from omegaconf import DictConfig

from data_prep.heart_transfer.registration import (Box, RegistrationResult, crop_to_box, mask_box,
                                                   physical_box, register)
from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.images import Geometry, voxel_view


class TransferError(ValueError):
    """A pair whose labels cannot be transferred; the message says why."""


def heart_ids() -> list[int]:
    return [c.id for c in classes.heart_subparts()]


@dataclass
class TransferResult:
    labels: sitk.Image               # heart labels on the native grid (uint8, v1 ids)
    registration: RegistrationResult
    qc: dict


def check_labels(contrast_image: sitk.Image, contrast_labels: sitk.Image, class_ids: list[int]) -> None:
    """TransferError unless the labels lie on the contrast grid and hold ``class_ids`` only."""
    if not Geometry.of_image(contrast_image).matches(Geometry.of_image(contrast_labels)):
        raise TransferError(f"the labels' grid ({Geometry.of_image(contrast_labels).describe()}) is not the contrast "
                            f"image's ({Geometry.of_image(contrast_image).describe()})")
    ids = set(np.unique(sitk.GetArrayViewFromImage(contrast_labels)).tolist()) - {0}
    other = sorted(ids - set(class_ids))
    if other:
        names = [classes.by_id(i).name if 1 <= i <= classes.num_classes() else str(i) for i in other]
        raise TransferError(f"label ids that are not heart sub-parts: {', '.join(map(str, other))} "
                            f"({', '.join(names[:6])}{' ...' if len(names) > 6 else ''}); "
                            "pass other_classes=drop to remove them")
    if not ids:
        raise TransferError("the label map holds none of the classes to transfer")


def heart_region(contrast_labels: sitk.Image, native_image: sitk.Image, contrast_image: sitk.Image,
                 cfg: DictConfig) -> tuple[Box, Box]:
    """(fixed box on the native scan, larger moving box on the contrast scan) around the labelled heart."""
    labelled = mask_box(contrast_labels)
    native_box, contrast_box = physical_box(native_image), physical_box(contrast_image)
    if native_box.intersection(contrast_box) is None:
        raise TransferError("the native and the contrast image do not overlap in patient coordinates")
    fixed = labelled.grown(float(cfg.region.margin_mm)).intersection(native_box)
    if fixed is None:
        raise TransferError("the native image does not cover the labelled heart")
    moving = labelled.grown(float(cfg.region.margin_mm) + float(cfg.region.moving_extra_mm)).intersection(contrast_box)
    return fixed, moving


def heart_mask(labels: sitk.Image, margin_mm: float | None) -> sitk.Image | None:
    """The labelled heart grown by ``margin_mm`` (None: no mask, the whole region counts)."""
    if margin_mm is None:
        return None
    radius = [max(1, int(round(float(margin_mm) / s))) for s in labels.GetSpacing()]
    return sitk.BinaryDilate(sitk.Cast(labels > 0, sitk.sitkUInt8), radius)


def resample_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform, interpolation: str
                    ) -> sitk.Image:
    """``labels`` on the grid of ``reference``, sampled at transform(point) for every reference voxel.

    ``linear_onehot``: every class's mask is interpolated linearly and each voxel takes the class of
    the highest value, background included (1 - the classes' sum). A thin wall (the myocardium, a few
    voxels thick) keeps its thickness where nearest neighbour would drop or double a row of voxels.
    """
    if interpolation == "nearest":
        return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if interpolation != "linear_onehot":
        raise ValueError(f"transfer.interpolation={interpolation!r}: use linear_onehot or nearest")
    present = sorted(set(np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0})
    size = reference.GetSize()
    stacked = np.zeros((len(present) + 1, size[2], size[1], size[0]), dtype=np.float32)
    for k, class_id in enumerate(present, start=1):
        mask = sitk.Cast(labels == class_id, sitk.sitkFloat32)
        moved = sitk.Resample(mask, reference, transform, sitk.sitkLinear, 0.0)  # alive while its view is copied
        stacked[k] = sitk.GetArrayViewFromImage(moved)
    stacked[0] = 1.0 - stacked[1:].sum(axis=0)
    lut = np.array([0, *present], dtype=np.uint8)
    out = sitk.GetImageFromArray(lut[np.argmax(stacked, axis=0)])
    out.CopyInformation(reference)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else float("nan")


def tolerant_dice(a: np.ndarray, b: np.ndarray, radius_zyx: tuple[int, int, int]) -> float:
    """Dice in which a voxel of either mask counts as matched when the other mask lies within ``radius_zyx``
    voxels of it (a box); radius 0 everywhere is the plain Dice."""
    if not any(radius_zyx):
        return dice(a, b)
    total = int(a.sum()) + int(b.sum())
    if not total:
        return float("nan")
    box = np.ones([2 * r + 1 for r in radius_zyx], bool)
    matched = int((a & ndimage.binary_dilation(b, box)).sum()) + int((b & ndimage.binary_dilation(a, box)).sum())
    return matched / total


def bone_dice(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, bone_hu: float,
              tolerance_mm: float) -> float:
    """Dice of the native scan's bone and the contrast scan's bone brought through ``transform``, each voxel
    matched within ``tolerance_mm`` and at least one voxel (the fixed grid's): a bone edge is a partial-volume
    voxel at any resolution, so without that slack a coarse scan's bone Dice says more about its voxel size
    than about the alignment."""
    moved = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    radius = tuple(max(1, math.ceil(tolerance_mm / s - 1e-6)) if tolerance_mm > 0 else 0
                   for s in reversed(fixed.GetSpacing()))
    return tolerant_dice(voxel_view(fixed) > bone_hu, voxel_view(moved) > bone_hu, radius)


def volumes_ml(labels: sitk.Image, class_ids: list[int]) -> dict[int, float]:
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=256)
    return {i: float(counts[i]) * voxel_ml for i in class_ids}


def touches_edge(labels: sitk.Image) -> bool:
    """True when labels lie in the first or last slice of the scan (the structure is cut by it)."""
    array = sitk.GetArrayViewFromImage(labels)
    return bool(array[0].any() or array[-1].any())


def quality_flags(qc: dict, cfg: DictConfig, class_ids: list[int]) -> list[str]:
    """Reasons to look at a pair: an implausible motion, bone that fits worse, volumes that changed."""
    reasons = []
    shift = float(np.linalg.norm([qc["tx_mm"], qc["ty_mm"], qc["tz_mm"]]))
    if shift > float(cfg.qc.max_translation_mm):
        reasons.append(f"translation {shift:.1f} mm > {cfg.qc.max_translation_mm} mm")
    turn = max(abs(qc["rx_deg"]), abs(qc["ry_deg"]), abs(qc["rz_deg"]))
    if turn > float(cfg.qc.max_rotation_deg):
        reasons.append(f"rotation {turn:.1f} deg > {cfg.qc.max_rotation_deg} deg")
    if qc["metric_final"] > qc["metric_start"]:
        reasons.append("the metric got worse than the headers' alignment")
    if qc["bone_dice_after"] < float(cfg.qc.min_bone_dice):
        reasons.append(f"bone Dice {qc['bone_dice_after']:.2f} < {cfg.qc.min_bone_dice}")
    elif qc["bone_dice_after"] < qc["bone_dice_before"] - float(cfg.qc.max_bone_dice_drop):
        reasons.append(f"bone Dice fell from {qc['bone_dice_before']:.2f} to {qc['bone_dice_after']:.2f}")
    low, high = (float(v) for v in cfg.qc.volume_ratio)
    for class_id in class_ids:
        name = classes.by_id(class_id).name
        ratio = qc.get(f"volume_ratio_{name}")
        if ratio is not None and np.isfinite(ratio) and not low <= ratio <= high:
            reasons.append(f"{name} volume x{ratio:.2f}")
    if qc["cut_by_scan_edge"]:
        reasons.append("the transferred labels reach the native scan's first or last slice")
    return reasons


def transfer(contrast_image: sitk.Image, contrast_labels: sitk.Image, native_image: sitk.Image,
             cfg: DictConfig, class_ids: list[int] | None = None) -> TransferResult:
    """Register, resample and measure; TransferError / RegistrationError say why a pair cannot be done.

    ``class_ids``: the classes to carry over (default: the six heart sub-parts).
    """
    class_ids = heart_ids() if class_ids is None else list(class_ids)
    check_labels(contrast_image, contrast_labels, class_ids)
    fixed_box, moving_box = heart_region(contrast_labels, native_image, contrast_image, cfg)
    fixed = crop_to_box(native_image, fixed_box)
    moving = crop_to_box(contrast_image, moving_box)
    labels_crop = crop_to_box(contrast_labels, moving_box)
    result = register(fixed, moving, cfg.registration, heart_mask(labels_crop, cfg.region.mask_margin_mm))
    start = time.perf_counter()
    transferred = resample_labels(labels_crop, fixed, result.transform, str(cfg.transfer.interpolation))
    # The heart lies inside the fixed box, so pasting the box into an empty native grid loses nothing.
    native_labels = sitk.Image(native_image.GetSize(), sitk.sitkUInt8)
    native_labels.CopyInformation(native_image)
    index = native_image.TransformPhysicalPointToIndex(fixed.GetOrigin())
    native_labels = sitk.Paste(native_labels, transferred, transferred.GetSize(), [0, 0, 0], index)
    transfer_seconds = time.perf_counter() - start

    bone_hu, bone_tolerance_mm = float(cfg.qc.bone_hu), float(cfg.qc.bone_tolerance_mm)
    identity = sitk.Transform(3, sitk.sitkIdentity)
    qc = {
        "metric_start": result.metric_start,
        "metric_rigid": result.metric_rigid,
        "metric_final": result.metric_final,
        "tx_mm": result.translation_mm[0], "ty_mm": result.translation_mm[1], "tz_mm": result.translation_mm[2],
        "rx_deg": result.rotation_deg[0], "ry_deg": result.rotation_deg[1], "rz_deg": result.rotation_deg[2],
        "bone_dice_before": bone_dice(fixed, moving, identity, bone_hu, bone_tolerance_mm),
        "bone_dice_after": bone_dice(fixed, moving, result.transform, bone_hu, bone_tolerance_mm),
        "rigid_seconds": result.rigid_seconds,
        "deformable_seconds": result.deformable_seconds,
        "transfer_seconds": transfer_seconds,
        "cut_by_scan_edge": touches_edge(native_labels),
    }
    before, after = volumes_ml(contrast_labels, class_ids), volumes_ml(native_labels, class_ids)
    for class_id in class_ids:
        name = classes.by_id(class_id).name
        qc[f"volume_ml_contrast_{name}"] = before[class_id]
        qc[f"volume_ml_transferred_{name}"] = after[class_id]
        qc[f"volume_ratio_{name}"] = after[class_id] / before[class_id] if before[class_id] else float("nan")
    reasons = quality_flags(qc, cfg, class_ids)
    qc["flag"] = bool(reasons)
    qc["flag_reason"] = "; ".join(reasons)
    return TransferResult(native_labels, result, qc)


def transfer_labels(contrast_image: sitk.Image, contrast_labels: sitk.Image, native_image: sitk.Image,
                    cfg: DictConfig | None = None) -> tuple[sitk.Image, dict]:
    """Heart labels of the contrast scan carried onto the native scan of the same exam.

    ``contrast_labels``: v1 heart sub-part ids on the contrast image's grid. Returns the labels on the
    native image's grid and the pair's QC values (metric, motion, bone Dice before and after, volumes,
    timings, flag). ``cfg``: the composed ``heart_transfer`` config (None: configs/heart_transfer.yaml).
    Raises TransferError or RegistrationError with the reason when the pair cannot be transferred.
    """
    cfg = cfg if cfg is not None else compose_config("heart_transfer", ["labels_dir=unused"])
    result = transfer(contrast_image, contrast_labels, native_image, cfg)
    return result.labels, result.qc
