"""Export curated images and their labels to nnU-Net's raw format (imagesTr, labelsTr, dataset.json).

Only the subjects given (train and validation) are exported: test subjects never reach planning,
preprocessing or training. Labels are read under the one label-map policy (``totalseg_train.label_maps``),
checked against their image (same grid; a cut-off image is an error too) and renumbered to the part
model's local ids. A subject that fails is reported with the file and the problem and left out; the
rest of the cohort goes on. Re-running skips subjects whose exported files are newer than their
sources and removes files of subjects no longer in the dataset.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from totalseg_train.atomic import atomic_path, remove_stale_temporaries, write_table, write_text
from totalseg_train.engine.datasets import PartDataset
from totalseg_train.images import NIFTI_SUFFIX, Geometry, ImageFileError, nifti_path, subject_id_of, write_image
from totalseg_train.label_maps import read_label_map

log = logging.getLogger(__name__)
CHANNEL = "_0000"  # nnU-Net's channel suffix of the single CT channel


@dataclass(frozen=True)
class ExportJob:
    subject_id: str
    image: Path
    label: Path
    out_image: Path
    out_label: Path
    to_local: np.ndarray


def _up_to_date(target: Path, *sources: Path) -> bool:
    return target.is_file() and all(target.stat().st_mtime_ns >= s.stat().st_mtime_ns for s in sources)


def _link_or_copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(source, tmp)


def export_subject(job: ExportJob) -> tuple[str, str, str]:
    """Export one subject; returns (subject_id, status, message) with status exported|skipped|error."""
    if _up_to_date(job.out_image, job.image) and _up_to_date(job.out_label, job.label, job.image):
        return job.subject_id, "skipped", ""
    try:
        image_geometry = Geometry.of_file(job.image)  # the image is linked, not read: its header and length
        label = read_label_map(job.label)
    except ImageFileError as err:
        return job.subject_id, "error", str(err)
    label_geometry = Geometry.of_image(label.image)
    if not image_geometry.matches(label_geometry):
        return job.subject_id, "error", (f"{job.label}: label grid ({label_geometry.describe()}) differs from "
                                         f"the image {job.image} ({image_geometry.describe()})")
    local = sitk.GetImageFromArray(job.to_local[label.array])
    local.CopyInformation(label.image)
    _link_or_copy(job.image, job.out_image)
    write_image(local, job.out_label)
    return job.subject_id, "exported", ""


def raw_dataset_dir(raw_root: str | Path, dataset: PartDataset) -> Path:
    return Path(raw_root) / dataset.name


def _remove_other_subjects(folder: Path, keep: set[str], suffix: str) -> None:
    for path in folder.glob(f"*{NIFTI_SUFFIX}"):
        if subject_id_of(path).removesuffix(suffix) not in keep:
            path.unlink()


def export_dataset(dataset: PartDataset, subject_ids: list[str], images_dir: str | Path, labels_dir: str | Path,
                   raw_root: str | Path, workers: int = 1, progress: bool = True) -> pd.DataFrame:
    """Write Dataset<id>_<name> for these subjects; returns the export table (subject_id, status, message)."""
    folder = raw_dataset_dir(raw_root, dataset)
    images_tr, labels_tr = folder / "imagesTr", folder / "labelsTr"
    for sub in (images_tr, labels_tr):
        sub.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(sub)
    keep = set(subject_ids)
    _remove_other_subjects(images_tr, keep, CHANNEL)
    _remove_other_subjects(labels_tr, keep, "")
    to_local = dataset.to_local()
    jobs = [ExportJob(sid, nifti_path(images_dir, sid), nifti_path(labels_dir, sid),
                      nifti_path(images_tr, f"{sid}{CHANNEL}"), nifti_path(labels_tr, sid), to_local)
            for sid in sorted(subject_ids)]
    bar = dict(total=len(jobs), desc=f"export {dataset.name}", unit="subject", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(tqdm(pool.map(export_subject, jobs), **bar))
    else:
        rows = [export_subject(job) for job in tqdm(jobs, **bar)]
    table = pd.DataFrame(rows, columns=["subject_id", "status", "message"])
    for row in table[table.status == "error"].itertuples():
        log.error("subject %s left out of %s: %s", row.subject_id, dataset.name, row.message)
        for path in (nifti_path(images_tr, f"{row.subject_id}{CHANNEL}"), nifti_path(labels_tr, row.subject_id)):
            path.unlink(missing_ok=True)
    exported = int((table.status != "error").sum())
    if exported == 0:
        raise ValueError(f"no subject could be exported to {folder}; see the errors above")
    write_text(folder / "dataset.json", json.dumps(dataset.dataset_json(exported), indent=1) + "\n")
    write_table(table, folder / "export.csv")
    return table


def exported_subjects(table: pd.DataFrame) -> list[str]:
    return sorted(table.subject_id[table.status != "error"])
