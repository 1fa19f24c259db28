"""Evaluate a folder of predicted label maps against a folder of ground truth.

Writes ``<out_dir>/scores.parquet`` (one row per subject and class) and ``<out_dir>/summary.json``
(micro-averages with bootstrap confidence intervals, false-positive classes, missing and failed
subjects). Subjects are scored in parallel processes, one subject in memory per worker.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from totalseg_train.atomic import TMP_MARK, write_table, write_text
from totalseg_train.evaluate.aggregate import BootstrapSettings, summarise
from totalseg_train.evaluate.label_files import score_files
from totalseg_train.evaluate.scores import score_pair
from totalseg_train.evaluate.settings import evaluation_defaults
from totalseg_train.images import NIFTI_SUFFIX, nifti_path, subject_id_of
from totalseg_train.label_maps import LabelFileError
from totalseg_train.shards import Shard, input_key, part_files, run_sharded

log = logging.getLogger(__name__)

SCORES_FILE = "scores.parquet"
SUMMARY_FILE = "summary.json"
SCORES_PART, RESULTS_PART = "scores", "subjects"  # a shard's part: its scores, and its subjects' keys and errors


@dataclass(frozen=True)
class SubjectResult:
    subject_id: str
    scores: pd.DataFrame | None
    error: str | None


def list_subjects(folder: str | Path) -> list[str]:
    """Subject ids of the label maps in a folder (``<subject_id>.nii.gz``), sorted."""
    return sorted(subject_id_of(p) for p in Path(folder).glob(f"*{NIFTI_SUFFIX}") if not p.name.startswith(TMP_MARK))


def score_subject(subject_id: str, gt_dir: Path, pred_dir: Path, tolerance_mm: float, resample: bool) -> SubjectResult:
    """Score one subject (a worker task); a bad file gives an error result, never an exception."""
    gt_path = nifti_path(gt_dir, subject_id)
    if not gt_path.exists():
        return SubjectResult(subject_id, None, f"{gt_path}: ground truth missing")
    try:
        scores = score_files(gt_path, nifti_path(pred_dir, subject_id), tolerance_mm, resample)
    except LabelFileError as err:
        return SubjectResult(subject_id, None, str(err))
    scores.insert(0, "subject_id", subject_id)
    return SubjectResult(subject_id, scores, None)


def _empty_scores() -> pd.DataFrame:
    empty = score_pair(np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.uint8), (1.0, 1.0, 1.0), 0.0).head(0)
    empty.insert(0, "subject_id", pd.Series(dtype=str))
    empty["prediction_missing"] = pd.Series(dtype=bool)
    return empty


def _score_all(
    subject_ids: list[str], gt_dir: Path, pred_dir: Path, tolerance_mm: float, resample: bool, workers: int, progress: bool
) -> list[SubjectResult]:
    bar = tqdm(total=len(subject_ids), desc="evaluate", unit="subject", disable=not progress)
    results = []
    if workers <= 1 or len(subject_ids) <= 1:
        for subject_id in subject_ids:
            results.append(score_subject(subject_id, gt_dir, pred_dir, tolerance_mm, resample))
            bar.update()
    else:
        # spawn: the caller may be a training run holding threads (torch) that fork would copy mid-state.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(subject_ids)), mp_context=context) as pool:
            futures = [pool.submit(score_subject, s, gt_dir, pred_dir, tolerance_mm, resample) for s in subject_ids]
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
    bar.close()
    return sorted(results, key=lambda r: r.subject_id)


def evaluate_folders(
    gt_dir: str | Path,
    pred_dir: str | Path,
    out_dir: str | Path,
    tolerance_mm: float | None = None,
    workers: int | None = None,
    subjects: Sequence[str] | None = None,
    resample: bool | None = None,
    bootstrap: BootstrapSettings | None = None,
    progress: bool = True,
    class_ids: Sequence[int] | None = None,
    shard: Shard = Shard(),
) -> dict[str, Any]:
    """Score every subject (default: every ground-truth file) and write scores.parquet and summary.json.

    ``class_ids``: score only these v1 classes (a model trained on a subset of the classes); default all.

    Settings left as None come from configs/evaluate.yaml. A subject without a prediction file is
    reported as missing and scored 0 for its classes; a subject whose files cannot be compared
    (unreadable, other grid, ids outside the class table) is reported with the error and left out,
    and the others go on. One run at a time per output folder. Returns the summary.

    A ``shard`` of a sweep scores its own subjects into ``<out_dir>/shards/`` and returns a short summary of
    them; the shard that finds every part of its sweep written merges them into scores.parquet and
    summary.json, identical to a run over every subject in one process (a run without a shard merges too,
    scoring only the subjects no part holds for the files as they are now).
    """
    args = (gt_dir, pred_dir, out_dir, tolerance_mm, workers, subjects, resample, bootstrap, progress, class_ids)
    return run_sharded(lambda part: _evaluate(*args, part), shard, out_dir, "evaluate", RESULTS_PART)


def _stored_results(out_dir: Path, keys: dict[str, str]) -> dict[str, SubjectResult]:
    """Subjects scored by shard parts whose files and settings are still those of ``keys``; a newer part wins."""
    found: dict[str, SubjectResult] = {}
    for shard, results_file in part_files(out_dir, RESULTS_PART, ".csv"):
        scores_file = shard.part(out_dir, SCORES_PART, ".parquet")
        if not scores_file.is_file():
            continue
        table = pd.read_csv(results_file, keep_default_na=False, dtype=str)
        by_subject = dict(tuple(pd.read_parquet(scores_file).groupby("subject_id", sort=False)))
        for row in table.itertuples(index=False):
            if keys.get(row.subject_id) != row.input_key:
                continue
            scores = None if row.error else by_subject[row.subject_id].reset_index(drop=True)
            found[row.subject_id] = SubjectResult(row.subject_id, scores, row.error or None)
    return found


def _evaluate(gt_dir, pred_dir, out_dir, tolerance_mm, workers, subjects, resample, bootstrap, progress, class_ids,
              shard: Shard) -> dict[str, Any]:
    defaults = evaluation_defaults()
    tolerance_mm = float(defaults.tolerance_mm if tolerance_mm is None else tolerance_mm)
    workers = int(defaults.workers if workers is None else workers)
    resample = bool(defaults.resample if resample is None else resample)
    bootstrap = bootstrap or BootstrapSettings.from_config(defaults.bootstrap)
    gt_dir, pred_dir, out_dir = Path(gt_dir), Path(pred_dir), Path(out_dir)
    for name, folder in (("ground-truth", gt_dir), ("prediction", pred_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{name} folder {folder} does not exist")
    subject_ids = sorted(subjects) if subjects is not None else list_subjects(gt_dir)
    if len(set(subject_ids)) != len(subject_ids):
        raise ValueError("subject ids are not unique")
    keys = {s: input_key([nifti_path(gt_dir, s), nifti_path(pred_dir, s)], [tolerance_mm, resample])
            for s in subject_ids}
    stored = _stored_results(out_dir, keys)
    mine = shard.select(subject_ids)
    fresh = _score_all([s for s in mine if s not in stored], gt_dir, pred_dir, tolerance_mm, resample, workers,
                       progress)
    results = sorted([*fresh, *(stored[s] for s in mine if s in stored)], key=lambda r: r.subject_id)
    if not shard.whole:
        return _write_part(out_dir, shard, results, keys)

    scored = [r.scores for r in results if r.scores is not None]
    scores = pd.concat(scored, ignore_index=True) if scored else _empty_scores()
    if class_ids is not None:
        scores = scores[scores["class_id"].isin([int(c) for c in class_ids])].reset_index(drop=True)
    failed = {r.subject_id: r.error for r in results if r.error is not None}
    missing = sorted(scores.loc[scores["prediction_missing"], "subject_id"].unique())
    for subject_id, error in failed.items():
        log.error("subject %s not evaluated: %s", subject_id, error)
    if missing:
        log.warning("%d subject(s) without a prediction, scored 0 for their classes: %s", len(missing), ", ".join(missing))

    summary = {
        "gt_dir": str(gt_dir),
        "pred_dir": str(pred_dir),
        "tolerance_mm": tolerance_mm,
        "resample": resample,
        "subjects": {
            "requested": len(subject_ids),
            "scored": len(scored),
            "missing_prediction": missing,
            "failed": failed,
            "predictions_without_ground_truth": sorted(set(list_subjects(pred_dir)) - set(list_subjects(gt_dir))),
        },
        **summarise(scores, bootstrap),
    }
    write_table(scores, out_dir / SCORES_FILE)
    write_text(out_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _write_part(out_dir: Path, shard: Shard, results: list[SubjectResult], keys: dict[str, str]) -> dict[str, Any]:
    """A shard's scores and its subjects' input keys and errors (the results file last: it marks the part done)."""
    scored = [r.scores for r in results if r.scores is not None]
    write_table(pd.concat(scored, ignore_index=True) if scored else _empty_scores(),
                shard.part(out_dir, SCORES_PART, ".parquet"))
    table = pd.DataFrame([(r.subject_id, keys[r.subject_id], r.error or "") for r in results],
                         columns=["subject_id", "input_key", "error"])
    write_table(table, shard.part(out_dir, RESULTS_PART, ".csv"))
    failed = {r.subject_id: r.error for r in results if r.error is not None}
    for subject_id, error in failed.items():
        log.error("subject %s not evaluated: %s", subject_id, error)
    return {"shard": {"index": shard.index, "count": shard.count},
            "subjects": {"requested": len(results), "scored": len(scored), "failed": failed}}
