"""make bench-qa: our QA sheets in a cohort run against TotalSegmentator's own preview, side by side.

Workloads: real label maps of the shared example, with v2 ``total`` ids as TotalSegmentator writes them,
each with its CT:
  slab_3mm       the 30-slice abdominal slab (122 x 101 x 30 voxels, 3 mm, 41 classes);
  abdomen_3mm    lung bases to femurs (122 x 101 x 112 voxels, 3 mm, 61 classes);
  abdomen_1.5mm  the same resampled to 1.5 mm (CT linear, labels nearest neighbour; 243 x 201 x 223).

Reference: TotalSegmentator 2.18.0's ``generate_preview`` in its own environment (preview_reference.py),
several previews per process: the first call and the warm ones (their median) are reported.
Ours: the QA stage (annotation_loop.qa.render_subjects, what ``python -m annotation_loop.qa`` runs) on a
cohort of ``--copies`` copies of the workload with their CTs: worker processes measure the flags, then
mesh while one renderer draws, sheets and thumbnails are written, then the grids. The flags alone
(compute_flags) are timed on the same cohort just before; per subject, sheets = (stage - flags) / copies.
Like the reference's warm calls, this runs in a process that has drawn before; the first sheet of a
process (device start, shader compilation) is timed once, apart. Rounds alternate the two sides; each
side's best round counts, the machine being shared.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
from PIL import Image

from annotation_loop.qa.flag_cohort import compute_flags
from annotation_loop.qa.headless import require_adapter
from annotation_loop.qa.render_cohort import render_subjects
from totalseg_train.config import compose_config

GOAL = 3.0  # ours at least this many times faster than the reference's warm preview, at every size


@dataclass(frozen=True)
class Workload:
    name: str
    ct: Path
    labels: Path


def isotropic(image: sitk.Image, spacing_mm: float, interpolator: int, default: float) -> sitk.Image:
    """``image`` resampled to ``spacing_mm`` voxels over the same extent and orientation."""
    size = [int(round(n * s / spacing_mm)) for n, s in zip(image.GetSize(), image.GetSpacing())]
    origin = image.TransformContinuousIndexToPhysicalPoint([(spacing_mm / s - 1) / 2 for s in image.GetSpacing()])
    return sitk.Resample(image, size, sitk.Transform(), interpolator, origin, [spacing_mm] * 3,
                         image.GetDirection(), default, image.GetPixelID())


def prepare_workloads(example: Path, folder: Path) -> list[Workload]:
    fine_ct, fine_labels = folder / "abdomen_1.5mm_ct.nii.gz", folder / "abdomen_1.5mm_labels.nii.gz"
    sitk.WriteImage(isotropic(sitk.ReadImage(str(example / "example_ct.nii.gz")), 1.5, sitk.sitkLinear, -1024),
                    str(fine_ct), True)
    sitk.WriteImage(isotropic(sitk.ReadImage(str(example / "example_ct_seg_fast.nii.gz")), 1.5,
                              sitk.sitkNearestNeighbor, 0), str(fine_labels), True)
    return [Workload("slab_3mm", example / "example_ct_sm.nii.gz", example / "example_seg.nii.gz"),
            Workload("abdomen_3mm", example / "example_ct.nii.gz", example / "example_ct_seg_fast.nii.gz"),
            Workload("abdomen_1.5mm", fine_ct, fine_labels)]


def reference_round(python: Path, workloads: list[Workload], repeats: int, keep: Path) -> dict[str, list[float]]:
    """Seconds of each TotalSegmentator preview call per workload, the process's first call first."""
    script = Path(__file__).with_name("preview_reference.py")
    command = [str(python), str(script), "--repeats", str(repeats), "--keep", str(keep)]
    for w in workloads:
        command += ["--workload", w.name, str(w.ct), str(w.labels)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"TotalSegmentator's preview failed ({python}):\n{result.stderr[-3000:]}")
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["workload"]: row["seconds"] for row in rows}


def our_round(workload: Workload, copies: int, folder: Path, workers: int) -> dict:
    """Our QA stage on ``copies`` copies of the workload; seconds per subject of the flags and of the sheets."""
    if folder.exists():
        shutil.rmtree(folder)
    labels_dir, images_dir = folder / "labels", folder / "images"
    labels_dir.mkdir(parents=True)
    images_dir.mkdir()
    for i in range(copies):
        shutil.copy(workload.labels, labels_dir / f"s{i:02d}.nii.gz")
        shutil.copy(workload.ct, images_dir / f"s{i:02d}.nii.gz")
    cfg = compose_config("qa", [f"labels_dir={labels_dir}", f"images_dir={images_dir}", f"out={folder / 'qa'}",
                                "labels_version=v2", f"workers={workers}"])
    start = time.perf_counter()
    compute_flags(labels_dir, None, cfg, progress=False)
    flags = time.perf_counter() - start
    start = time.perf_counter()
    summary = render_subjects(labels_dir, folder / "qa", cfg, progress=False)
    stage = time.perf_counter() - start
    if len(summary.rendered) != copies:
        sys.exit(f"our QA stage rendered {len(summary.rendered)} of {copies} sheets: {summary.errors}")
    with Image.open(folder / "qa" / "subjects" / "s00.png") as sheet:
        size = sheet.size
    return {"flags": flags / copies, "sheets": (stage - flags) / copies, "stage": stage, "sheet_px": size,
            "mesh": float(summary.renders.mesh_seconds.median()),
            "render": float(summary.renders.render_seconds.median())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-python", type=Path, required=True,
                        help="python of the environment with TotalSegmentator 2.18.0 (make bench-qa builds .venv-tsref)")
    parser.add_argument("--example", type=Path, required=True, help="the shared real example folder (ct_example)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, alternating reference and ours")
    parser.add_argument("--repeats", type=int, default=3, help="reference previews per workload per round")
    parser.add_argument("--copies", type=int, default=12, help="subjects in our cohort run per workload")
    parser.add_argument("--workers", type=int, default=2, help="our meshing worker processes")
    parser.add_argument("--out", type=Path, help="JSON with every figure; sheets of both sides are kept beside it")
    args = parser.parse_args(argv)

    print(f"adapter: {require_adapter()}")
    reference: dict[str, list[list[float]]] = {}
    ours: dict[str, list[dict]] = {}
    keep = args.out.parent / "bench_qa_sheets" if args.out else None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        workloads = prepare_workloads(args.example, tmp)
        keep = keep or tmp / "sheets"
        keep.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        our_round(workloads[0], 1, tmp / "first", args.workers)
        first_run = time.perf_counter() - start
        for round_ in range(1, args.rounds + 1):
            for name, seconds in reference_round(args.reference_python, workloads, args.repeats, keep).items():
                reference.setdefault(name, []).append(seconds)
            for w in workloads:
                ours.setdefault(w.name, []).append(our_round(w, args.copies, tmp / w.name, args.workers))
                shutil.copy(tmp / w.name / "qa" / "subjects" / "s00.png", keep / f"ours_{w.name}.png")
            print(f"round {round_} of {args.rounds} done", flush=True)

    figures = {"ours_first_stage_s": first_run}
    for w in workloads:
        first = min(r[0] for r in reference[w.name])
        warm = min(statistics.median(r[1:]) for r in reference[w.name]) if args.repeats > 1 else first
        best = min(ours[w.name], key=lambda r: r["sheets"])
        figures[w.name] = {"reference_first_s": first, "reference_warm_s": warm, "ours_sheet_s": best["sheets"],
                           "ours_flags_s": min(r["flags"] for r in ours[w.name]), "ours_mesh_s": best["mesh"],
                           "ours_render_s": best["render"], "ours_sheet_px": best["sheet_px"],
                           "ratio_warm": warm / best["sheets"]}
    print(f"\nper subject, seconds ({args.copies} subjects per cohort run, best of {args.rounds} rounds)")
    header = (f"{'workload':15}{'TS first':>10}{'TS warm':>9}{'ours':>8}{'TS warm/ours':>14}"
              f"{'ours: flags':>13}{'mesh':>7}{'render':>8}  sheet px")
    print(header)
    for name, f in figures.items():
        if not isinstance(f, dict):
            continue
        print(f"{name:15}{f['reference_first_s']:>10.2f}{f['reference_warm_s']:>9.2f}{f['ours_sheet_s']:>8.2f}"
              f"{f['ratio_warm']:>13.1f}x{f['ours_flags_s']:>13.2f}{f['ours_mesh_s']:>7.2f}{f['ours_render_s']:>8.2f}"
              f"  {f['ours_sheet_px'][0]} x {f['ours_sheet_px'][1]}")
    print(f"\nours, the first run of a process (one {workloads[0].name} subject, flags included): {first_run:.2f} s "
          "(the GPU device, wgpu's bindings and the shaders start once per process)")
    worst = min(f["ratio_warm"] for f in figures.values() if isinstance(f, dict))
    print(f"\nours vs TotalSegmentator's warm preview, worst workload: {worst:.1f}x (goal: >= {GOAL:g}x at every size) "
          f"-> {'met' if worst >= GOAL else 'NOT met'}")
    print("ours: the sheet (8 views) with worker meshing, PNG and thumbnail; 'mesh' runs in the workers, beside "
          "'render' (render, layout and PNG in the main process); flags are measured before and timed apart")
    if args.out:
        args.out.write_text(json.dumps({"figures": figures, "reference_runs": reference, "our_runs": ours}, indent=1))
        print(f"figures: {args.out}; sheets of both sides: {keep}")


if __name__ == "__main__":
    main()
