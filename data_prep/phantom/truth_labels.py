"""python -m data_prep.phantom.truth_labels: the phantom's exact label maps for the curated subjects.

The only place where curation's private key meets the phantom's truth: each curated subject's
series (by SeriesInstanceUID) is looked up in ``truth/index.csv`` and its truth label map is
written on the curated image's grid as ``<out>/<subject_id>.nii.gz`` (uint8, v1 class ids).
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig

from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.images import Geometry, nifti_path, read_image, write_image
from totalseg_train.label_maps import read_label_map
from totalseg_train.stage_lock import stage_lock


def label_on_grid(label: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``label`` resampled (nearest neighbour, no transform) onto the grid of ``reference``, as uint8.

    The truth and the curated image describe the same voxels, possibly in another axis order
    (curation reorients); the resampling only re-indexes them.
    """
    out = sitk.Resample(label, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    clean = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(out).astype(np.uint8))
    clean.CopyInformation(reference)
    return clean


def export_truth_labels(key_csv: str | Path, truth_root: str | Path, curated_images_dir: str | Path,
                        out_dir: str | Path) -> pd.DataFrame:
    """Write the truth label map of every curated subject that has one, and remove those of subjects no
    longer curated (consent withdrawn, excluded); returns one row per subject: subject_id, truth_file,
    written (True when written now, False when already there), removed. One run at a time per folder."""
    with stage_lock(out_dir, "truth-labels"):
        return _export_truth_labels(key_csv, truth_root, curated_images_dir, out_dir)


def _export_truth_labels(key_csv: str | Path, truth_root: str | Path, curated_images_dir: str | Path,
                        out_dir: str | Path) -> pd.DataFrame:
    key = pd.read_csv(key_csv, dtype=str, keep_default_na=False)
    truth_root, images, out_dir = Path(truth_root), Path(curated_images_dir), Path(out_dir)
    index = pd.read_csv(truth_root / "index.csv", dtype=str, keep_default_na=False)
    truth_of = dict(zip(index["series_uid"], index["truth_file"]))
    rows = []
    for subject_id, series_uid in zip(key["subject_id"], key["SeriesInstanceUID"]):
        image_path, target = nifti_path(images, subject_id), nifti_path(out_dir, subject_id)
        truth_file = truth_of.get(series_uid, "")
        if not image_path.exists():  # no longer curated: its label goes too
            if target.exists():
                target.unlink()
                rows.append({"subject_id": subject_id, "truth_file": "", "written": False, "removed": True})
            continue
        if not truth_file:
            continue  # not a phantom series
        written = not (target.exists() and Geometry.of_file(target).matches(Geometry.of_file(image_path)))
        if written:
            # The phantom's truth_file paths are relative to its raw folder, the parent of truth/.
            label = read_label_map(truth_root.parent / truth_file).image
            write_image(label_on_grid(label, read_image(image_path)), target)
        rows.append({"subject_id": subject_id, "truth_file": truth_file, "written": written, "removed": False})
    return pd.DataFrame(rows, columns=["subject_id", "truth_file", "written", "removed"])


@hydra.main(config_path=CONFIG_PATH, config_name="truth_labels", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    table = export_truth_labels(cfg.key_csv, cfg.truth_root, cfg.images_dir, cfg.out)
    kept = table[~table["removed"]]
    print(f"truth labels of {len(kept)} curated subjects in {cfg.out} ({int(kept['written'].sum())} written now, "
          f"{int(table['removed'].sum())} removed: subjects no longer curated)")


if __name__ == "__main__":
    main()
