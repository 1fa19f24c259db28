"""The statistics stage over a cohort: every subject in a worker process, resumable, sharded.

Each subject's table is written to ``<out>/subjects/<subject_id>.parquet`` (atomically) and not
measured again while it is newer than the subject's label map and image and was measured with the
same settings. A run without a shard (or the last shard of a sweep to finish) then gathers every subject
of the labels folder into ``<out>/statistics.parquet`` with the subject's age, sex, site, scanner and
contrast phase from curation's ``subjects.csv``; ``<out>/run.csv`` (``shards/run_<i>of<n>.csv`` for a
shard) holds one row per subject: measured, reused, or the error naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from totalseg_train.atomic import write_table
from totalseg_train.evaluate.folders import list_subjects
from totalseg_train.images import nifti_path
from totalseg_train.shards import Shard, run_sharded
from totalseg_train.statistics.inputs import HuCheck, StatisticsInputError, read_subject
from totalseg_train.statistics.measures import structure_statistics

log = logging.getLogger(__name__)

STATISTICS_FILE = "statistics.parquet"
SUBJECTS_DIR = "subjects"
MEASURED, REUSED, ERROR = "measured", "reused", "error"
RUN_PART = "run"  # a shard's run table: <out>/shards/run_<index>of<count>.csv
RUN_COLUMNS = ["subject_id", "status", "reason", "labels", "image"]
SETTINGS = ("hu_check", "radiomics")  # what shapes a subject's table


@dataclass(frozen=True)
class SubjectJob:
    subject_id: str
    labels: Path
    image: Path
    result: Path
    settings: str              # fingerprint of SETTINGS
    hu_check: HuCheck
    radiomics: dict | None     # {feature_classes, settings} when switched on


def settings_fingerprint(cfg: DictConfig) -> str:
    chosen = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in SETTINGS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _fresh(job: SubjectJob) -> bool:
    if not job.result.is_file():
        return False
    newest_input = max(p.stat().st_mtime_ns for p in (job.labels, job.image) if p.exists())
    if job.result.stat().st_mtime_ns < newest_input:
        return False
    return bool((pd.read_parquet(job.result, columns=["settings"]).settings == job.settings).all())


def measure_subject(job: SubjectJob) -> dict:
    """One subject (a worker task): its run row. Never raises for a bad subject."""
    row = {"subject_id": job.subject_id, "labels": str(job.labels), "image": str(job.image)}
    if not job.image.is_file():
        return {**row, "status": ERROR, "reason": f"{job.image}: no image for the label map {job.labels}"}
    if _fresh(job):
        return {**row, "status": REUSED, "reason": ""}
    try:
        volumes = read_subject(job.labels, job.image, job.hu_check)
    except StatisticsInputError as err:
        return {**row, "status": ERROR, "reason": str(err)}
    table = structure_statistics(volumes.labels, volumes.hu, volumes.spacing_zyx)
    if job.radiomics is not None:
        from totalseg_train.statistics.radiomics_features import radiomics_table

        features = radiomics_table(volumes.image, volumes.label_image, table.class_id.tolist(),
                                   list(job.radiomics["feature_classes"]), job.radiomics.get("settings"))
        table = table.merge(features, on="class_id", how="left")
    table.insert(0, "subject_id", job.subject_id)
    table["settings"] = job.settings
    write_table(table, job.result)
    return {**row, "status": MEASURED, "reason": ""}


def _jobs(cfg: DictConfig, subject_ids: list[str], labels_dir: Path) -> list[SubjectJob]:
    out = Path(cfg.out) / SUBJECTS_DIR
    fingerprint = settings_fingerprint(cfg)
    radiomics = None
    if cfg.radiomics.enabled:
        radiomics = {"feature_classes": list(cfg.radiomics.feature_classes),
                     "settings": OmegaConf.to_container(cfg.radiomics.settings, resolve=True)}
    hu_check = HuCheck(int(cfg.hu_check.corner_voxels), float(cfg.hu_check.air_below_hu))
    return [SubjectJob(s, nifti_path(labels_dir, s), nifti_path(cfg.images_dir, s), out / f"{s}.parquet",
                       fingerprint, hu_check, radiomics) for s in subject_ids]


def subject_metadata(subjects_csv: str | Path, columns: list[str]) -> pd.DataFrame:
    """subject_id and the chosen columns of curation's subjects.csv (empty columns where there is none)."""
    path = Path(subjects_csv)
    if not path.is_file():
        log.warning("no %s: statistics.parquet gets empty %s columns", path, ", ".join(columns))
        return pd.DataFrame(columns=["subject_id", *columns])
    table = pd.read_csv(path, dtype={"subject_id": str})
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: lacks the column(s) {missing}; it has {list(table.columns)}")
    return table[["subject_id", *columns]].drop_duplicates("subject_id")


def gather(cfg: DictConfig, subject_ids: list[str]) -> pd.DataFrame:
    """statistics.parquet: every measured subject's table joined with its metadata."""
    folder = Path(cfg.out) / SUBJECTS_DIR
    parts = [pd.read_parquet(folder / f"{s}.parquet") for s in subject_ids if (folder / f"{s}.parquet").is_file()]
    stats = pd.concat(parts, ignore_index=True).drop(columns="settings") if parts else pd.DataFrame(
        columns=["subject_id", "class_id"])
    meta = subject_metadata(cfg.subjects_csv, list(cfg.metadata))
    table = stats.merge(meta, on="subject_id", how="left")
    write_table(table, Path(cfg.out) / STATISTICS_FILE)
    return table


def _run_all(jobs: list[SubjectJob], workers: int, progress: bool) -> list[dict]:
    bar = dict(total=len(jobs), desc="statistics", unit="subject", disable=not progress)
    if workers <= 1 or len(jobs) <= 1:
        return [measure_subject(job) for job in tqdm(jobs, **bar)]
    # spawn: a model= run has torch threads in this process, which fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        return list(tqdm(pool.map(measure_subject, jobs, chunksize=4), **bar))


def _predicted_labels(cfg: DictConfig, subject_ids: list[str]) -> Path:
    """``model=``: the model's label maps of the images (the engine's predict; done ones are kept)."""
    from totalseg_train.engine.inference import predict

    out = Path(cfg.predicted_dir)
    predict(cfg.model, [nifti_path(cfg.images_dir, s) for s in subject_ids], out, device=cfg.device,
            progress=bool(cfg.progress), verbose=bool(cfg.verbose))
    return out


def run(cfg: DictConfig) -> pd.DataFrame:
    """Measure the subjects of the shard (all without one); returns the run table (one row per subject). One
    run at a time per shard: the shards of a sweep run side by side, and the one that finds every shard's
    run table written gathers statistics.parquet (a run without a shard gathers too)."""
    return run_sharded(lambda part: _run(cfg, part), Shard.from_config(cfg.get("shard")), cfg.out, "statistics",
                       RUN_PART, return_merged=False)  # a shard's own report; the merge gathers statistics.parquet


def _run(cfg: DictConfig, shard: Shard) -> pd.DataFrame:
    out = Path(cfg.out)
    if cfg.model:
        everyone = list_subjects(cfg.images_dir)
        subject_ids = shard.select(everyone)
        labels_dir = _predicted_labels(cfg, subject_ids)
    else:
        labels_dir = Path(cfg.labels_dir)
        if not labels_dir.is_dir():
            raise FileNotFoundError(f"labels_dir {labels_dir} does not exist")
        everyone = list_subjects(labels_dir)
        subject_ids = shard.select(everyone)
    rows = _run_all(_jobs(cfg, subject_ids, labels_dir), int(cfg.workers), bool(cfg.progress))
    report = pd.DataFrame(rows, columns=RUN_COLUMNS)
    write_table(report, out / "run.csv" if shard.whole else shard.part(out, RUN_PART, ".csv"))
    for row in report[report.status == ERROR].itertuples():
        log.error("subject %s not measured: %s", row.subject_id, row.reason)
    if shard.whole:
        gather(cfg, everyone)
    return report
