"""Generating a whole phantom cohort: exams in parallel processes, resumable, one index table."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data_prep.phantom.plan import ExamPlan, draw_cohort
from data_prep.phantom.dicom_exams import render_exam
from totalseg_train.atomic import remove_stale_temporaries, write_table

INDEX = "truth/index.csv"
CONSENT = "consent.csv"


@dataclass
class CohortSummary:
    out: Path
    n_patients: int
    n_exams: int
    n_series: int
    n_generated: int
    seconds: float
    index: pd.DataFrame


def _part_path(out: Path, exam: ExamPlan) -> Path:
    return out / "truth" / "parts" / f"{exam.exam_id}.csv"


def _render_and_record(exam: ExamPlan, cfg_dict: dict, out: str) -> str:
    cfg = OmegaConf.create(cfg_dict)
    rows = render_exam(exam, cfg, Path(out))
    # The exam's part of the index is written last: its presence means the exam is complete.
    write_table(pd.DataFrame(rows), _part_path(Path(out), exam))
    return exam.exam_id


def generate_cohort(cfg: DictConfig, progress: bool = True) -> CohortSummary:
    """Write the cohort described by ``cfg`` to ``cfg.out``; exams already complete are skipped."""
    start = time.perf_counter()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    exams = draw_cohort(cfg)
    todo = [e for e in exams if not _part_path(out, e).exists()]
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    workers = max(1, int(cfg.workers))
    bar = tqdm(total=len(todo), desc="phantom exams", unit="exam", disable=not progress)
    if workers == 1 or len(todo) <= 1:
        for exam in todo:
            _render_and_record(exam, cfg_dict, str(out))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(_render_and_record, todo, [cfg_dict] * len(todo), [str(out)] * len(todo)):
                bar.update()
    bar.close()
    index = pd.concat([pd.read_csv(_part_path(out, e), keep_default_na=False) for e in exams], ignore_index=True)
    write_table(index, out / INDEX)
    consent = (
        pd.DataFrame({"patient_id": [e.patient_id for e in exams], "research_consent": [e.consent for e in exams]})
        .drop_duplicates("patient_id")
    )
    write_table(consent, out / CONSENT)
    return CohortSummary(out, len(consent), len(exams), len(index), len(todo), time.perf_counter() - start, index)
