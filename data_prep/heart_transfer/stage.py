"""The heart transfer stage over a curated cohort: every pair in a worker process, resumable.

Writes ``<out>/labels/<subject_id>.nii.gz`` (the six heart sub-part classes) for the heart model:
the native subject of each transferred pair gets the transferred labels, every other subject of
``labels_dir`` its own heart labels. A transfer that QC flags is held back in ``<out>/flagged/`` for
review instead (``qc.use_flagged=true`` takes it all the same). ``<out>/labels/index.csv`` says where each file came from,
``report`` holds one QC row per pair, and ``qa_dir`` one sheet per pair with ``flags.csv`` for the
review page. A pair whose inputs and settings did not change since its last transfer is not
registered again; its row is kept in ``<out>/pairs/<native>.json``.

On a cluster the pairs split into shards (``shard.index`` / ``shard.count``, by the native subject): a shard
registers its own pairs and writes its rows to ``<out>/shards/heart_transfer_<i>of<n>.csv``; the job that
writes the last part (or a later run without a shard) merges, reusing every shard's registrations, into the
tables and labels folder one process would have written (its report's ``reused`` then holds for every pair).
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data_prep.heart_transfer.pairs import Pair, read_pairs
from data_prep.heart_transfer.registration import RegistrationError
from data_prep.heart_transfer.sheet import write_pair_sheet
from data_prep.heart_transfer.transfer import TransferError, heart_ids, transfer
from totalseg_train.atomic import remove_stale_temporaries, write_table, write_text
from totalseg_train.images import ImageFileError, NIFTI_SUFFIX, nifti_path, read_image, subject_id_of, write_image
from totalseg_train.label_maps import read_label_map
from totalseg_train.shards import Shard, run_sharded

log = logging.getLogger(__name__)
TRANSFERRED, FLAGGED, NO_LABELS, ERROR = "transferred", "flagged", "no_labels", "error"
SETTINGS = ("other_classes", "region", "registration", "transfer", "qc")
REPORT_PART = "heart_transfer"  # a shard's rows: <out>/shards/heart_transfer_<index>of<count>.csv


@dataclass(frozen=True)
class PairJob:
    pair: Pair
    contrast_image: Path
    native_image: Path
    contrast_labels: Path
    out_labels: Path
    flagged_labels: Path   # where a transfer that QC flags goes instead, for review
    record: Path
    sheet: Path
    thumb: Path
    settings: str          # fingerprint of the settings that shape the result
    cfg: dict              # the resolved config (plain, for the worker process)


def settings_fingerprint(cfg: DictConfig) -> str:
    chosen = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
              for key in SETTINGS}
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def heart_only(labels: sitk.Image, other_classes: str, path: Path) -> sitk.Image:
    """The heart sub-part classes of a label map; other classes removed (``drop``) or refused (``error``)."""
    array = sitk.GetArrayFromImage(labels)
    keep = np.isin(array, heart_ids())
    if other_classes == "error" and np.any(array[~keep]):
        other = sorted(set(np.unique(array[~keep]).tolist()) - {0})
        raise TransferError(f"{path}: label ids that are not heart sub-parts: {', '.join(map(str, other[:10]))}"
                            f"{' ...' if len(other) > 10 else ''} (other_classes=drop removes them)")
    if other_classes not in ("error", "drop"):
        raise ValueError(f"other_classes={other_classes!r}: use error or drop")
    array[~keep] = 0
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(labels)
    return out


def _newer_than_inputs(record: Path, *inputs: Path) -> bool:
    return record.is_file() and all(record.stat().st_mtime_ns >= p.stat().st_mtime_ns for p in inputs if p.exists())


def _base_row(job: PairJob) -> dict:
    return {"native_subject_id": job.pair.native, "contrast_subject_id": job.pair.contrast,
            "contrast_labels": str(job.contrast_labels)}


def transfer_pair(job: PairJob) -> dict:
    """One pair: its report row (status, reason, QC values). Never raises for a bad pair."""
    row = _base_row(job)
    if not job.contrast_labels.is_file():
        return {**row, "status": NO_LABELS, "reason": f"no heart labels for {job.pair.contrast} in "
                                                      f"{job.contrast_labels.parent}"}
    if job.pair.same_frame is False:
        return {**row, "status": ERROR, "reason": f"{job.native_image} and {job.contrast_image} do not share a "
                                                  "frame of reference: the headers' alignment does not hold"}
    inputs = (job.contrast_image, job.native_image, job.contrast_labels)
    if _newer_than_inputs(job.record, *inputs):
        kept = json.loads(job.record.read_text())
        labels = job.out_labels if kept.get("status") == TRANSFERRED else job.flagged_labels
        if kept.get("settings") == job.settings and labels.is_file():
            return {**kept, "reused": True}
    cfg = OmegaConf.create(job.cfg)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(cfg.threads_per_worker))
    try:
        contrast = read_image(job.contrast_image, sitk.sitkFloat32)
        native = read_image(job.native_image, sitk.sitkFloat32)
        labels = heart_only(read_label_map(job.contrast_labels).image, str(cfg.other_classes), job.contrast_labels)
        result = transfer(contrast, labels, native, cfg)
    except (ImageFileError, TransferError, RegistrationError) as err:
        where = "" if str(err).startswith(("/", str(job.contrast_labels))) else \
            f"{job.native_image.name} <- {job.contrast_image.name}, {job.contrast_labels}: "
        return {**row, "status": ERROR, "reason": f"{where}{err}"}
    # A transfer QC flags stays out of the heart model's labels unless qc.use_flagged says otherwise.
    held_back = result.qc["flag"] and not cfg.qc.use_flagged
    target, other = (job.flagged_labels, job.out_labels) if held_back else (job.out_labels, job.flagged_labels)
    write_image(result.labels, target)
    other.unlink(missing_ok=True)
    write_pair_sheet(job.sheet, job.thumb, native, result.labels, contrast, labels,
                     f"{job.pair.native} (native) <- {job.pair.contrast} (contrast)", result.qc["flag_reason"])
    record = {**row, "status": FLAGGED if held_back else TRANSFERRED,
              "reason": f"held back: {result.qc['flag_reason']}" if held_back else "", **result.qc,
              "settings": job.settings}
    write_text(job.record, json.dumps(record, indent=1) + "\n")
    return {**record, "reused": False}


def _jobs(cfg: DictConfig, pairs: list[Pair]) -> list[PairJob]:
    out, qa = Path(cfg.out), Path(cfg.qa_dir)
    images, labels = Path(cfg.images_dir), Path(cfg.labels_dir)
    plain = OmegaConf.to_container(cfg, resolve=True)
    fingerprint = settings_fingerprint(cfg)
    return [PairJob(p, nifti_path(images, p.contrast), nifti_path(images, p.native), nifti_path(labels, p.contrast),
                    nifti_path(out / "labels", p.native), nifti_path(out / "flagged", p.native),
                    out / "pairs" / f"{p.native}.json",
                    qa / "subjects" / f"{p.native}.png", qa / "thumbs" / f"{p.native}.png", fingerprint, plain)
            for p in pairs]


def copy_own_labels(cfg: DictConfig, transferred: dict[str, str], natives: set[str]) -> pd.DataFrame:
    """Heart labels of every subject of ``labels_dir`` except the pairs' native subjects, into ``<out>/labels``.

    ``transferred``: native subject -> its contrast subject, for the pairs transferred. Returns the
    labels index (subject_id, source, from_subject, file); a subject whose map cannot be used is logged
    with the file and the problem and left out.
    """
    out = Path(cfg.out) / "labels"
    rows = [{"subject_id": native, "source": "transferred", "from_subject": contrast,
             "file": str(nifti_path(out, native))} for native, contrast in transferred.items()]
    for path in sorted(Path(cfg.labels_dir).glob(f"*{NIFTI_SUFFIX}")):
        subject = subject_id_of(path)
        if subject in natives:
            continue
        target = nifti_path(out, subject)
        if not _newer_than_inputs(target, path):
            try:
                write_image(heart_only(read_label_map(path).image, str(cfg.other_classes), path), target)
            except (ImageFileError, TransferError) as err:
                log.error("%s", err)
                target.unlink(missing_ok=True)
                continue
        rows.append({"subject_id": subject, "source": "drawn", "from_subject": "", "file": str(target)})
    index = pd.DataFrame(rows, columns=["subject_id", "source", "from_subject", "file"])
    return index.sort_values("subject_id").reset_index(drop=True)


def _remove_others(folder: Path, keep: set[str], suffix: str) -> None:
    for path in folder.glob(f"*{suffix}") if folder.exists() else []:
        if path.name[: -len(suffix)] not in keep:
            path.unlink()


def review_flags(report: pd.DataFrame) -> pd.DataFrame:
    """flags.csv for the review page: one row per transferred pair (by native subject), its QC finding."""
    done = report[report.status.isin((TRANSFERRED, FLAGGED))]
    flagged = done.get("flag", pd.Series(False, index=done.index)).fillna(False).astype(bool)
    reasons = done.get("flag_reason", pd.Series("", index=done.index)).fillna("")
    return pd.DataFrame({"subject_id": done.native_subject_id, "heart_transfer": flagged,
                         "n_flags": flagged.astype(int), "flags": reasons.where(flagged, "")})


def run(cfg: DictConfig) -> pd.DataFrame:
    """Transfer every pair (of ``cfg.shard``); returns the report table (one row per pair). One run at a time
    per folder and shard."""
    return run_sharded(lambda part: _run(cfg, part), Shard.from_config(cfg.get("shard")), cfg.out, "heart-transfer",
                       REPORT_PART)


def _run(cfg: DictConfig, shard: Shard) -> pd.DataFrame:
    out, qa = Path(cfg.out), Path(cfg.qa_dir)
    remove_stale_temporaries(qa)  # the locked out folder is cleaned by its lock (a running shard's files stay)
    pairs = read_pairs(cfg.subjects_csv)
    jobs = _jobs(cfg, [p for p in pairs if shard.holds(p.native)])
    bar = dict(total=len(jobs), desc="heart transfer", unit="pair", disable=not cfg.progress)
    if int(cfg.workers) > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=int(cfg.workers)) as pool:
            rows = list(tqdm(pool.map(transfer_pair, jobs), **bar))
    else:
        rows = [transfer_pair(job) for job in tqdm(jobs, **bar)]
    report = pd.DataFrame(rows)
    for column in ("native_subject_id", "contrast_subject_id", "contrast_labels", "status", "reason"):
        if column not in report:
            report[column] = pd.Series(dtype=str)
    report["reused"] = report.get("reused", pd.Series(False, index=report.index)).fillna(False).astype(bool)
    report = report.drop(columns=["settings"], errors="ignore")
    if not shard.whole:
        write_table(report, shard.part(out, REPORT_PART, ".csv"))
        return report
    done = report[report.status == TRANSFERRED]
    transferred = dict(zip(done.native_subject_id, done.contrast_subject_id))
    registered = set(report.native_subject_id[report.status.isin((TRANSFERRED, FLAGGED))])
    index = copy_own_labels(cfg, transferred, {p.native for p in pairs})
    # Labels and records of pairs that are gone (consent withdrawn, no longer curated) or failed now.
    _remove_others(out / "labels", set(index.subject_id), NIFTI_SUFFIX)
    _remove_others(out / "flagged", set(report.native_subject_id[report.status == FLAGGED]), NIFTI_SUFFIX)
    _remove_others(out / "pairs", registered, ".json")
    for sub in ("subjects", "thumbs"):
        _remove_others(qa / sub, registered, ".png")
    write_table(index, out / "labels" / "index.csv")
    write_table(report, Path(cfg.report))
    write_table(review_flags(report), qa / "flags.csv")
    for row in report[report.status == ERROR].itertuples():
        log.error("pair %s <- %s not transferred: %s", row.native_subject_id, row.contrast_subject_id, row.reason)
    return report
