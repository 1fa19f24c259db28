"""make bench-heart: transferred heart labels against the native scans' exact truth, beside header-only transfer.

On a phantom cohort (curated, with its truth labels exported), every contrast / native pair is
transferred once with the stage's settings; from that one registration the benchmark scores, in
the same run: the header-only transfer (identity in patient coordinates, what you get without
registration), the rigid stage alone and the full result, each with linear one-hot interpolation and
with nearest neighbour. Per class Dice against the native scan's truth, the registration error at
the heart's centre (the phantom records where the centre lies in each scan), and the seconds of each
stage. Pairs whose heart is cut by the scan's edge are scored but kept apart from the goals.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from data_prep.heart_transfer.pairs import read_pairs
from data_prep.heart_transfer.registration import RegistrationError
from data_prep.heart_transfer.stage import heart_only
from data_prep.heart_transfer.transfer import TransferError, dice, heart_ids, resample_labels, touches_edge, transfer
from totalseg_train import classes
from totalseg_train.config import compose_config
from totalseg_train.images import nifti_path, read_image
from totalseg_train.label_maps import read_label_map

IDENTITY = sitk.Transform(3, sitk.sitkIdentity)
GOAL_DICE, GOAL_ERROR_MM, GOAL_SECONDS = 0.90, 1.0, 30.0


def heart_centres(workspace: Path) -> dict[str, np.ndarray]:
    """subject_id -> the phantom's recorded heart centre in that scan (patient coordinates, mm)."""
    key = pd.read_csv(workspace / "private" / "pseudonym_key.csv", dtype=str)
    index = pd.read_csv(workspace / "raw" / "truth" / "index.csv", dtype={"series_uid": str})
    centre = {r.series_uid: np.array([r.heart_x, r.heart_y, r.heart_z], dtype=float) for r in index.itertuples()}
    return {r.subject_id: centre[r.SeriesInstanceUID] for r in key.itertuples() if r.SeriesInstanceUID in centre}


def score(native_truth: np.ndarray, transferred: sitk.Image) -> dict[str, float]:
    out = sitk.GetArrayViewFromImage(transferred)
    return {classes.by_id(i).name: dice(native_truth == i, out == i) for i in heart_ids()
            if (native_truth == i).any()}


def bench_pair(workspace: Path, truth_dir: Path, contrast_id: str, native_id: str, centres: dict, cfg) -> list[dict]:
    images = workspace / "curated" / "images"
    contrast = read_image(nifti_path(images, contrast_id), sitk.sitkFloat32)
    native = read_image(nifti_path(images, native_id), sitk.sitkFloat32)
    labels = heart_only(read_label_map(nifti_path(truth_dir, contrast_id)).image, "drop", truth_dir)
    truth_image = heart_only(read_label_map(nifti_path(truth_dir, native_id)).image, "drop", truth_dir)
    truth = sitk.GetArrayFromImage(truth_image)
    result = transfer(contrast, labels, native, cfg)
    reg = result.registration
    complete = not (touches_edge(labels) or touches_edge(truth_image))
    methods = {"header only": IDENTITY, "rigid": reg.rigid, "rigid + deformable": reg.transform}
    rows = []
    for method, transform in methods.items():
        for interpolation in ("linear_onehot", "nearest"):
            moved = resample_labels(labels, native, transform, interpolation)
            recovered = np.array(transform.TransformPoint([float(v) for v in centres[native_id]]))
            rows.append({
                "native": native_id, "contrast": contrast_id, "heart_complete": complete,
                "method": method, "interpolation": interpolation,
                "centre_error_mm": float(np.linalg.norm(recovered - centres[contrast_id])),
                "rigid_seconds": reg.rigid_seconds if method != "header only" else 0.0,
                "deformable_seconds": reg.deformable_seconds if method == "rigid + deformable" else 0.0,
                **{f"dice_{k}": v for k, v in score(truth, moved).items()},
            })
    return rows


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and interpolation over the pairs with the whole heart in both scans."""
    complete = table[table.heart_complete]
    dice_cols = [c for c in table.columns if c.startswith("dice_")]
    groups = complete.groupby(["method", "interpolation"], sort=False)
    summary = groups.agg(
        pairs=("native", "count"),
        **{c.removeprefix("dice_"): (c, "mean") for c in dice_cols},
        centre_error_mean_mm=("centre_error_mm", "mean"),
        centre_error_max_mm=("centre_error_mm", "max"),
        rigid_s=("rigid_seconds", "mean"),
        deformable_s=("deformable_seconds", "mean"),
    )
    summary["min_class_dice"] = groups[dice_cols].mean().min(axis=1)
    return summary.reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a curated phantom workspace with truth_labels/")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the per-pair table and the summary")
    parser.add_argument("overrides", nargs="*", help="heart_transfer config overrides, e.g. registration.deformable.enabled=false")
    args = parser.parse_args()
    cfg = compose_config("heart_transfer", ["labels_dir=unused", f"paths.workspace={args.workspace}", *args.overrides])
    centres = heart_centres(args.workspace)
    truth_dir = args.workspace / "truth_labels"
    rows, failed = [], []
    for pair in read_pairs(args.workspace / "curated" / "subjects.csv"):
        try:
            rows += bench_pair(args.workspace, truth_dir, pair.contrast, pair.native, centres, cfg)
        except (TransferError, RegistrationError) as err:
            failed.append({"native": pair.native, "contrast": pair.contrast, "reason": str(err)})
            print(f"  pair {pair.native} <- {pair.contrast}: not transferred ({err})", flush=True)
            continue
        last = rows[-1]
        print(f"  pair {pair.native} <- {pair.contrast}: heart {'complete' if last['heart_complete'] else 'cut'}, "
              f"rigid {last['rigid_seconds']:.1f} s, deformable {last['deformable_seconds']:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = summarise(table)
    pd.set_option("display.width", 200)
    print(f"\nheart label transfer on {table.native.nunique()} phantom pairs "
          f"({int(table.drop_duplicates('native').heart_complete.sum())} with the whole heart in both scans; "
          f"{len(failed)} more could not be transferred); "
          "mean Dice per class against the native truth:")
    print(summary.round(3).to_string(index=False))
    best = summary[(summary.method == "rigid + deformable" if cfg.registration.deformable.enabled else
                    summary.method == "rigid") & (summary.interpolation == str(cfg.transfer.interpolation))].iloc[0]
    header = summary[(summary.method == "header only") & (summary.interpolation == "nearest")].iloc[0]
    seconds = best.rigid_s + best.deformable_s
    print(f"\nstage settings ({best.method}, {best.interpolation}): lowest class Dice {best.min_class_dice:.3f} "
          f"(goal >= {GOAL_DICE}), heart centre error mean {best.centre_error_mean_mm:.2f} / max "
          f"{best.centre_error_max_mm:.2f} mm (goal <= {GOAL_ERROR_MM}), {seconds:.1f} s per pair "
          f"(goal < {GOAL_SECONDS:.0f})")
    print(f"header only: lowest class Dice {header.min_class_dice:.3f}, centre error mean "
          f"{header.centre_error_mean_mm:.2f} mm; registration gains "
          f"{best.min_class_dice - header.min_class_dice:+.3f} Dice on the worst class")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"pairs": rows, "failed": failed, "summary": summary.to_dict(orient="records")}, indent=1,
                                       default=float) + "\n")


if __name__ == "__main__":
    main()
