"""An outside model's predictions, in its own label ids, scored on the test split like a model of this workspace.

The paper compared TotalSegmentator with an nnU-Net trained on BTCV. Given such a model's label maps
(``<subject_id>.nii.gz`` with its own ids) and a mapping from its ids to v1 ids, this stage writes the maps in
v1 ids to ``<out_dir>/predictions/`` and scores them with the evaluation (``evaluate_folders``) on the classes
the mapping reaches, by default over the shared test split. ``<out_dir>`` then holds ``scores.parquet`` and
``summary.json`` like an experiment's results folder, so it can take the narrow model's place in
``totalseg_train.compare``.

A mapping is ``btcv`` (BTCV's 13 ids, from the class table's ``btcv_id`` column) or a CSV with the columns
``source_id`` and ``v1_id`` (empty or 0: that id becomes background). The mapping used is written beside the
scores (``mapping.csv``). A prediction holding an id the mapping lacks, or that cannot be read, is reported
with the file and the problem and left out; the other subjects go on.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig
from tqdm import tqdm

from totalseg_train import classes
from totalseg_train.atomic import write_table, write_text
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.engine.split import read_split
from totalseg_train.evaluate import evaluate_folders
from totalseg_train.images import ImageFileError, nifti_path, read_image, write_image
from totalseg_train.label_maps import invalid_label_ids

log = logging.getLogger(__name__)
BTCV = "btcv"
PREDICTIONS = "predictions"
MAPPING_FILE = "mapping.csv"
RECORD_FILE = "outside_model.json"
MAX_SOURCE_ID = 65535  # label maps of up to uint16 ids


def btcv_mapping() -> dict[int, int]:
    """BTCV label id -> v1 id, from the class table (the 13 classes with a ``btcv_id``)."""
    return {c.btcv_id: c.id for c in classes.btcv_classes()}


def read_mapping(source: str | Path) -> dict[int, int]:
    """``btcv`` or a CSV (source_id, v1_id) as source id -> v1 id (0 = background); ValueError naming the file."""
    if str(source) == BTCV:
        return btcv_mapping()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mapping file not found (use mapping={BTCV} or a CSV: source_id,v1_id)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = {"source_id", "v1_id"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))} (a mapping has source_id, v1_id)")
    table["v1_id"] = table["v1_id"].str.strip().replace("", "0")
    bad = [v for v in [*table.source_id, *table.v1_id] if not v.strip().isdigit()]
    if bad:
        raise ValueError(f"{path}: ids must be whole numbers >= 0, not {', '.join(sorted(set(bad))[:10])}")
    mapping = {int(s): int(v) for s, v in zip(table.source_id, table.v1_id)}
    if len(mapping) != len(table):
        raise ValueError(f"{path}: a source_id is mapped twice")
    beyond = sorted(s for s in mapping if s > MAX_SOURCE_ID)
    unknown = sorted({v for v in mapping.values() if v and v not in classes.class_ids()})
    if beyond or unknown:
        raise ValueError(f"{path}: source ids beyond {MAX_SOURCE_ID}: {beyond}; v1 ids outside the class table "
                         f"(1..{classes.num_classes()}): {unknown}")
    return mapping


def mapping_table(mapping: dict[int, int]) -> pd.DataFrame:
    """The mapping as a table: source_id, v1_id, v1_name (background for 0), sorted by source id."""
    rows = [(s, v, classes.by_id(v).name if v else "background") for s, v in sorted(mapping.items())]
    return pd.DataFrame(rows, columns=["source_id", "v1_id", "v1_name"])


def remap_labels(labels: np.ndarray, mapping: dict[int, int], path: str | Path) -> np.ndarray:
    """The v1 label array of an outside label array; ValueError naming the file and the ids the mapping lacks.

    Background (0) stays background whether or not the mapping lists it.
    """
    bad = invalid_label_ids(labels, MAX_SOURCE_ID)
    if bad:
        raise ValueError(f"{path}: label values must be whole numbers 0..{MAX_SOURCE_ID}; found {bad[:10]}")
    ids = np.unique(labels).astype(np.int64)
    unmapped = [int(i) for i in ids if i and int(i) not in mapping]
    if unmapped:
        raise ValueError(f"{path}: label ids {unmapped} are not in the mapping (mapped: {sorted(mapping)})")
    lut = np.zeros(int(ids.max()) + 1 if ids.size else 1, dtype=np.uint8)
    for source, target in mapping.items():
        if source < lut.size:
            lut[source] = target
    return lut[labels.astype(np.int64)]


@dataclass(frozen=True)
class RemapJob:
    subject_id: str
    source: Path
    target: Path
    mapping: dict[int, int]


def remap_subject(job: RemapJob) -> tuple[str, str, str]:
    """Write one subject's prediction in v1 ids (a worker task); (subject_id, status, message), status
    remapped | skipped | missing | error."""
    if not job.source.is_file():
        return job.subject_id, "missing", f"{job.source}: no prediction"
    if job.target.is_file() and job.target.stat().st_mtime_ns >= job.source.stat().st_mtime_ns:
        return job.subject_id, "skipped", ""
    try:
        image = read_image(job.source)
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"{job.source}: expected a 3D single-channel label map")
        labels = remap_labels(sitk.GetArrayViewFromImage(image), job.mapping, job.source)
    except (ImageFileError, ValueError) as err:
        return job.subject_id, "error", str(err)
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    write_image(out, job.target)
    return job.subject_id, "remapped", ""


def remap_folder(pred_dir: Path, out_dir: Path, subjects: list[str], mapping: dict[int, int], workers: int,
                 progress: bool = True) -> pd.DataFrame:
    """Remap the subjects' predictions into ``out_dir``; the table subject_id, status, message."""
    jobs = [RemapJob(s, nifti_path(pred_dir, s), nifti_path(out_dir, s), mapping) for s in sorted(subjects)]
    bar = dict(total=len(jobs), desc="remap", unit="subject", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = list(tqdm(pool.map(remap_subject, jobs), **bar))
    else:
        rows = [remap_subject(job) for job in tqdm(jobs, **bar)]
    return pd.DataFrame(rows, columns=["subject_id", "status", "message"])


def score_outside_model(cfg: DictConfig) -> dict:
    """Remap ``cfg.pred_dir`` with ``cfg.mapping`` and score it on the test split; returns the run's record."""
    pred_dir, out_dir = Path(cfg.pred_dir), Path(cfg.out_dir)
    if not pred_dir.is_dir():
        raise FileNotFoundError(f"pred_dir {pred_dir} does not exist")
    mapping = read_mapping(cfg.mapping)
    subjects = list(cfg.subjects) if cfg.subjects is not None else list(read_split(Path(cfg.split_file)).test)
    if not subjects:
        raise ValueError(f"{cfg.split_file} holds no test subjects: pass subjects=[...]")
    table = remap_folder(pred_dir, out_dir / PREDICTIONS, subjects, mapping, int(cfg.workers), bool(cfg.progress))
    failed = {r.subject_id: r.message for r in table.itertuples() if r.status == "error"}
    for subject_id, message in failed.items():
        log.error("subject %s left out: %s", subject_id, message)
    scored = [s for s in subjects if s not in failed]
    summary = evaluate_folders(cfg.labels_dir, out_dir / PREDICTIONS, out_dir,
                               tolerance_mm=cfg.tolerance_mm, workers=int(cfg.workers), subjects=scored,
                               resample=bool(cfg.resample), progress=bool(cfg.progress),
                               class_ids=sorted({v for v in mapping.values() if v}))
    write_table(mapping_table(mapping), out_dir / MAPPING_FILE)
    record = {"name": str(cfg.name), "pred_dir": str(pred_dir), "mapping": str(cfg.mapping),
              "labels_dir": str(cfg.labels_dir), "subjects": subjects, "remap_failed": failed,
              "missing_prediction": summary["subjects"]["missing_prediction"],
              "evaluation_failed": summary["subjects"]["failed"], "overall": summary["overall"]}
    write_text(out_dir / RECORD_FILE, json.dumps(record, indent=1) + "\n")
    return record


@hydra.main(config_path=CONFIG_PATH, config_name="outside_model", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        record = score_outside_model(cfg)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"outside model: {err}") from None
    dice, nsd = record["overall"]["dice"]["mean"], record["overall"]["nsd"]["mean"]
    shown = "n/a" if dice is None else f"Dice {dice:.3f}, NSD {nsd:.3f}"
    print(f"{record['name']}: {len(record['subjects'])} test subjects scored on the mapped classes: {shown}; "
          f"{cfg.out_dir}/scores.parquet")
    problems = {**record["remap_failed"], **record["evaluation_failed"]}
    if problems:
        raise SystemExit(f"{len(problems)} subject(s) left out: " + "; ".join(problems.values()))


if __name__ == "__main__":
    main()
