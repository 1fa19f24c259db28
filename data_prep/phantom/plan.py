"""The cohort plan: who the patients are, which exams and series they have, and what curation
should decide about each series. Drawing the plan is cheap; rendering it is the expensive part.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np

from data_prep.phantom.anatomy import Body

STUDY_YEARS = (2012, 2016, 2020)
EXTREMITY_EXTENTS = ("legs", "hands")

# What curation is expected to decide for each kind of series (the reason when excluded).
EXPECTED_EXCLUSION = {
    "scout": "localizer",
    "mr": "not_ct",
    "secondary": "derived",
    "few_slices": "too_few_slices",
    "gap": "inconsistent_spacing",
    "bone_kernel": "not_selected",
}
ELIGIBLE_KINDS = ("ct", "native_pair")

SITES = (
    ("Kantonsspital Nordstadt", "Spitalstrasse 21, 4031 Nordstadt"),
    ("Universitaetsklinik Seeberg", "Klinikweg 3, 8091 Seeberg"),
    ("Regionalspital Talheim", "Hauptgasse 7, 3600 Talheim"),
)
SCANNERS = (
    # manufacturer, model, soft kernel, bone kernel
    ("SIEMENS", "SOMATOM Definition Flash", "B30f", "B70f"),
    ("GE MEDICAL SYSTEMS", "Revolution CT", "STANDARD", "BONE"),
    ("Philips", "iCT 256", "B", "D"),
    ("TOSHIBA", "Aquilion ONE", "FC08", "FC30"),
)
FIRST_NAMES = {"M": ("Hans", "Peter", "Luca", "Marco", "Urs", "Jonas", "Reto", "Beat"),
               "F": ("Anna", "Maria", "Ursula", "Lea", "Sandra", "Petra", "Ruth", "Nina")}
LAST_NAMES = ("Meier", "Keller", "Brunner", "Huber", "Schmid", "Frei", "Gerber", "Moser", "Baumann", "Zwahlen")
PATHOLOGIES = ("resected_gallbladder", "resected_spleen", "resected_kidney_left", "cyst_liver", "cyst_kidney_right",
               "lesion_liver")


@dataclass
class SeriesPlan:
    series_number: int
    kind: str  # ct | native_pair | bone_kernel | scout | few_slices | secondary | gap | mr
    phase: str
    kernel_type: str  # soft | bone
    slice_thickness: float
    seed: int


@dataclass
class ExamPlan:
    patient_index: int
    exam_index: int
    patient_id: str
    patient_name: str
    birth_date: date
    sex: str
    age: int
    study_date: date
    accession: str
    site: int
    scanner: int
    kvp: int
    extent: str
    phase: str
    consent: str
    body: Body
    anatomy_seed: int  # one patient, one anatomy across exams
    z_jitter_mm: tuple[float, float]
    hand_side: int
    pathology: str | None
    series: list[SeriesPlan] = field(default_factory=list)
    # Motion of the native series of a contrast/native pair: rigid (translation_mm, rotation_deg) on top
    # of a breathing displacement of the heart (deformation_mm), fading around it (deformation_sigma_mm).
    motion: dict | None = None

    @property
    def exam_id(self) -> str:
        return f"p{self.patient_index:04d}_e{self.exam_index}"


def _choice(rng: np.random.Generator, weights: dict) -> str:
    keys = list(weights)
    p = np.array([float(weights[k]) for k in keys])
    return keys[rng.choice(len(keys), p=p / p.sum())]


# Fixed roles of the first patients: a small cohort still holds every case curation must see.
_ROLES = (
    dict(extent="whole_body", phase="arterial", consent="yes", thickness=3.0, pathology=None, bone_kernel=True),
    dict(extent="thorax_abdomen", phase="portal_venous", consent="yes", pair=True, scout=True),
    dict(consent="no"),
    dict(extent="legs", consent="yes"),
    dict(extent="hands", consent="yes"),
    dict(extent="abdomen", consent="yes", scout=True, few_slices=True, secondary=True, gap=True, mr=True),
    dict(consent="refused"),
    dict(extent="thorax", phase="native", consent="yes", n_exams=2),
)


def draw_cohort(cfg) -> list[ExamPlan]:
    """All exams of the cohort described by the phantom config (deterministic in ``cfg.seed``)."""
    rng = np.random.default_rng(int(cfg.seed))
    exams: list[ExamPlan] = []
    for p in range(int(cfg.n_subjects)):
        role = _ROLES[p] if p < len(_ROLES) else {}
        second = rng.random() < cfg.rates.second_exam
        n_exams = role.get("n_exams", 2 if second else 1)
        sex = "M" if rng.random() < 0.5 else "F"
        body = Body(
            height_scale=float(rng.normal(1.0 if sex == "M" else 0.94, 0.035)),
            width_scale=float(np.clip(rng.normal(1.0 if sex == "M" else 0.93, 0.08), 0.78, 1.25)),
            fat_fraction=float(np.clip(rng.normal(0.12, 0.04), 0.05, 0.25)),
            sex=sex,
        )
        consent = role.get("consent") or _choice(rng, cfg.consent)
        age0 = int(rng.integers(18, 86))
        birth = date(2012 - age0, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
        name = f"{LAST_NAMES[rng.integers(len(LAST_NAMES))]}^{FIRST_NAMES[sex][rng.integers(8)]}"
        patient_id = f"PID{rng.integers(10**6, 10**7)}"
        anatomy_seed = int(rng.integers(2**31))
        years = sorted(rng.choice(STUDY_YEARS, size=n_exams, replace=False))
        for e, year in enumerate(years):
            exams.append(_draw_exam(cfg, rng, role, p, e, int(year), patient_id, name, birth, sex, body, consent,
                                    anatomy_seed))
    return exams


def breathing_displacement(max_mm: float, seed: int) -> list[float]:
    """The heart's non-rigid displacement (x, y, z, mm) in a native pair series: between half and all
    of ``max_mm`` long, mostly cranio-caudal and antero-posterior as in breathing; zeros if ``max_mm`` is 0."""
    # A generator of its own, derived from the pair series' seed: the cohort's random stream, and
    # with it every other draw of every exam, stays what it was before deformations existed.
    rng = np.random.default_rng([seed, 1])
    direction = rng.normal(0.0, 1.0, 3) * np.array([0.2, 0.5, 1.0])
    length = rng.uniform(0.5, 1.0) * max_mm
    return [float(v) for v in direction / np.linalg.norm(direction) * length]


def _draw_exam(cfg, rng, role, p, e, year, patient_id, name, birth, sex, body, consent, anatomy_seed) -> ExamPlan:
    extent = role.get("extent") or _choice(rng, cfg.extents)
    phase = role.get("phase") or _choice(rng, cfg.phases)
    study_date = date(year, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    thickness_cfg = cfg.slice_thickness_mm
    thickness = role.get("thickness") or float(
        rng.choice(list(thickness_cfg["values"]), p=np.array(thickness_cfg["weights"]) / sum(thickness_cfg["weights"]))
    )
    rates = cfg.rates
    pathology = role.get("pathology", "draw")
    if pathology == "draw":
        pathology = str(rng.choice(PATHOLOGIES)) if rng.random() < rates.pathology else None
    exam = ExamPlan(
        patient_index=p,
        exam_index=e,
        patient_id=patient_id,
        patient_name=name,
        birth_date=birth,
        sex=sex,
        age=study_date.year - birth.year - ((study_date.month, study_date.day) < (birth.month, birth.day)),
        study_date=study_date,
        accession=f"ACC{rng.integers(10**8, 10**9)}",
        site=int(rng.integers(len(SITES))),
        scanner=int(rng.integers(len(SCANNERS))),
        kvp=int(rng.choice([80, 100, 120, 120, 140])),
        extent=extent,
        phase=phase,
        consent=consent,
        body=body,
        anatomy_seed=anatomy_seed,
        z_jitter_mm=(float(rng.normal(0, 15)), float(rng.normal(0, 15))),
        hand_side=int(rng.choice([-1, 1])),
        pathology=pathology,
    )

    def want(key: str) -> bool:
        return bool(role[key]) if key in role else bool(rng.random() < rates[key])

    def seed() -> int:
        return int(rng.integers(2**31))

    number = 1
    series = []
    if want("scout"):
        series.append(SeriesPlan(number, "scout", phase, "soft", 0.6, seed()))
        number += 1
    if want("few_slices"):
        series.append(SeriesPlan(number, "few_slices", "native", "soft", 10.0, seed()))
        number += 1
    pair = (role.get("pair") or (phase != "native" and rng.random() < rates.contrast_native_pair)) and (
        extent not in EXTREMITY_EXTENTS
    )
    if pair:
        series.append(SeriesPlan(number, "native_pair", "native", "soft", thickness, seed()))
        number += 1
        m = cfg.pair_motion
        exam.motion = {
            "translation_mm": [float(v) for v in rng.uniform(-1, 1, 3) * m.max_translation_mm / np.sqrt(3)],
            "rotation_deg": [float(v) for v in rng.uniform(-1, 1, 3) * m.max_rotation_deg / np.sqrt(3)],
            "deformation_mm": breathing_displacement(float(m.deformation_mm), series[-1].seed),
            "deformation_sigma_mm": float(m.deformation_sigma_mm),
        }
    series.append(SeriesPlan(number, "ct", phase, "soft", thickness, seed()))
    number += 1
    if want("bone_kernel"):
        series.append(SeriesPlan(number, "bone_kernel", phase, "bone", thickness, seed()))
        number += 1
    if want("secondary"):
        series.append(SeriesPlan(number, "secondary", phase, "soft", 5.0, seed()))
        number += 1
    if want("gap"):
        series.append(SeriesPlan(number, "gap", phase, "soft", thickness, seed()))
        number += 1
    if want("mr"):
        series.append(SeriesPlan(number, "mr", "native", "soft", 5.0, seed()))
    exam.series = series
    return exam

