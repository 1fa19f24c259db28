"""Writing one planned exam: label maps on each series' grid, CT intensities, DICOM files and truth."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from data_prep.phantom import anatomy, ct
from data_prep.phantom.age_effects import AgeEffects
from data_prep.phantom.dicom_writer import uid, write_series
from data_prep.phantom.plan import ELIGIBLE_KINDS, EXPECTED_EXCLUSION, EXTREMITY_EXTENTS, SCANNERS, SITES, ExamPlan
from data_prep.phantom.shapes import (DeformedMotion, Ellipsoid, Grid, Motion, PlateauBump, RigidMotion,
                                      crop_coordinates, paint, rotation)
from totalseg_train import classes
from totalseg_train.images import NIFTI_SUFFIX, image_from_array, write_image

# z range (standard body, mm from the soles) of each scan extent.
EXTENT_Z = {
    "whole_body": (0.0, 1750.0),
    "thorax": (1080.0, 1460.0),
    "abdomen": (860.0, 1200.0),
    "thorax_abdomen": (860.0, 1460.0),
    "head_neck": (1380.0, 1750.0),
    "legs": (40.0, 880.0),
    "hands": (735.0, 870.0),
}
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)

_EXTENT_WORDS = {
    "de": {"whole_body": "Ganzkoerper", "thorax": "Thorax", "abdomen": "Abdomen", "thorax_abdomen": "Thorax-Abdomen",
           "head_neck": "Kopf-Hals", "legs": "Unterschenkel bds", "hands": "Hand"},
    "en": {"whole_body": "WHOLE BODY", "thorax": "CHEST", "abdomen": "ABDOMEN", "thorax_abdomen": "CHEST ABDOMEN",
           "head_neck": "HEAD NECK", "legs": "LEGS", "hands": "HAND"},
}
_PHASE_WORDS = {
    "de": {"native": "nativ", "arterial": "arteriell", "portal_venous": "portalvenös", "late": "Spätphase"},
    "en": {"native": "NON CONTRAST", "arterial": "ARTERIAL", "portal_venous": "PV", "late": "DELAYED"},
}
_BODY_PART = {"whole_body": "WHOLEBODY", "thorax": "CHEST", "abdomen": "ABDOMEN", "thorax_abdomen": "CHEST_ABDOMEN",
              "head_neck": "HEADNECK", "legs": "LEG", "hands": "HAND"}
_PATHOLOGY_TARGET = {"resected_gallbladder": "gallbladder", "resected_spleen": "spleen",
                     "resected_kidney_left": "kidney_left", "cyst_liver": "liver", "cyst_kidney_right": "kidney_right",
                     "lesion_liver": "liver"}


def exam_grid(exam: ExamPlan, thickness: float, pixel_spacing: float) -> Grid:
    """The axial grid a radiographer would plan for this exam: extent in z, field of view in x/y."""
    z0, z1 = (np.array(EXTENT_Z[exam.extent]) * exam.body.height_scale + np.array(exam.z_jitter_mm))
    if exam.extent == "whole_body":
        z0, z1 = 0.0, anatomy.STANDARD_HEIGHT * exam.body.height_scale
    ws = exam.body.width_scale
    if exam.extent == "hands":
        center, half = (exam.hand_side * 228.0 * ws, 15.0), 100.0
    elif exam.extent == "head_neck":
        center, half = (0.0, 0.0), 160.0 * ws
    elif exam.extent == "legs":
        center, half = (0.0, 0.0), 200.0 * ws
    else:
        center, half = (0.0, 0.0), max(250.0, 290.0 * ws)
    n_xy = int(np.ceil(2 * half / pixel_spacing))
    n_z = int(np.floor((z1 - z0) / thickness)) + 1
    origin = (center[0] - half + pixel_spacing / 2, center[1] - half + pixel_spacing / 2, float(z0))
    return Grid(origin, (pixel_spacing, pixel_spacing, thickness), (n_z, n_xy, n_xy))


def rasterize(structures, grid: Grid, motion: Motion | None, skip: set[str]) -> np.ndarray:
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for name, shape in structures:
        if name not in skip:
            paint(labels, grid, shape, classes.id_of(name), motion)
    return labels


def body_masks(body: anatomy.Body, grid: Grid, motion: Motion | None, chunk: int = 48):
    """Skin and below-fat outlines on ``grid``, evaluated in slabs to bound memory."""
    skin = np.zeros(grid.shape, dtype=bool)
    inner = np.zeros(grid.shape, dtype=bool)
    outer_shape, inner_shape = anatomy.BodyOutline(body), anatomy.BodyOutline(body, inner=True)
    for z in range(0, grid.shape[0], chunk):
        region = (slice(z, min(z + chunk, grid.shape[0])), slice(None), slice(None))
        coords = crop_coordinates(grid, region, motion)
        skin[region] = outer_shape.contains(*coords)
        inner[region] = inner_shape.contains(*coords)
    return skin, inner


def _pathology_mask(exam: ExamPlan, structures, labels: np.ndarray, grid: Grid, motion) -> np.ndarray | None:
    if not exam.pathology or exam.pathology.startswith("resected"):
        return None
    target = _PATHOLOGY_TARGET[exam.pathology]
    organ = dict(structures)[target]
    sphere = Ellipsoid(organ.center + np.array([0.0, 0.0, 8.0]), np.full(3, 12.0))
    mask = np.zeros(grid.shape, dtype=np.uint8)
    paint(mask, grid, sphere, 1, motion)
    return (mask > 0) & (labels == classes.id_of(target))


def _lesion_hu(exam: ExamPlan, lut: np.ndarray) -> float:
    """A cyst holds water; a tumour is darker than the liver around it."""
    return 5.0 if "cyst" in exam.pathology else float(lut[classes.id_of("liver")] - 45)


def _motion(exam: ExamPlan, grid: Grid, heart: Ellipsoid) -> Motion | None:
    """The native pair series' motion: rigid about the scan centre, after the breathing displacement of
    the heart (which moves as a whole: the plateau reaches its largest radius) fading around it."""
    if exam.motion is None:
        return None
    center = np.array([grid.axis(d).mean() for d in range(3)])
    rigid = RigidMotion(rotation(*exam.motion["rotation_deg"]), np.array(exam.motion["translation_mm"]), center)
    amplitude = np.array(exam.motion["deformation_mm"])
    if not amplitude.any():
        return rigid
    bump = PlateauBump(amplitude, np.asarray(heart.center, float), float(np.max(heart.radii)),
                       exam.motion["deformation_sigma_mm"])
    return DeformedMotion(rigid, bump)


def _language(exam: ExamPlan) -> str:
    return "en" if exam.site == 1 else "de"


def _describe(exam: ExamPlan, kind: str, phase: str, kernel: str, thickness: float) -> str:
    lang = _language(exam)
    extent = _EXTENT_WORDS[lang][exam.extent]
    if kind == "scout":
        return "Topogramm 0.6 T20s" if lang == "de" else "SCOUT"
    if kind == "few_slices":
        return "Bolus Tracking" if lang == "en" else "Monitoring Bolus"
    if kind == "mr":
        return "t2_tse_tra" if lang == "de" else "AX T2"
    words = f"{extent} {_PHASE_WORDS[lang][phase]} {thickness:g} {kernel}"
    return f"MPR {words}" if kind == "secondary" else words


def _exam_folder(exam: ExamPlan) -> str:
    # Opaque folder names: nothing identifying in the paths of the export either.
    return hashlib.sha1(f"{exam.patient_id}/{exam.exam_id}".encode()).hexdigest()[:12]


def _header(exam: ExamPlan, s, study_uid: str, series_uid: str, frame_uid: str, kernel: str) -> dict:
    manufacturer, model, _, _ = SCANNERS[exam.scanner]
    institution, address = SITES[exam.site]
    lang = _language(exam)
    contrast = exam.phase != "native"
    study_word = ("mit KM" if contrast else "ohne KM") if lang == "de" else ("W CONTRAST" if contrast else "WO CONTRAST")
    header = {
        "PatientName": exam.patient_name,
        "PatientID": exam.patient_id,
        "PatientBirthDate": exam.birth_date.strftime("%Y%m%d"),
        "PatientSex": exam.sex,
        "PatientAge": f"{exam.age:03d}Y",
        "StudyInstanceUID": study_uid,
        "StudyDate": exam.study_date.strftime("%Y%m%d"),
        "StudyTime": "101500",
        "StudyID": str(exam.exam_index + 1),
        "AccessionNumber": exam.accession,
        "StudyDescription": f"CT {_EXTENT_WORDS[lang][exam.extent]} {study_word}",
        "SeriesInstanceUID": series_uid,
        "SeriesNumber": s.series_number,
        "SeriesDescription": _describe(exam, s.kind, s.phase, kernel, s.slice_thickness),
        "Modality": "MR" if s.kind == "mr" else "CT",
        "FrameOfReferenceUID": frame_uid,
        "Manufacturer": manufacturer,
        "ManufacturerModelName": model,
        "InstitutionName": institution,
        "InstitutionAddress": address,
        "ReferringPhysicianName": "Dr^Zuweiser",
        "SliceThickness": f"{s.slice_thickness:g}",
        "ImageType": {
            "scout": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
            "secondary": ["DERIVED", "SECONDARY", "REFORMATTED"],
        }.get(s.kind, ["ORIGINAL", "PRIMARY", "AXIAL"]),
    }
    if s.kind != "mr":
        header.update(KVP=str(exam.kvp), ConvolutionKernel=kernel, GantryDetectorTilt="0")
        # Half of the contrast exams name the agent; the rest only say it in the descriptions.
        if s.phase != "native" and exam.anatomy_seed % 2 == 0:
            header["ContrastBolusAgent"] = "Iopromid 370" if lang == "de" else "OMNIPAQUE 350"
    # BodyPartExamined is often left empty in practice; curation must fall back on descriptions.
    if (exam.anatomy_seed // 2) % 3 != 0:
        header["BodyPartExamined"] = _BODY_PART[exam.extent]
    return header


def _expected(exam: ExamPlan, kind: str) -> str:
    if exam.consent != "yes":
        return "no_consent"
    if kind in ("mr", "scout", "secondary", "few_slices", "gap"):
        return EXPECTED_EXCLUSION[kind]
    if exam.extent in EXTREMITY_EXTENTS:
        return f"{exam.extent}_only"
    if kind == "bone_kernel":
        return EXPECTED_EXCLUSION[kind]
    return "included"


def exam_structures(exam: ExamPlan, cfg) -> tuple[list[tuple[str, object]], set[str]]:
    """The patient's structures at the exam's age (planted age effects applied) and the classes a
    resection removed."""
    rng_anatomy = np.random.default_rng(exam.anatomy_seed)
    structures = anatomy.structures(exam.body, rng_anatomy, float(cfg.jitter_mm), float(cfg.size_jitter))
    structures = AgeEffects.from_config(cfg).apply(structures, exam.age)
    skip = {_PATHOLOGY_TARGET[exam.pathology]} if exam.pathology and exam.pathology.startswith("resected") else set()
    return structures, skip


def ct_volume(exam: ExamPlan, cfg, grid: Grid, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels, HU) of the exam's main series drawn on ``grid`` without DICOM: soft kernel, no motion."""
    structures, skip = exam_structures(exam, cfg)
    labels = rasterize(structures, grid, None, skip)
    skin, inner = body_masks(exam.body, grid, None)
    lesion = _pathology_mask(exam, structures, labels, grid, None)
    lut = ct.tissue_lut(exam.phase, exam.age, AgeEffects.from_config(cfg).hu_offsets(exam.age))
    lesion_hu = None if lesion is None else _lesion_hu(exam, lut)
    hu = ct.synthesize(labels, skin, inner, lut, ct.noise_sigma(exam.kvp, "soft", exam.body.width_scale),
                       np.random.default_rng(seed), lesion=lesion, lesion_hu=lesion_hu)
    return labels, hu


def render_exam(exam: ExamPlan, cfg, out: Path) -> list[dict]:
    """Write every series of ``exam`` (DICOM and truth) under ``out``; returns one index row per series."""
    structures, skip = exam_structures(exam, cfg)
    heart = anatomy.heart_ellipsoid(structures)
    hu_offsets = AgeEffects.from_config(cfg).hu_offsets(exam.age)
    study_uid = uid(cfg.seed, exam.exam_id, "study")
    frame_uid = uid(cfg.seed, exam.exam_id, "frame")
    spacing = float(cfg.pixel_spacing_mm)
    main_thickness = next(s.slice_thickness for s in exam.series if s.kind == "ct")
    main_grid = exam_grid(exam, main_thickness, spacing)
    cache: dict[tuple, tuple] = {}
    series_uids = {s.series_number: uid(cfg.seed, exam.exam_id, s.series_number) for s in exam.series}
    pair = {s.kind: series_uids[s.series_number] for s in exam.series if s.kind in ELIGIBLE_KINDS}
    rows = []
    for s in exam.series:
        _, _, soft, bone = SCANNERS[exam.scanner]
        kernel = bone if s.kernel_type == "bone" else soft
        rng = np.random.default_rng(s.seed)
        series_uid = series_uids[s.series_number]
        folder = Path("dicom") / _exam_folder(exam) / f"S{s.series_number:03d}"
        header = _header(exam, s, study_uid if s.kind != "mr" else uid(cfg.seed, exam.exam_id, "mr-study"), series_uid,
                         frame_uid if s.kind != "mr" else uid(cfg.seed, exam.exam_id, "mr-frame"), kernel)
        truth_file = ""
        motion = None
        if s.kind in ("scout", "mr"):
            pixels, positions, orientation, pix = _projection_or_mr(exam, s.kind, structures, skip, rng, hu_offsets)
        else:
            grid, motion = _series_grid(exam, s, main_grid, spacing, heart)
            key = (grid, motion is not None)
            if key not in cache:
                labels = rasterize(structures, grid, motion, skip)
                cache[key] = (labels, *body_masks(exam.body, grid, motion), _pathology_mask(exam, structures, labels,
                                                                                             grid, motion))
            labels, skin, inner, lesion = cache[key]
            hu_lut = ct.tissue_lut(s.phase, exam.age, hu_offsets)
            lesion_hu = None if lesion is None else _lesion_hu(exam, hu_lut)
            pixels = ct.synthesize(labels, skin, inner, hu_lut, ct.noise_sigma(exam.kvp, s.kernel_type,
                                                                             exam.body.width_scale), rng,
                                   lesion=lesion, lesion_hu=lesion_hu)
            keep = np.arange(grid.shape[0])
            if s.kind == "gap":
                # A few slices lost in the middle: the series no longer has consistent spacing.
                mid = grid.shape[0] // 2
                keep = np.concatenate([keep[:mid], keep[mid + 3:]])
            else:
                truth_file = f"truth/{exam.exam_id}_s{s.series_number:02d}{NIFTI_SUFFIX}"
                write_image(image_from_array(labels, grid.spacing, grid.origin), out / truth_file)
            pixels = pixels[keep]
            z = grid.axis(2)[keep]
            positions = np.stack([np.full_like(z, grid.origin[0]), np.full_like(z, grid.origin[1]), z], axis=1)
            orientation, pix = AXIAL, (grid.spacing[1], grid.spacing[0])
        n = write_series(out / folder, pixels, positions, orientation, pix, header, sop_seed=f"{series_uid}")
        expected = _expected(exam, s.kind)
        paired = ""
        if s.kind in pair and len(pair) == 2:
            paired = pair["ct" if s.kind == "native_pair" else "native_pair"]
        motion_values = exam.motion if (s.kind == "native_pair" and exam.motion) else None
        # The breathing bump in the contrast series' frame (before the rigid motion): beyond the rigid
        # motion, the native series shows the heart moved by rotation @ deformation_d*.
        deformation = motion_values["deformation_mm"] if motion_values else [0.0, 0.0, 0.0]
        # The heart centre as this series shows it: the landmark a registration error is measured at.
        heart_seen = heart.center if motion is None else motion.forward_point(heart.center)
        rows.append({
            "series_uid": series_uid,
            "study_uid": header["StudyInstanceUID"],
            "frame_of_reference_uid": header["FrameOfReferenceUID"],
            "patient_id": exam.patient_id,
            "exam_id": exam.exam_id,
            "series_number": s.series_number,
            "kind": s.kind,
            "modality": header["Modality"],
            "extent": exam.extent,
            "phase": s.phase,
            "kernel": kernel,
            "kernel_type": s.kernel_type,
            "slice_thickness": s.slice_thickness,
            "n_slices": n,
            "consent": exam.consent,
            "expected": expected,
            "eligible": expected == "included",
            "paired_series_uid": paired,
            "motion_tx": motion_values["translation_mm"][0] if motion_values else 0.0,
            "motion_ty": motion_values["translation_mm"][1] if motion_values else 0.0,
            "motion_tz": motion_values["translation_mm"][2] if motion_values else 0.0,
            "motion_rx": motion_values["rotation_deg"][0] if motion_values else 0.0,
            "motion_ry": motion_values["rotation_deg"][1] if motion_values else 0.0,
            "motion_rz": motion_values["rotation_deg"][2] if motion_values else 0.0,
            "deformation_dx": deformation[0],
            "deformation_dy": deformation[1],
            "deformation_dz": deformation[2],
            "deformation_radius_mm": float(np.max(heart.radii)) if motion_values else 0.0,
            "deformation_sigma_mm": motion_values["deformation_sigma_mm"] if motion_values else 0.0,
            "deformation_cx": heart.center[0] if motion_values else 0.0,
            "deformation_cy": heart.center[1] if motion_values else 0.0,
            "deformation_cz": heart.center[2] if motion_values else 0.0,
            "heart_x": heart_seen[0],
            "heart_y": heart_seen[1],
            "heart_z": heart_seen[2],
            "pathology": exam.pathology or "",
            "sex": exam.sex,
            "age": exam.age,
            "study_year": exam.study_date.year,
            "site": exam.site,
            "manufacturer": SCANNERS[exam.scanner][0],
            "kvp": exam.kvp,
            "dicom_dir": folder.as_posix(),
            "truth_file": truth_file,
        })
    return rows


def _series_grid(exam: ExamPlan, s, main_grid: Grid, spacing: float, heart: Ellipsoid) -> tuple[Grid, Motion | None]:
    if s.kind == "secondary":
        return exam_grid(exam, s.slice_thickness, spacing), None
    if s.kind == "few_slices":
        mid = main_grid.origin[2] + main_grid.spacing[2] * (main_grid.shape[0] // 2)
        grid = Grid((main_grid.origin[0], main_grid.origin[1], mid), (spacing, spacing, s.slice_thickness),
                    (3, main_grid.shape[1], main_grid.shape[2]))
        return grid, None
    if s.kind == "native_pair":
        return main_grid, _motion(exam, main_grid, heart)
    return main_grid, None


def _projection_or_mr(exam: ExamPlan, kind: str, structures, skip, rng: np.random.Generator, hu_offsets: dict):
    """A coronal localizer (a projection through a coarse rendering) or a small MR stack."""
    coarse = exam_grid(exam, 8.0, 8.0)
    if kind == "scout":
        labels = rasterize(structures, coarse, None, skip)
        skin, inner = body_masks(exam.body, coarse, None)
        hu = ct.synthesize(labels, skin, inner, ct.tissue_lut("native", exam.age, hu_offsets), 0.0, rng)
        attenuation = (hu.astype(np.float32) + 1000.0).mean(axis=1)  # [z, x]
        image = (attenuation[::-1] * 2.0).astype(np.int16)[None]  # rows run head to feet
        top = coarse.origin[2] + coarse.spacing[2] * (coarse.shape[0] - 1)
        position = np.array([[coarse.origin[0], 0.0, top]])
        return image - 1024, position, CORONAL, (coarse.spacing[2], coarse.spacing[0])
    n = 10
    skin, _ = body_masks(exam.body, Grid(coarse.origin, (8.0, 8.0, 5.0), (n, coarse.shape[1], coarse.shape[2])), None)
    image = (skin * 800 + rng.normal(100, 30, skin.shape)).clip(0, 4095).astype(np.int16)
    z = coarse.origin[2] + 5.0 * np.arange(n)
    positions = np.stack([np.full(n, coarse.origin[0]), np.full(n, coarse.origin[1]), z], axis=1)
    return image, positions, AXIAL, (8.0, 8.0)
