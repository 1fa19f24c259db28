"""How well the QA flags find planted errors, and how often they raise alarms on clean label maps.

    python -m annotation_loop.qa.flag_bench --cohort demo=DIR [--cohort fine=DIR ...] [--real CT SEG] --out FILE

Each cohort is a folder of clean label maps (v1 ids) or a phantom's ``truth/index.csv`` (then with each series'
CT, read from its DICOM, as the QA stage has the curated CT); ``--real`` adds the
real example CT with its label map, cut at several head-foot extents and redrawn at several spacings to make a
cohort of one anatomy (the cut maps keep their CT for the body).
Per cohort and error kind: recall (planted errors flagged on a planted class) and the false-alarm rate (clean
subjects with any flag), also without the subjects whose only flags are a resected organ reported missing (the
phantom records its resections; such a flag is true of the anatomy, not an error of the map). Errors are planted
on a tenth of the subjects at a time, so that the cohort rules see what a real cohort shows: mostly clean
subjects.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from annotation_loop.qa.flags import FlagParams, cohort_flags, edge_shown
from annotation_loop.qa.label_stats import StatsParams, body_mask_from_ct, measure
from annotation_loop.qa.meshing import VoxelGrid
from annotation_loop.qa.planted_errors import ERROR_KINDS, PlantSettings, found, plant
from totalseg_train import classes
from totalseg_train.label_maps import read_label_map

GOAL_RECALL = 0.90
GOAL_FALSE_ALARMS = 0.05
GROUPS = 10  # errors are planted on one subject in GROUPS at a time
# Errors of a class's shape: the flags judge them only on classes the grid draws at least
# FlagParams.min_thickness_voxels thick (flags.fragmented); recall is given over those and over all.
SHAPE_KINDS = frozenset({"split", "stray_far", "shrunk", "cut_off"})
# A grown class is judged (flags.beyond_edge) where the CT sets the clean class apart from its surroundings.
EDGE_KINDS = frozenset({"grown"})


@dataclass
class Subject:
    subject_id: str
    labels: np.ndarray
    grid: VoxelGrid
    ct: np.ndarray | None = None
    resected: frozenset[str] = frozenset()  # classes the subject's surgery removed, where recorded
    patient: str = ""  # whose scan it is, where known ("": its own patient)
    body: np.ndarray | None = field(init=False, default=None)  # the CT's body, worked out once for every plant

    def __post_init__(self):
        if self.ct is not None:
            self.body = body_mask_from_ct(self.ct, self.grid, StatsParams())

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.grid.spacing_xyz[::-1])


class CohortFile(NamedTuple):
    labels: Path
    dicom: Path | None  # the CT's DICOM folder
    resected: frozenset[str]  # classes the subject's surgery removed
    patient: str  # "" where unknown


def cohort_files(path: Path) -> list[CohortFile]:
    """The label maps of a cohort, each with its CT's DICOM folder, its resected classes and its patient where
    known: a folder's ``*.nii.gz`` (none of them), or the included series of a phantom's truth index."""
    if path.is_file():
        index = pd.read_csv(path, keep_default_na=False)
        included = index[index.expected == "included"]
        return [CohortFile(path.parent.parent / f, path.parent.parent / d, resected_classes(p), patient)
                for f, d, p, patient in zip(included.truth_file, included.dicom_dir, included.pathology,
                                            included.patient_id)]
    return [CohortFile(p, None, frozenset(), "") for p in sorted(path.glob("*.nii.gz"))]


def resected_classes(pathology: str) -> frozenset[str]:
    """The classes a phantom's recorded pathology removed (``resected_kidney_left``: the left kidney)."""
    name = pathology.removeprefix("resected_")
    return frozenset({name}) if name != pathology and name in classes.class_names() else frozenset()


def read_dicom_ct_on(folder: Path, grid_image: sitk.Image) -> np.ndarray:
    """The CT series in ``folder`` on the voxels of ``grid_image`` (float32 HU)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    ct = sitk.Resample(reader.Execute(), grid_image, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(ct)


def read_cohort(folder: Path) -> list[Subject]:
    subjects = []
    for file in cohort_files(folder):
        label_map = read_label_map(file.labels)
        ct = read_dicom_ct_on(file.dicom, label_map.image) if file.dicom is not None else None
        subjects.append(Subject(file.labels.name[: -len(".nii.gz")], label_map.array,
                                VoxelGrid.of_image(label_map.image), ct, file.resected, file.patient))
    if not subjects:
        raise SystemExit(f"no label maps in {folder} (a folder of *.nii.gz or a phantom's truth/index.csv)")
    return subjects


def real_cohort(ct_path: Path, seg_path: Path, n: int = 12, seed: int = 0) -> list[Subject]:
    """The real CT and its label map, cut at ``n`` seeded head-foot extents (each keeps 70-95 % of the slices)
    and redrawn on a grid of seeded spacing (85-115 % of the original per axis): one anatomy as scans of
    different extent and resolution show it."""
    labels = sitk.ReadImage(str(seg_path))
    ct = sitk.ReadImage(str(ct_path))
    if ct.GetSize() != labels.GetSize():
        raise SystemExit(f"{ct_path} {ct.GetSize()} and {seg_path} {labels.GetSize()} differ in size")
    rng = np.random.default_rng(seed)
    axis = int(np.argmax(np.abs(np.reshape(labels.GetDirection(), (3, 3))[2, :])))  # image axis along z
    subjects = []
    for k in range(n):
        size = labels.GetSize()[axis]
        keep = int(size * rng.uniform(0.70, 0.95))
        index, extent = [0, 0, 0], list(labels.GetSize())
        index[axis], extent[axis] = int(rng.integers(0, size - keep + 1)), keep
        spacing = [s * rng.uniform(0.85, 1.15) for s in labels.GetSpacing()]
        shape = [int(e * s0 / s1) for e, s0, s1 in zip(extent, labels.GetSpacing(), spacing)]
        origin = labels.TransformIndexToPhysicalPoint(index)

        def redraw(image, interpolator, fill):
            return sitk.Resample(image, shape, sitk.Transform(), interpolator, origin, spacing,
                                 image.GetDirection(), fill, image.GetPixelID())

        cut = redraw(labels, sitk.sitkNearestNeighbor, 0)
        v1 = classes.map_v2_to_v1(sitk.GetArrayFromImage(cut))
        ct_array = sitk.GetArrayFromImage(redraw(ct, sitk.sitkLinear, -1024)).astype(np.float32)
        subjects.append(Subject(f"real_{k:02d}", v1, VoxelGrid.of_image(cut), ct_array))
    return subjects


def measure_labels(subject: Subject, labels: np.ndarray | None = None):
    """The measurements of ``labels`` (default: the subject's own) on the subject's grid, CT and body."""
    stats = measure(subject.labels if labels is None else labels, subject.grid, StatsParams(), subject.ct,
                    subject.body)
    stats.classes.insert(0, "subject_id", subject.subject_id)
    return stats.classes, {**stats.scan, "patient": subject.patient}


def plant_and_measure(subject: Subject, kind: str, seed: int, settings: PlantSettings):
    planted = plant(subject.labels, subject.spacing_zyx, kind, seed, settings)
    if planted is None:
        return None
    labels, error = planted
    return error, measure_labels(subject, labels)


def _cohort_tables(measured: list[tuple[pd.DataFrame, dict]], ids: list[str]):
    stats = pd.concat([m[0] for m in measured], ignore_index=True)
    scans = pd.DataFrame([m[1] for m in measured], index=pd.Index(ids, name="subject_id"))
    return stats, scans


@dataclass
class Measured:
    """A cohort's clean measurements and, per error kind, each subject's planted error and measurements."""

    name: str
    subjects: list[str]
    spacing_mm: list[float]
    clean: list[tuple[pd.DataFrame, dict]]
    planted: dict[str, list]  # kind -> per subject (PlantedError, measurements) or None
    resected: dict[str, frozenset[str]] = field(default_factory=dict)  # subject -> classes surgery removed


def measure_cohort(name: str, subjects: list[Subject], workers: int, seed: int = 0,
                   settings: PlantSettings = PlantSettings()) -> Measured:
    """Measure every clean subject and every subject with each kind of error planted (seeded)."""
    ids = [s.subject_id for s in subjects]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        clean = list(pool.map(measure_labels, subjects))
        planted = {}
        for k, kind in enumerate(tqdm(ERROR_KINDS, desc=f"{name}: planting and measuring", unit="kind")):
            seeds = [seed * 1000 + 100 * k + i for i in range(len(subjects))]
            planted[kind] = list(pool.map(plant_and_measure, subjects, [kind] * len(subjects), seeds,
                                          [settings] * len(subjects)))
    return Measured(name, ids, list(subjects[0].grid.spacing_xyz), clean, planted,
                    {s.subject_id: s.resected for s in subjects if s.resected})


def judge(measured: Measured, params: FlagParams = FlagParams()) -> dict:
    """Recall per error kind and the false-alarm rate on the clean cohort; also the clean findings."""
    ids, clean = measured.subjects, measured.clean
    table, findings = cohort_flags(*_cohort_tables(clean, ids), params)
    resection = (findings.flag == "missing_expected") & np.array(
        [c in measured.resected.get(s, ()) for s, c in zip(findings.subject_id, findings.class_name)], bool)
    unexplained = findings[~resection].subject_id.nunique()
    result = {"cohort": measured.name, "subjects": len(ids), "spacing_mm": measured.spacing_mm,
              "false_alarm_rate": float((table.n_flags > 0).mean()),
              "resection_only": int((table.n_flags > 0).sum() - unexplained),
              "false_alarm_rate_unexplained": unexplained / len(ids),
              "clean_flags": findings.assign(text=findings.flag + " " + findings.class_name)
              .groupby("text").subject_id.nunique().sort_values(ascending=False).to_dict(),
              "kinds": {}}
    clean_stats = pd.concat([c for c, _ in clean])
    thickness = clean_stats.set_index(["subject_id", "class_name"]).thickness_voxels
    shown = clean_stats.assign(shown=edge_shown(clean_stats, params)).set_index(["subject_id", "class_name"]).shown
    for kind, planted in measured.planted.items():
        hits, n, missed = 0, 0, []
        judged_hits, judged = 0, 0
        for group in range(GROUPS):
            members = [i for i in range(group, len(ids), GROUPS) if planted[i] is not None]
            if not members:
                continue
            cohort = [planted[i][1] if i in members else clean[i] for i in range(len(ids))]
            _, group_findings = cohort_flags(*_cohort_tables(cohort, ids), params)
            for i in members:
                error = planted[i][0]
                hit = found(group_findings[group_findings.subject_id == ids[i]], error)
                visible = True
                if kind in SHAPE_KINDS:
                    visible = all(thickness[ids[i], c] >= params.min_thickness_voxels for c in error.classes)
                elif kind in EDGE_KINDS:
                    visible = all(shown[ids[i], c] for c in error.classes)
                n, hits = n + 1, hits + hit
                judged, judged_hits = judged + visible, judged_hits + (hit and visible)
                if visible and not hit:
                    missed.append(f"{ids[i]}: {error.description}")
        result["kinds"][kind] = {"planted": n, "found": hits, "recall": hits / n if n else None,
                                 "judged": judged, "judged_found": judged_hits,
                                 "judged_recall": judged_hits / judged if judged else None, "missed": missed}
    return result


def _print(result: dict) -> None:
    spacing = " x ".join(f"{s:g}" for s in result["spacing_mm"])
    print(f"\n{result['cohort']}: {result['subjects']} subjects, {spacing} mm")
    print(f"  false alarms: {result['false_alarm_rate']:.0%} of clean subjects flagged "
          f"(goal <= {GOAL_FALSE_ALARMS:.0%}); {result['false_alarm_rate_unexplained']:.0%} without the "
          f"{result['resection_only']} whose only flags report a recorded resection")
    for text, count in result["clean_flags"].items():
        print(f"    {count:3d} x {text}")
    print(f"  {'error kind':16s} {'planted':>7s} {'found':>6s} {'recall':>7s}   {'judged':>6s} {'found':>6s} "
          f"{'recall':>7s}  (judged: shape errors on classes the grid draws >= 3 voxels thick, grown classes "
          f"where the CT shows their edge; goal >= {GOAL_RECALL:.0%})")

    def percent(x):
        return "-" if x is None else f"{x:.0%}"

    for kind, r in result["kinds"].items():
        print(f"  {kind:16s} {r['planted']:7d} {r['found']:6d} {percent(r['recall']):>7s}   {r['judged']:6d} "
              f"{r['judged_found']:6d} {percent(r['judged_recall']):>7s}")
        for text in r["missed"][:3]:
            print(f"      missed {text}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", action="append", default=[], metavar="NAME=DIR",
                        help="a folder of clean v1 label maps, or a phantom's truth/index.csv (repeatable)")
    parser.add_argument("--real", nargs=2, metavar=("CT", "SEG"), help="a real CT and its v2 label map")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    cohorts = []
    for spec in args.cohort:
        name, _, folder = spec.partition("=")
        cohorts.append((name, read_cohort(Path(folder))))
    if args.real:
        cohorts.append(("real", real_cohort(Path(args.real[0]), Path(args.real[1]))))
    if not cohorts:
        parser.error("give at least one --cohort or --real")
    results = []
    for name, subjects in cohorts:
        start = time.perf_counter()
        results.append(judge(measure_cohort(name, subjects, args.workers, args.seed)))
        _print(results[-1])
        print(f"  ({time.perf_counter() - start:.0f} s)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
