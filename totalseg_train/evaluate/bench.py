"""make bench-eval: time the reference evaluation, ours and the I/O floor on a torso-sized 1.5 mm subject.

The workload: the real label maps of the shared CT example (ground truth: the default model's
``example_seg``, prediction: the fast model's ``example_seg_fast``, v2 ids mapped to v1) resampled to
1.5 mm with nearest neighbour and padded with background to a whole-torso grid (330 x 330 x 400).
Timed in one process, each including reading both files:
(a) the reference loop (per class: full-volume masks, Dice, surface-distance),
(b) this implementation (score_files, what one evaluation worker does per subject),
(c) the floor: reading both files plus one np.bincount over gt * K + pred.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train.config import CONFIG_DIR
from totalseg_train.evaluate.label_files import score_files
from totalseg_train.evaluate.reference import reference_scores
from totalseg_train.evaluate.scores import N_LABELS
from totalseg_train.images import Geometry, read_image, write_image
from totalseg_train.label_maps import read_label_map

CT_EXAMPLE = CONFIG_DIR.parent.parent / "shared" / "data" / "ct_example"
GT_FILE, PRED_FILE = "example_seg.nii.gz", "example_seg_fast.nii.gz"
TORSO_SIZE_XYZ = (330, 330, 400)


def example_label_map(path: Path, spacing_mm: float | None = None, size_xyz: tuple[int, int, int] | None = None) -> sitk.Image:
    """A v2 label map of the CT example as v1 ids, resampled (nearest neighbour) and centred in a larger grid."""
    v1 = read_label_map(path, labels_version="v2").image
    if spacing_mm is None:
        return v1
    old_spacing, old_size = np.array(v1.GetSpacing()), np.array(v1.GetSize())
    new_spacing = np.full(3, float(spacing_mm))
    native = np.round(old_size * old_spacing / new_spacing).astype(int)
    size = np.maximum(native, size_xyz) if size_xyz is not None else native
    # Centre the anatomy: move the origin back by half the added voxels along the image axes.
    direction = np.array(v1.GetDirection()).reshape(3, 3)
    origin = np.array(v1.GetOrigin()) - direction @ (((size - native) // 2) * new_spacing)
    return sitk.Resample(v1, [int(s) for s in size], sitk.Transform(), sitk.sitkNearestNeighbor,
                         origin.tolist(), new_spacing.tolist(), v1.GetDirection(), 0, sitk.sitkUInt8)


def write_workload(folder: Path, example_dir: Path = CT_EXAMPLE) -> tuple[Path, Path]:
    """Write the 1.5 mm torso-sized ground truth and prediction; returns their paths."""
    paths = []
    for name in (GT_FILE, PRED_FILE):
        out = folder / name
        write_image(example_label_map(example_dir / name, 1.5, TORSO_SIZE_XYZ), out)
        paths.append(out)
    return paths[0], paths[1]


def reference_on_files(gt_path: Path, pred_path: Path, tolerance_mm: float) -> dict[int, tuple[float, float]]:
    gt, pred = read_label_map(gt_path), read_label_map(pred_path)
    return reference_scores(gt.array, pred.array, gt.spacing_zyx, tolerance_mm)


def floor_on_files(gt_path: Path, pred_path: Path) -> np.ndarray:
    gt_image, pred_image = read_image(gt_path), read_image(pred_path)
    gt, pred = sitk.GetArrayViewFromImage(gt_image), sitk.GetArrayViewFromImage(pred_image)
    return np.bincount((gt.astype(np.intp) * N_LABELS + pred).ravel(), minlength=N_LABELS * N_LABELS)


def _best_time(run: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tolerance-mm", type=float, default=3.0, help="NSD tolerance (default: 3, the paper's)")
    parser.add_argument("--repeats", type=int, default=5, help="runs of (b) and (c); the best counts (default: 5)")
    parser.add_argument("--example-dir", type=Path, default=CT_EXAMPLE, help=f"CT example folder (default: {CT_EXAMPLE})")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = write_workload(Path(tmp), args.example_dir)
        size = Geometry.of_file(gt_path).size
        print(f"workload: {GT_FILE} vs {PRED_FILE}, 1.5 mm, {size[0]} x {size[1]} x {size[2]} voxels, "
              f"tolerance {args.tolerance_mm} mm")
        t_ref, ref = _best_time(lambda: reference_on_files(gt_path, pred_path, args.tolerance_mm), 1)
        t_ours, ours = _best_time(lambda: score_files(gt_path, pred_path, args.tolerance_mm, False), args.repeats)
        t_floor, _ = _best_time(lambda: floor_on_files(gt_path, pred_path), args.repeats)

    ours = ours.set_index("class_id")
    worst = 0.0
    for class_id, (dice, nsd) in ref.items():
        for mine, theirs in ((ours.at[class_id, "dice"], dice), (ours.at[class_id, "nsd"], nsd)):
            if np.isnan(mine) != np.isnan(theirs):
                raise SystemExit(f"class {class_id}: NaN in one result only ({mine} vs {theirs})")
            if not np.isnan(mine):
                worst = max(worst, abs(mine - theirs))
    scored = int(ours["gt_present"].sum())
    print(f"(a) reference loop (surface-distance)   {t_ref:8.3f} s")
    print(f"(b) totalseg_train.evaluate            {t_ours:8.3f} s   {t_ref / t_ours:6.1f}x faster than (a)")
    print(f"(c) floor: read both + one bincount     {t_floor:8.3f} s   (b) takes {t_ours / t_floor:.2f}x (c)")
    print(f"values: {scored} classes scored, largest |difference| to the reference {worst:.2e}")
    if worst > 1e-6:
        raise SystemExit("values differ from the reference by more than 1e-6")


if __name__ == "__main__":
    main()
