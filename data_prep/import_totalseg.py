"""python -m data_prep.import_totalseg root=DIR: a dataset in TotalSegmentator's public layout into a workspace.

The public TotalSegmentator release (v1: 104 classes, v2: 117) and a release of this project share one layout:
``<image_id>/ct.nii.gz``, ``<image_id>/segmentations/<class_name>.nii.gz`` (one binary mask per class) and a
semicolon-separated ``meta.csv``. Each subject's masks become one v1 label map: a mask is matched to a v1
class by its name (v2 kept the v1 names of the 97 classes both have); v1 classes without a mask are reported
as missing (never invented), masks of classes v1 does not have (v2's additions) are reported and left out.
Where two masks claim a voxel the smaller structure keeps it (a vessel through an organ's mask stays the
vessel); each overlap is reported by class pair and voxel count.

``meta.csv`` becomes the subjects table (image_id -> subject_id and patient: the public release names no
patients, each image counts as its own; gender -> sex, institute -> site, scanner_model -> model), and its
``split`` column, where present, the training split (``split.file``), so that the dataset's own split is
trained on. Subjects already imported are skipped; every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import hydra
import numpy as np
import pandas as pd
import SimpleITK as sitk
from omegaconf import DictConfig
from tqdm import tqdm

from totalseg_train import classes
from totalseg_train.atomic import atomic_path, write_table, write_text
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.engine.split import Split, SplitSettings, split_to_json
from totalseg_train.images import (NIFTI_SUFFIX, Geometry, ImageFileError, check_nifti_complete, nifti_path,
                                   read_image, write_image)
from totalseg_train.public_layout import META_FILE, META_SEPARATOR, ct_path, mask_name, segmentations_dir

log = logging.getLogger("data_prep.import_totalseg")
# meta.csv column -> subjects table column (curation's names)
META_COLUMNS = {"age": "age", "gender": "sex", "institute": "site", "study_type": "study_type", "split": "split",
                "manufacturer": "manufacturer", "scanner_model": "model", "kvp": "kvp"}
SPLIT_GROUPS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
OVERLAP_RULE = "the smaller structure keeps the voxel"


@dataclass
class Imported:
    """What one subject's import found (a row of the report)."""

    image_id: str
    status: str = "ok"                 # ok | no masks | error
    classes: int = 0                   # v1 classes with a mask holding voxels
    missing_v1: list[str] = field(default_factory=list)   # v1 classes without a mask file
    not_in_v1: list[str] = field(default_factory=list)    # masks of classes v1 does not have
    overlaps: list[str] = field(default_factory=list)     # "<kept> over <lost>: <voxels>"
    error: str = ""

    def row(self) -> dict:
        row = asdict(self)
        for key in ("missing_v1", "not_in_v1", "overlaps"):
            row[key] = "; ".join(row[key])
        return row


def merge_masks(masks: dict[int, np.ndarray]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """One uint8 label map from binary masks by v1 id; where masks overlap the smaller structure keeps the voxel.
    Returns the map and the overlaps as (kept id, lost id, voxels)."""
    shape = next(iter(masks.values())).shape
    labels = np.zeros(shape, dtype=np.uint8)
    volumes = {c: int(np.count_nonzero(m)) for c, m in masks.items()}
    overlaps = []
    for class_id in sorted(masks, key=lambda c: (-volumes[c], c)):  # largest first: smaller ones paint over
        inside = masks[class_id] > 0
        lost = labels[inside]
        for other, count in zip(*np.unique(lost[lost > 0], return_counts=True)):
            overlaps.append((class_id, int(other), int(count)))
        labels[inside] = class_id
    return labels, sorted(overlaps)


def import_subject(image_id: str, root: Path, images_dir: Path, labels_dir: Path) -> Imported:
    """Copy the CT and merge its masks into a v1 label map; a bad file ends this subject with an error naming it."""
    result = Imported(image_id)
    ct = ct_path(root, image_id)
    try:
        check_nifti_complete(ct)
        image = read_image(ct)
        masks, geometry = {}, Geometry.of_image(image)
        found = sorted(segmentations_dir(root, image_id).glob(f"*{NIFTI_SUFFIX}"))
        v1_names = set(classes.class_names())
        for path in found:
            name = mask_name(path)
            if name not in v1_names:
                result.not_in_v1.append(name)
                continue
            mask = read_image(path)
            if not Geometry.of_image(mask).matches(geometry):
                raise ImageFileError(f"{path}: mask grid {Geometry.of_image(mask).describe()} differs from the CT's "
                                     f"{geometry.describe()}")
            masks[classes.id_of(name)] = sitk.GetArrayFromImage(mask)
        result.missing_v1 = sorted(v1_names - {classes.by_id(c).name for c in masks}, key=classes.id_of)
        with atomic_path(nifti_path(images_dir, image_id)) as tmp:
            shutil.copyfile(ct, tmp)
        if not masks:
            result.status = "no masks"
            return result
        labels, overlaps = merge_masks(masks)
        result.classes = int(len(np.unique(labels)) - 1)
        result.overlaps = [f"{classes.by_id(k).name} over {classes.by_id(lost).name}: {n}" for k, lost, n in overlaps]
        label = sitk.GetImageFromArray(labels)
        label.CopyInformation(image)
        write_image(label, nifti_path(labels_dir, image_id))
    except (ImageFileError, OSError, RuntimeError) as err:
        result.status, result.error = "error", str(err)
    return result


def read_meta(root: Path) -> pd.DataFrame:
    """``meta.csv`` (semicolon-separated, one row per image_id) as strings; ValueError naming what is wrong."""
    path = root / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (a TotalSegmentator dataset has meta.csv beside its subjects)")
    meta = pd.read_csv(path, sep=META_SEPARATOR, dtype=str, keep_default_na=False)
    if "image_id" not in meta.columns:
        raise ValueError(f"{path}: no image_id column (columns: {', '.join(meta.columns)})")
    if meta.image_id.duplicated().any():
        raise ValueError(f"{path}: image ids listed twice: {sorted(set(meta.image_id[meta.image_id.duplicated()]))}")
    return meta


def subjects_table(meta: pd.DataFrame, n_slices: dict[str, int]) -> pd.DataFrame:
    """Curation's subjects table from meta.csv: each image its own patient (the release names none)."""
    table = pd.DataFrame({"subject_id": meta.image_id, "patient": meta.image_id})
    for source, column in META_COLUMNS.items():
        if source in meta.columns:
            table[column] = meta[source].str.upper() if column == "sex" else meta[source]
    table["n_slices"] = table.subject_id.map(n_slices).astype("Int64")
    return table


def split_of(meta: pd.DataFrame, labelled: list[str], settings: SplitSettings) -> Split | None:
    """The dataset's own split of the labelled subjects (None without a split column); ValueError for a value
    that is not train / val / test."""
    if "split" not in meta.columns:
        return None
    group = dict(zip(meta.image_id, meta.split.str.lower()))
    unknown = sorted({group[s] for s in labelled if group[s] not in SPLIT_GROUPS})
    if unknown:
        raise ValueError(f"meta.csv: split values {unknown} are not one of {', '.join(SPLIT_GROUPS)}")
    members = {g: tuple(sorted(s for s in labelled if SPLIT_GROUPS[group[s]] == g)) for g in ("train", "val", "test")}
    return Split(members["train"], members["val"], members["test"], settings)


def _previous(report: Path) -> dict[str, Imported]:
    if not report.is_file():
        return {}
    table = pd.read_csv(report, dtype=str, keep_default_na=False)
    done = {}
    for row in table.to_dict("records"):
        lists = {k: [x for x in row[k].split("; ") if x] for k in ("missing_v1", "not_in_v1", "overlaps")}
        done[row["image_id"]] = Imported(row["image_id"], row["status"], int(row["classes"]), error=row["error"], **lists)
    return done


def run(cfg: DictConfig) -> pd.DataFrame:
    """Import every subject of meta.csv; returns the report (one row per subject)."""
    root = Path(cfg.root)
    meta = read_meta(root)
    images_dir, labels_dir, report = Path(cfg.images_dir), Path(cfg.labels_dir), Path(cfg.report)
    previous = _previous(report)
    done = {i: r for i, r in previous.items() if r.status == "ok" and nifti_path(images_dir, i).is_file()
            and nifti_path(labels_dir, i).is_file()}
    todo = [i for i in meta.image_id if i not in done]
    results = dict(done)
    bar = tqdm(total=len(todo), desc="import", unit="subject", disable=not cfg.progress)
    if int(cfg.workers) <= 1 or len(todo) <= 1:
        for image_id in todo:
            results[image_id] = import_subject(image_id, root, images_dir, labels_dir)
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(int(cfg.workers), len(todo)), mp_context=context) as pool:
            job = partial(import_subject, root=root, images_dir=images_dir, labels_dir=labels_dir)
            for result in pool.map(job, todo):
                results[result.image_id] = result
                bar.update()
    bar.close()
    table = pd.DataFrame([results[i].row() for i in meta.image_id])
    write_table(table, report)
    imported = [i for i in meta.image_id if results[i].status != "error"]
    n_slices = {i: Geometry.of_file(nifti_path(images_dir, i)).size[2] for i in imported}  # headers only
    write_table(subjects_table(meta[meta.image_id.isin(imported)], n_slices), Path(cfg.subjects_csv))
    labelled = [i for i in imported if results[i].status == "ok"]
    split = split_of(meta, labelled, SplitSettings.from_config(cfg.split))
    if split is not None:
        _write_split(Path(cfg.split.file), split, {s: s for s in labelled})
    for r in results.values():
        if r.status == "error":
            log.error("%s: %s", r.image_id, r.error)
    return table


def _write_split(path: Path, split: Split, patient_of: dict[str, str]) -> None:
    text = split_to_json(split, patient_of)
    if path.is_file() and path.read_text() != text:
        raise ValueError(f"{path} holds another split than the dataset's; delete it to train on the dataset's split")
    write_text(path, text)


@hydra.main(config_path=CONFIG_PATH, config_name="import_totalseg", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        table = run(cfg)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    counts = table.status.value_counts()
    print(f"imported {counts.get('ok', 0)} of {len(table)} subjects from {cfg.root} "
          f"({counts.get('no masks', 0)} without masks, {counts.get('error', 0)} failed); report: {cfg.report}")
    overlapping = int((table.overlaps != "").sum())
    if overlapping:
        print(f"  {overlapping} subject(s) with overlapping masks ({OVERLAP_RULE}; pairs in the report)")
    print(f"train: python -m totalseg_train +experiment=... paths.workspace={cfg.paths.workspace} "
          f"labels_dir={cfg.labels_dir}")
    if counts.get("error", 0):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
