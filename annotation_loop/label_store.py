"""Where label files live in the annotation folder, by state, and how final labels are stored.

Final labels are versioned (``final/versions/<subject>/v001.nii.gz``, ``v002`` ...) and a version
is never overwritten. ``final/labels/<subject>.nii.gz`` is a hard link to the newest version: the
folder a training run reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from totalseg_train.atomic import TMP_MARK
from totalseg_train.images import NIFTI_SUFFIX, Geometry, nifti_path, write_image
from totalseg_train.label_maps import read_label_map


class FinalLabelExists(RuntimeError):
    """A final label version already exists with other content; corrections are never overwritten."""


def same_labels(a: sitk.Image, b: sitk.Image) -> bool:
    """The same label map: equal grid and equal ids voxel for voxel."""
    return (Geometry.of_image(a).matches(Geometry.of_image(b))
            and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))


class LabelStore:
    def __init__(self, annotation_dir: str | Path):
        self.root = Path(annotation_dir)

    def predicted_dir(self, round_number: int) -> Path:
        return self.root / "predicted" / f"round_{round_number:02d}"

    def predicted(self, round_number: int, subject_id: str) -> Path:
        return nifti_path(self.predicted_dir(round_number), subject_id)

    def start_map(self, subject_id: str) -> Path:
        """The label map a subject drawn from scratch starts from (the heart model's sub-parts)."""
        return nifti_path(self.root / "start", subject_id)

    def version(self, subject_id: str, version: int) -> Path:
        return self.root / "final" / "versions" / subject_id / f"v{version:03d}{NIFTI_SUFFIX}"

    @property
    def current_dir(self) -> Path:
        return self.root / "final" / "labels"

    def current(self, subject_id: str) -> Path:
        return nifti_path(self.current_dir, subject_id)

    def round_dir(self, round_number: int) -> Path:
        return self.root / "rounds" / f"round_{round_number:02d}"

    def store_final(self, subject_id: str, version: int, label: sitk.Image) -> Path:
        """Write version ``version`` of a subject's final label and point ``final/labels`` at it.

        Re-storing identical content is a no-op (a resumed ingest); different content for an
        existing version raises FinalLabelExists.
        """
        path = self.version(subject_id, version)
        if path.exists():
            if not same_labels(read_label_map(path).image, label):
                raise FinalLabelExists(f"{path} exists with other content; final labels are never overwritten")
        else:
            write_image(label, path)
        link_latest(path, self.current(subject_id))
        return path


def link_latest(target: Path, link: Path) -> None:
    """Make ``link`` a hard link to ``target``, replacing an older link atomically."""
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f"{TMP_MARK}{os.getpid()}-{link.name}")
    tmp.unlink(missing_ok=True)
    os.link(target, tmp)
    os.replace(tmp, link)
