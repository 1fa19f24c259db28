"""compute_flags: measure every subject of a label folder in parallel and apply the QA flag rules."""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from annotation_loop.qa.flags import FlagParams, cohort_flags
from annotation_loop.qa.label_stats import CLASS_COLUMNS, StatsParams, measure
from annotation_loop.qa.meshing import VoxelGrid
from annotation_loop.qa.subjects import read_ct_on, subject_ids as list_subjects
from totalseg_train.atomic import write_table
from totalseg_train.config import compose_config
from totalseg_train.engine.labelled_subjects import read_subjects
from totalseg_train.images import ImageFileError, nifti_path, subject_id_of
from totalseg_train.label_maps import read_label_map
from totalseg_train.shards import Shard, input_key, part_files

log = logging.getLogger(__name__)

FLAGS_CSV = "flags.csv"
CLASSES_PART = "measurements"  # a shard's part files: per-class rows ...
SCANS_PART = "scans"           # ... and one row per subject with the key of the files and settings measured
PART_COLUMNS = ("subject_id", "input_key", "error")
FINDINGS_CSV = "flag_findings.csv"
ERRORS_CSV = "errors.csv"


@dataclass
class Measured:
    subject_id: str
    classes: pd.DataFrame | None  # label_stats.measure's per-class rows, with subject_id
    scan: dict | None
    error: str | None


def qa_config(cfg: DictConfig | None) -> DictConfig:
    """The QA config: the one given, or the defaults of configs/qa.yaml."""
    return cfg if cfg is not None else compose_config("qa")


def _measure_subject(path: str, images_dir: str | None, labels_version: str, params: dict) -> Measured:
    """One subject's class measurements, or the error naming its file (a worker task)."""
    subject_id = subject_id_of(path)
    try:
        label_map = read_label_map(path, labels_version=labels_version)
        ct = read_ct_on(label_map, images_dir)
        stats = measure(label_map.array, VoxelGrid.of_image(label_map.image), StatsParams(**params), ct)
    except ImageFileError as exc:
        return Measured(subject_id, None, None, str(exc))
    stats.classes.insert(0, "subject_id", subject_id)
    return Measured(subject_id, stats.classes, stats.scan, None)


def _input_key(labels_dir: Path, images_dir: str | None, subject_id: str, settings: str) -> str:
    """The label map's and the CT's size and modification time and the measurement settings."""
    return input_key([nifti_path(labels_dir, subject_id), nifti_path(images_dir, subject_id) if images_dir else None],
                     settings)


def _settings(cfg: DictConfig) -> str:
    measure_cfg = OmegaConf.to_container(cfg.flags.measure, resolve=True)
    # The table's columns too: measurements stored before a column was added are measured again.
    key = [measure_cfg, cfg.labels_version, list(CLASS_COLUMNS)]
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _stored_measurements(out_dir: Path | None, keys: dict[str, str]) -> dict[str, Measured]:
    """Measurements in the shard parts of ``out_dir`` whose label map, CT and settings are still those of
    ``keys`` (subject -> input key); a newer part wins."""
    if out_dir is None:
        return {}
    found: dict[str, Measured] = {}
    for shard, scans_file in part_files(out_dir, SCANS_PART, ".parquet"):
        classes_file = shard.part(out_dir, CLASSES_PART, ".parquet")
        scans = pd.read_parquet(scans_file)
        classes = (dict(tuple(pd.read_parquet(classes_file).groupby("subject_id", sort=False)))
                   if classes_file.is_file() else None)
        for row in scans.itertuples(index=False):
            if keys.get(row.subject_id) != row.input_key:
                continue
            if row.error:
                found[row.subject_id] = Measured(row.subject_id, None, None, row.error)
            elif classes is not None:
                mine = classes.get(row.subject_id, _empty_classes()).reset_index(drop=True)
                scan = {k: getattr(row, k) for k in scans.columns if k not in PART_COLUMNS}
                found[row.subject_id] = Measured(row.subject_id, mine, scan, None)
    return found


def _write_part(out_dir: Path, shard: Shard, measured: list[Measured], keys: dict[str, str]) -> None:
    """The shard's measurements, for the other shards' cohort rules and for the merge to reuse."""
    good = [m for m in measured if not m.error]
    classes = pd.concat([m.classes for m in good], ignore_index=True) if good else _empty_classes()
    scans = pd.DataFrame([{"subject_id": m.subject_id, "input_key": keys[m.subject_id], "error": m.error or "",
                           **(m.scan or {})} for m in measured])
    write_table(classes, shard.part(out_dir, CLASSES_PART, ".parquet"))
    write_table(scans, shard.part(out_dir, SCANS_PART, ".parquet"))


def _empty_classes() -> pd.DataFrame:
    return pd.DataFrame(columns=["subject_id", *CLASS_COLUMNS]).astype(CLASS_COLUMNS)


def _measure_all(paths: list[str], images_dir: str | None, cfg: DictConfig, progress: bool) -> list[Measured]:
    params = OmegaConf.to_container(cfg.flags.measure, resolve=True)
    args = (paths, [images_dir] * len(paths), [cfg.labels_version] * len(paths), [params] * len(paths))
    workers = max(1, min(int(cfg.workers), len(paths)))
    results = []
    with tqdm(total=len(paths), desc="QA measurements", unit="subject", disable=not progress) as bar:
        if workers == 1:
            for result in map(_measure_subject, *args):
                results.append(result)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for result in pool.map(_measure_subject, *args):
                    results.append(result)
                    bar.update()
    return results


def patients_of(cfg: DictConfig) -> dict[str, str]:
    """subject_id -> patient from curation's subjects table (``cfg.subjects_csv``), so that a patient's several
    scans count as one anatomy in the cohort's usual values; {} where there is none (a folder of label maps
    from elsewhere: each subject its own patient)."""
    path = cfg.get("subjects_csv")
    if not path or not Path(path).is_file():
        log.info("no subjects table (%s): each label map is judged as its own patient", path)
        return {}
    table = read_subjects(path)
    return dict(zip(table.subject_id, table.patient))


def compute_flags(
    labels_dir: str | Path,
    out_dir: str | Path | None = None,
    cfg: DictConfig | None = None,
    subject_ids: list[str] | None = None,
    images_dir: str | Path | None = None,
    progress: bool = True,
    shard: Shard = Shard(),
) -> pd.DataFrame:
    """QA flags of every subject in ``labels_dir``: subject_id, one bool column per flag, n_flags, flags (text).

    With ``out_dir``, writes ``flags.csv``, ``flag_findings.csv`` (one row per class-level finding)
    and ``errors.csv`` (subjects whose files could not be used), and keeps the measurements: a later run
    measures only subjects whose label map, CT or measurement settings changed. ``images_dir`` (default
    ``cfg.images_dir``) supplies CTs for the outside-the-body check; without a CT the body is
    judged from the labels themselves (see label_stats.isolated_voxels).

    A ``shard`` of a sweep measures only its own subjects and stores them as its part in ``<out>/shards/``
    instead of writing the cohort's tables; it returns the flags of its subjects, judged against every
    subject measured so far (the cohort rules compare a class with the other subjects). Measurements in the
    parts whose files and settings are unchanged are reused, so the merge judges the whole cohort exactly
    as a run in one process would without measuring anything again.
    """
    cfg = qa_config(cfg)
    images_dir = images_dir if images_dir is not None else cfg.get("images_dir")
    images_dir = str(images_dir) if images_dir else None
    labels_dir = Path(labels_dir)
    out_dir = Path(out_dir) if out_dir is not None else None
    ids = list_subjects(labels_dir, subject_ids)
    settings = _settings(cfg)
    keys = {s: _input_key(labels_dir, images_dir, s, settings) for s in ids}
    stored = _stored_measurements(out_dir, keys)
    mine = shard.select(ids)
    todo = [s for s in mine if s not in stored]
    measured = {m.subject_id: m for m in _measure_all([str(nifti_path(labels_dir, s)) for s in todo], images_dir,
                                                      cfg, progress)}
    log.info("QA measurements: %d subjects measured now, %d up to date", len(todo), len(mine) - len(todo))
    if out_dir is not None:
        # Kept for the merge and for the next run (a whole run's as part 0of1): only changed files are measured again.
        _write_part(out_dir, shard, [measured.get(s) or stored[s] for s in mine], keys)
    elif not shard.whole:
        raise ValueError("a shard of the QA flags needs out_dir for its part")
    cohort = [measured.get(s) or stored.get(s) for s in ids]
    cohort = [m for m in cohort if m is not None]  # a shard: the subjects the other shards have not measured yet
    errors = pd.DataFrame([(m.subject_id, m.error) for m in cohort if m.error], columns=["subject_id", "error"])
    for m in measured.values():
        if m.error:
            log.error(m.error)
    good = [m for m in cohort if not m.error]
    stats = pd.concat([m.classes for m in good], ignore_index=True) if good else _empty_classes()
    scans = pd.DataFrame([m.scan for m in good], index=pd.Index([m.subject_id for m in good], name="subject_id"))
    patients = patients_of(cfg)
    scans["patient"] = [patients.get(s, "") for s in scans.index]
    table, findings = cohort_flags(stats, scans, FlagParams(**OmegaConf.to_container(cfg.flags.rules, resolve=True)))
    if not shard.whole:
        return table[table.subject_id.isin(mine)].reset_index(drop=True)
    if out_dir is not None:
        write_table(table, out_dir / FLAGS_CSV)
        write_table(findings, out_dir / FINDINGS_CSV)
        write_table(errors, out_dir / ERRORS_CSV)
    return table
