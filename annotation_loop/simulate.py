"""python -m annotation_loop.simulate: a simulated annotator for the phantom (demo and tests).

It reads the subjects in correction from the ledger and writes, for each, the correction a careful
annotator would hand back: the phantom's truth label map (exported per subject by
``python -m data_prep.phantom.truth_labels``), optionally rough, with each class's edges dilated or
eroded by one voxel as in a quick correction. Its effort is then measured by ``ingest`` exactly as
a human's would be.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import SimpleITK as sitk
from omegaconf import DictConfig
from scipy import ndimage

from annotation_loop.ledger import IN_CORRECTION, Ledger
from totalseg_train.images import nifti_path, write_image
from totalseg_train.label_maps import read_label_map


def roughen(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Dilate or erode every class's edges by one voxel (chosen at random per class)."""
    out = labels.copy()
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        # One voxel of margin so that a dilation can grow past the class's bounding box.
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        mask = labels[box] == index
        if rng.random() < 0.5:
            grown = ndimage.binary_dilation(mask) & (labels[box] == 0)
            out[box][grown] = index
        else:
            rim = mask & ~ndimage.binary_erosion(mask)
            out[box][rim] = 0
    return out


def simulate_corrections(cfg: DictConfig) -> list[str]:
    """Write a correction for every subject in correction; returns their ids."""
    ledger = Ledger(cfg.bootstrap.ledger)
    try:
        subjects = [s.subject_id for s in ledger.subjects(IN_CORRECTION)]
    finally:
        ledger.close()
    truth_dir, out = Path(cfg.truth_dir), Path(cfg.out)
    written = []
    for subject_id in subjects:
        truth_path = nifti_path(truth_dir, subject_id)
        if not truth_path.exists():
            raise FileNotFoundError(f"{truth_path}: no truth label for subject {subject_id} "
                                    "(run python -m data_prep.phantom.truth_labels first)")
        truth = read_label_map(truth_path)
        labels = truth.array
        if cfg.rough:
            # Seeded per subject, so a re-run writes the same correction.
            labels = roughen(labels, np.random.default_rng([int(cfg.seed), int.from_bytes(subject_id.encode(), "little") % 2**32]))
        corrected = sitk.GetImageFromArray(labels)
        corrected.CopyInformation(truth.image)
        write_image(corrected, nifti_path(out, subject_id))
        written.append(subject_id)
    return written


@hydra.main(config_path="../configs", config_name="simulate_annotator", version_base="1.3")
def main(cfg: DictConfig) -> None:
    written = simulate_corrections(cfg)
    print(f"simulated annotator: {len(written)} corrections in {cfg.out}")


if __name__ == "__main__":
    main()
