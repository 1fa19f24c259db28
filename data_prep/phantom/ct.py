"""CT intensities (Hounsfield units) of the phantom: tissue values by phase, age and scanner noise."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from totalseg_train import classes

PHASES = ("native", "arterial", "portal_venous", "late")
CONTRAST_PHASES = PHASES[1:]

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 35.0

# HU by phase (native, arterial, portal venous, late) for classes whose value depends on contrast.
_ENHANCING = {
    "arterial_blood": (42, 300, 180, 120),  # aorta, iliac arteries, left heart
    "right_heart_blood": (42, 250, 170, 120),  # right heart, pulmonary artery
    "venous_blood": (40, 155, 160, 120),
    "portal_blood": (40, 160, 190, 120),
    "liver": (58, 75, 110, 90),
    "spleen": (48, 120, 115, 95),
    "kidney": (32, 160, 170, 140),
    "pancreas": (42, 100, 95, 70),
    "adrenal_gland": (35, 70, 65, 55),
    "heart_myocardium": (45, 110, 100, 90),
    "muscle": (50, 58, 60, 58),
}
_STATIC = {
    "lung": -850.0,
    "trachea": -950.0,
    "gallbladder": 12.0,
    "urinary_bladder": 10.0,
    "brain": 35.0,
    "face": 45.0,
    "bowel": 30.0,
    "esophagus": 40.0,
}
_BONE_HU = {"vertebrae": 420.0, "sacrum": 420.0, "hip": 520.0, "rib": 600.0, "scapula": 650.0, "clavicula": 750.0,
            "humerus": 900.0, "femur": 950.0}

KVP_NOISE_HU = {80: 22.0, 100: 15.0, 120: 11.0, 140: 9.0}
KERNEL_NOISE_FACTOR = {"soft": 1.0, "bone": 2.2}


def _tissue_of(name: str) -> str:
    if name.startswith("lung_"):
        return "lung"
    if name in ("aorta",) or name.startswith("iliac_artery") or name in ("heart_atrium_left", "heart_ventricle_left"):
        return "arterial_blood"
    if name in ("heart_atrium_right", "heart_ventricle_right", "pulmonary_artery"):
        return "right_heart_blood"
    if name == "inferior_vena_cava" or name.startswith("iliac_vena"):
        return "venous_blood"
    if name == "portal_vein_and_splenic_vein":
        return "portal_blood"
    if name.startswith("kidney"):
        return "kidney"
    if name.startswith("adrenal_gland"):
        return "adrenal_gland"
    if name in ("small_bowel", "duodenum", "colon", "stomach"):
        return "bowel"
    if classes.by_name(name).category == "muscle":
        return "muscle"
    return name


def tissue_lut(phase: str, age: float, offsets: Mapping[str, float] | None = None) -> np.ndarray:
    """HU for every class id (index 0 unused), given the contrast phase and the patient's age.

    ``offsets``: HU added to named classes (the planted age effects, ``AgeEffects.hu_offsets``)."""
    if phase not in PHASES:
        raise ValueError(f"unknown contrast phase {phase!r}; phases are {PHASES}")
    k = PHASES.index(phase)
    lut = np.full(256, SOFT_TISSUE_HU, dtype=np.float32)
    # Cancellous bone loses density with age; cortical long bones much less so.
    age_loss = max(0.0, age - 30.0)
    for cls in classes.all_classes():
        tissue = _tissue_of(cls.name)
        if cls.category == "bone":
            base = next(v for prefix, v in _BONE_HU.items() if cls.name.startswith(prefix))
            loss = 2.0 * age_loss if base < 600 else 0.8 * age_loss
            lut[cls.id] = max(base - loss, 320.0)
        elif tissue in _ENHANCING:
            lut[cls.id] = _ENHANCING[tissue][k]
        else:
            lut[cls.id] = _STATIC[tissue]
    for name, offset in (offsets or {}).items():
        lut[classes.id_of(name)] += offset
    return lut


def noise_sigma(kvp: int, kernel_type: str, width_scale: float) -> float:
    """Image noise (HU, one standard deviation): higher at low kVp, sharp kernels and large patients."""
    return KVP_NOISE_HU[kvp] * KERNEL_NOISE_FACTOR[kernel_type] * width_scale


def synthesize(
    labels: np.ndarray,
    body: np.ndarray,
    inner: np.ndarray,
    lut: np.ndarray,
    sigma: float,
    rng: np.random.Generator,
    lesion: np.ndarray | None = None,
    lesion_hu: float | None = None,
) -> np.ndarray:
    """CT volume (int16 HU) from a label map, the skin and below-fat outlines and a tissue table.

    ``lesion`` marks voxels (a cyst or a tumour inside an organ) that keep their organ label
    but take ``lesion_hu``.
    """
    hu = np.where(body, np.float32(FAT_HU), np.float32(AIR_HU))
    hu[inner] = SOFT_TISSUE_HU
    labelled = labels > 0
    hu[labelled] = lut[labels[labelled]]
    if lesion is not None:
        hu[lesion] = lesion_hu
    if sigma > 0:
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
