"""python -m data_prep.phantom.study out=DIR n_subjects=N: a phantom study cohort as NIfTI, for cohort statistics.

Writes ``<out>/images/<subject_id>.nii.gz`` (HU), ``<out>/labels/<subject_id>.nii.gz`` (the exact
truth) and ``<out>/subjects.csv`` with curation's column names (patient, age, sex, site, scanner, contrast
phase), without DICOM and curation: the aging study's cohort of a few hundred subjects in minutes, or a
training's cohort as it is (``make gpu-check``). One exam per patient, drawn like the DICOM cohort's (same
plan, anatomy and planted age effects) but on one scan extent (``extent``). Subjects already written are
skipped.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data_prep.phantom.plan import SCANNERS, ExamPlan, draw_cohort
from data_prep.phantom.dicom_exams import ct_volume, exam_grid
from totalseg_train.atomic import remove_stale_temporaries, write_table
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.images import image_from_array, nifti_path, write_image

SUBJECTS = "subjects.csv"


def study_exams(cfg: DictConfig) -> list[ExamPlan]:
    """Every patient's first exam, on the study's scan extent."""
    exams = [e for e in draw_cohort(cfg) if e.exam_index == 0]
    for exam in exams:
        exam.extent = str(cfg.extent)
    return exams


def subject_id(exam: ExamPlan) -> str:
    return f"study{exam.patient_index:04d}"


def subject_row(exam: ExamPlan) -> dict:
    manufacturer, model, kernel, _ = SCANNERS[exam.scanner]
    # One exam per patient: the patient's pseudonym is the subject's id (a training splits by patient).
    return {"subject_id": subject_id(exam), "patient": subject_id(exam), "sex": exam.sex, "age": exam.age,
            "study_year": exam.study_date.year, "site": f"site{exam.site}", "manufacturer": manufacturer,
            "model": model, "kvp": exam.kvp, "kernel": kernel, "contrast_phase": exam.phase,
            "body_region": exam.extent}


def write_subject(exam: ExamPlan, cfg_dict: dict) -> str:
    """Render one subject and write its image and labels (labels last: their presence means done)."""
    cfg = OmegaConf.create(cfg_dict)
    out = Path(cfg.out)
    sid = subject_id(exam)
    grid = exam_grid(exam, float(cfg.thickness_mm), float(cfg.pixel_spacing_mm))
    labels, hu = ct_volume(exam, cfg, grid, exam.anatomy_seed)
    write_image(image_from_array(hu, grid.spacing, grid.origin), nifti_path(out / "images", sid))
    write_image(image_from_array(labels, grid.spacing, grid.origin), nifti_path(out / "labels", sid))
    return sid


def generate_study(cfg: DictConfig, progress: bool = True) -> pd.DataFrame:
    """Write the study cohort; returns subjects.csv's table."""
    out = Path(cfg.out)
    remove_stale_temporaries(out)
    exams = study_exams(cfg)
    todo = [e for e in exams if not nifti_path(out / "labels", subject_id(e)).is_file()]
    plain = OmegaConf.to_container(cfg, resolve=True)
    bar = dict(total=len(todo), desc="phantom study", unit="subject", disable=not progress)
    if int(cfg.workers) > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=int(cfg.workers)) as pool:
            list(tqdm(pool.map(write_subject, todo, [plain] * len(todo), chunksize=4), **bar))
    else:
        for exam in tqdm(todo, **bar):
            write_subject(exam, plain)
    table = pd.DataFrame([subject_row(e) for e in exams])
    write_table(table, out / SUBJECTS)
    return table


@hydra.main(config_path=CONFIG_PATH, config_name="phantom_study", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    table = generate_study(cfg, progress=bool(cfg.progress))
    print(f"phantom study cohort of {len(table)} subjects in {cfg.out}: images/, labels/, {SUBJECTS}")


if __name__ == "__main__":
    main()
