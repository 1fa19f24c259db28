"""python -m annotation_loop.simulate: a simulated annotator for the phantom (demo and tests).

It reads the subjects in correction from the ledger and writes, for each, its correction of the label
map the subject was handed (a round's prediction, a start map with the heart model's sub-parts, or
nothing): a careful annotator fixes every voxel that differs from the phantom's truth (exported per
subject by ``python -m data_prep.phantom.truth_labels``), so hands back the truth whatever it was given;
a rough one leaves the labels it was given where they are right and draws the rest with each class's
edges dilated or eroded by one voxel, as in a quick correction. Its effort is then measured by
``ingest`` against the handed map, exactly as a human's would be.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import SimpleITK as sitk
from omegaconf import DictConfig
from scipy import ndimage

from annotation_loop.ledger import IN_CORRECTION, Ledger
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
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


def correct(handed: np.ndarray | None, truth: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """The simulated correction of ``handed`` (None: drawn from scratch): the truth, or with ``rng`` (rough)
    the handed labels that are right kept and everything else drawn by ``roughen``."""
    if rng is None:
        return truth
    drawn = roughen(truth, rng)
    if handed is None:
        return drawn
    return np.where((handed == truth) & (handed != 0), handed, drawn)


def simulate_corrections(cfg: DictConfig) -> list[str]:
    """Write a correction for every subject in correction; returns their ids."""
    ledger = Ledger(cfg.bootstrap.ledger)
    try:
        handed = {s.subject_id: ledger.handed(s) for s in ledger.subjects(IN_CORRECTION)}
    finally:
        ledger.close()
    truth_dir, out = Path(cfg.truth_dir), Path(cfg.out)
    written = []
    for subject_id, handed_file in handed.items():
        truth_path = nifti_path(truth_dir, subject_id)
        if not truth_path.exists():
            raise FileNotFoundError(f"{truth_path}: no truth label for subject {subject_id} "
                                    "(run python -m data_prep.phantom.truth_labels first)")
        truth = read_label_map(truth_path)
        rng, given = None, None
        if cfg.rough:
            # Seeded per subject, so a re-run writes the same correction.
            rng = np.random.default_rng([int(cfg.seed), int.from_bytes(subject_id.encode(), "little") % 2**32])
            given = sitk.GetArrayFromImage(read_label_map(handed_file).image) if handed_file else None
            if given is not None and given.shape != truth.array.shape:
                raise ValueError(f"{handed_file}: shape {given.shape} differs from the truth {truth_path} "
                                 f"{truth.array.shape}")
        corrected = sitk.GetImageFromArray(correct(given, truth.array, rng))
        corrected.CopyInformation(truth.image)
        write_image(corrected, nifti_path(out, subject_id))
        written.append(subject_id)
    return written


@hydra.main(config_path=CONFIG_PATH, config_name="simulate_annotator", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    written = simulate_corrections(cfg)
    print(f"simulated annotator: {len(written)} corrections in {cfg.out}")


if __name__ == "__main__":
    main()
