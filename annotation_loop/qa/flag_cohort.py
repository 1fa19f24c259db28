"""compute_flags: measure every subject of a label folder in parallel and apply the QA flag rules."""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
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
from totalseg_train.images import ImageFileError, nifti_path, subject_id_of
from totalseg_train.label_maps import read_label_map

log = logging.getLogger(__name__)

FLAGS_CSV = "flags.csv"
FINDINGS_CSV = "flag_findings.csv"
ERRORS_CSV = "errors.csv"


def qa_config(cfg: DictConfig | None) -> DictConfig:
    """The QA config: the one given, or the defaults of configs/qa.yaml."""
    return cfg if cfg is not None else compose_config("qa")


def _measure_subject(path: str, images_dir: str | None, labels_version: str, params: dict):
    """One subject's class measurements: (subject_id, classes, scan, None), or (subject_id, None, None, error)."""
    subject_id = subject_id_of(path)
    try:
        label_map = read_label_map(path, labels_version=labels_version)
        ct = read_ct_on(label_map, images_dir)
        stats = measure(label_map.array, VoxelGrid.of_image(label_map.image), StatsParams(**params), ct)
    except ImageFileError as exc:
        return subject_id, None, None, str(exc)
    stats.classes.insert(0, "subject_id", subject_id)
    return subject_id, stats.classes, stats.scan, None


def compute_flags(
    labels_dir: str | Path,
    out_dir: str | Path | None = None,
    cfg: DictConfig | None = None,
    subject_ids: list[str] | None = None,
    images_dir: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """QA flags of every subject in ``labels_dir``: subject_id, one bool column per flag, n_flags, flags (text).

    With ``out_dir``, writes ``flags.csv``, ``flag_findings.csv`` (one row per class-level finding)
    and ``errors.csv`` (subjects whose files could not be used). ``images_dir`` (default
    ``cfg.images_dir``) supplies CTs for the outside-the-body check; without a CT the body is
    judged from the labels themselves (see label_stats.isolated_voxels).
    """
    cfg = qa_config(cfg)
    images_dir = images_dir if images_dir is not None else cfg.get("images_dir")
    ids = list_subjects(labels_dir, subject_ids)
    paths = [str(nifti_path(labels_dir, s)) for s in ids]
    params = OmegaConf.to_container(cfg.flags.measure, resolve=True)
    args = (paths, [str(images_dir) if images_dir else None] * len(paths), [cfg.labels_version] * len(paths),
            [params] * len(paths))
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
    errors = pd.DataFrame([(s, e) for s, _, _, e in results if e], columns=["subject_id", "error"])
    for error in errors.error:
        log.error(error)
    good = [(s, c, scan) for s, c, scan, e in results if not e]
    stats = pd.concat([c for _, c, _ in good], ignore_index=True) if good else pd.DataFrame(
        columns=["subject_id", *CLASS_COLUMNS]).astype(CLASS_COLUMNS)
    scans = pd.DataFrame([scan for _, _, scan in good], index=pd.Index([s for s, _, _ in good], name="subject_id"))
    table, findings = cohort_flags(stats, scans, FlagParams(**OmegaConf.to_container(cfg.flags.rules, resolve=True)))
    if out_dir is not None:
        out_dir = Path(out_dir)
        write_table(table, out_dir / FLAGS_CSV)
        write_table(findings, out_dir / FINDINGS_CSV)
        write_table(errors, out_dir / ERRORS_CSV)
    return table
