"""Which curated subjects a training run can use: subjects.csv joined with the image and label folders."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from totalseg_train.images import nifti_path

log = logging.getLogger(__name__)
REQUIRED_COLUMNS = ("subject_id", "patient")


def read_subjects(subjects_csv: str | Path) -> pd.DataFrame:
    path = Path(subjects_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: subjects table not found (run curation first, or set subjects_csv=...)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.subject_id.duplicated().any():
        raise ValueError(f"{path}: duplicate subject ids {sorted(table.subject_id[table.subject_id.duplicated()])}")
    if (table.patient == "").any():
        raise ValueError(f"{path}: subjects without a patient: {sorted(table.subject_id[table.patient == ''])}")
    return table


def load_cohort(subjects_csv: str | Path, images_dir: str | Path, labels_dir: str | Path,
                subject_ids: list[str] | None = None) -> dict[str, str]:
    """subject_id -> patient for the subjects to train on: the given ones, or every subject with a label.

    Subjects without an image are reported and left out; a requested subject without a label is an error.
    """
    table = read_subjects(subjects_csv)
    patient_of = dict(zip(table.subject_id, table.patient))
    if subject_ids is None:
        chosen = [s for s in table.subject_id if nifti_path(labels_dir, s).is_file()]
        unlabeled = len(table) - len(chosen)
        if unlabeled:
            log.info("%d of %d subjects have no label in %s and are not used", unlabeled, len(table), labels_dir)
    else:
        unknown = sorted(set(subject_ids) - set(patient_of))
        if unknown:
            raise KeyError(f"subjects not in {subjects_csv}: {', '.join(unknown)}")
        no_label = sorted(s for s in subject_ids if not nifti_path(labels_dir, s).is_file())
        if no_label:
            raise FileNotFoundError(f"no label in {labels_dir} for: {', '.join(no_label)}")
        chosen = list(dict.fromkeys(subject_ids))
    cohort = {}
    for sid in chosen:
        if nifti_path(images_dir, sid).is_file():
            cohort[sid] = patient_of[sid]
        else:
            log.error("%s: image missing; subject %s is left out", nifti_path(images_dir, sid), sid)
    if not cohort:
        raise ValueError(f"no subject of {subjects_csv} has both an image in {images_dir} and a label in {labels_dir}")
    return cohort
