"""Predict CT images with a trained experiment: v1 label maps on each input's grid.

Every part model predicts with nnU-Net's predictor (no mirroring: left and right are separate classes);
the part-local labels are mapped to v1 ids and merged into one label map per subject, written when
complete. With ``uncertainty`` a per-class entropy table (``entropy.csv``) is written for uncertainty
ranking, computed from the softmax in memory; with ``save_probabilities`` the parts' softmax outputs
(nnU-Net's .npz, 4 bytes per class and voxel) are also kept under ``probabilities/<part>/``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from totalseg_train import classes
from totalseg_train.atomic import TMP_MARK, remove_stale_temporaries, write_table
from totalseg_train.console import captured, stage_log, terminal
from totalseg_train.engine.environment import TRAINER_DIR, scoped_environment, terminable_forks, torch_device
from totalseg_train.engine.manifest import PartModel, TrainedModel, read_model_manifest
from totalseg_train.engine.training import FINAL_CHECKPOINT, FOLD, set_torch_threads
from totalseg_train.images import (NIFTI_SUFFIX, Geometry, check_nifti_complete, nifti_path, read_image,
                                   subject_id_of, write_image)

log = logging.getLogger(__name__)
ENTROPY_TABLE = "entropy.csv"


def merge_part_labels(parts: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One v1 label map from part-local label maps and their local -> v1 lookup tables.

    Part models segment disjoint classes; where two claim a voxel, the later part in the list wins.
    """
    merged = np.zeros(parts[0][0].shape, dtype=np.uint8)
    for local, to_global in parts:
        merged = np.where(local > 0, to_global[local], merged).astype(np.uint8)
    return merged


def voxel_entropy(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of the class distribution of each voxel; classes on axis 0."""
    p = probabilities.astype(np.float32, copy=False)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=0)


def entropy_by_class(probabilities: np.ndarray, labels: np.ndarray, to_global: np.ndarray) -> pd.DataFrame:
    """Mean voxel entropy inside each predicted class (v1 ids), with the class's voxel count."""
    entropy = voxel_entropy(probabilities).ravel()
    flat = labels.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=len(to_global))
    sums = np.bincount(flat, weights=entropy, minlength=len(to_global))
    rows = [{"class_id": int(to_global[local]), "class_name": classes.by_id(int(to_global[local])).name,
             "n_voxels": int(counts[local]), "mean_entropy": float(sums[local] / counts[local])}
            for local in range(1, len(to_global)) if counts[local]]
    return pd.DataFrame(rows, columns=["class_id", "class_name", "n_voxels", "mean_entropy"])


def collect_images(images: list[str | Path] | str | Path) -> list[Path]:
    """A NIfTI file, a folder of them, or a list of files; ImageFileError naming a cut-off image (nnU-Net
    reads it with SimpleITK, which would predict on zeros)."""
    if isinstance(images, (str, Path)):
        path = Path(images)
        if path.is_dir():
            files = sorted(path.glob(f"*{NIFTI_SUFFIX}"))
            if not files:
                raise FileNotFoundError(f"{path}: no {NIFTI_SUFFIX} images to predict")
            images = files
        else:
            images = [path]
    files = [Path(p) for p in images]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"images not found: {', '.join(missing)}")
    ids = [subject_id_of(p) for p in files]
    if len(set(ids)) != len(ids):
        raise ValueError("two images share a subject id (file name)")
    for file in files:
        check_nifti_complete(file)
    return files


def _predict_part(part: PartModel, images: list[Path], work: Path, tile_step_size: float, device: torch.device,
                  save_probabilities: bool, uncertainty: bool, workers: int, bar: tqdm) -> dict[str, pd.DataFrame]:
    """nnU-Net's label maps of the part in ``work``; with ``uncertainty`` (and no .npz wanted) also each
    subject's entropy table, from the softmax in memory: writing and reading nnU-Net's compressed .npz
    of every class took most of the prediction time. ``bar`` advances by one per image."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    # No bar of nnU-Net's own (sliding-window steps of each image): ours counts images, one bar per stage.
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                verbose=False, verbose_preprocessing=False, allow_tqdm=False)
    with scoped_environment({"nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer") or str(TRAINER_DIR)}):
        predictor.initialize_from_trained_model_folder(str(part.folder), use_folds=(FOLD,),
                                                       checkpoint_name=FINAL_CHECKPOINT)
    inputs, outputs = [[str(p)] for p in images], [str(work / subject_id_of(p)) for p in images]
    work.mkdir(parents=True, exist_ok=True)
    if uncertainty and not save_probabilities:
        reader = predictor.plans_manager.image_reader_writer_class()
        tables = {}
        for image, output in zip(images, outputs):
            data, properties = reader.read_images([str(image)])
            labels, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
            reader.write_seg(labels, output + NIFTI_SUFFIX, properties)
            tables[subject_id_of(image)] = entropy_by_class(probabilities, labels, part.to_global())
            bar.update(1)
        return tables
    if workers <= 1:  # in this process: no worker start-up, which dominates for a few images
        for one_input, output in zip(inputs, outputs):
            predictor.predict_from_files_sequential([one_input], [output], save_probabilities=save_probabilities)
            bar.update(1)
    else:
        predictor.predict_from_files(inputs, outputs, save_probabilities=save_probabilities, overwrite=True,
                                     num_processes_preprocessing=workers, num_processes_segmentation_export=workers)
        bar.update(len(images))
    return {}


def _merge_subject(model: TrainedModel, work: Path, image: Path, out_dir: Path, save_probabilities: bool,
                   entropy_tables: dict[str, dict[str, pd.DataFrame]]) -> tuple[Path, pd.DataFrame | None]:
    """Merge the parts' label maps; the entropy tables come from memory (``entropy_tables[part][sid]``) or
    from the parts' kept .npz."""
    sid = subject_id_of(image)
    loaded = [(read_image(nifti_path(work / p.part, sid)), p) for p in model.parts]
    reference = loaded[0][0]
    expected = Geometry.of_file(image)
    if not Geometry.of_image(reference).matches(expected):
        raise RuntimeError(f"{sid}: prediction grid {Geometry.of_image(reference).describe()} differs from the "
                           f"image's {expected.describe()}")
    merged = merge_part_labels([(sitk.GetArrayFromImage(im), p.to_global()) for im, p in loaded])
    label = sitk.GetImageFromArray(merged)
    label.CopyInformation(reference)
    target = nifti_path(out_dir, sid)
    entropy = None
    if all(sid in entropy_tables.get(p.part, {}) for p in model.parts):
        entropy = pd.concat([entropy_tables[p.part][sid].assign(subject_id=sid, part=p.part) for p in model.parts],
                            ignore_index=True)
    elif save_probabilities:
        tables = []
        for im, p in loaded:
            npz = work / p.part / f"{sid}.npz"
            with np.load(npz) as data:
                table = entropy_by_class(data["probabilities"], sitk.GetArrayViewFromImage(im), p.to_global())
            tables.append(table.assign(subject_id=sid, part=p.part))
            kept = out_dir / "probabilities" / p.part / f"{sid}.npz"
            kept.parent.mkdir(parents=True, exist_ok=True)
            os.replace(npz, kept)
        entropy = pd.concat(tables, ignore_index=True)
    write_image(label, target)
    return target, entropy


def predict(model: DictConfig | str | Path, images: list[str | Path] | str | Path, out_dir: str | Path,
            save_probabilities: bool = False, device: str | None = None, workers: int | None = None,
            overwrite: bool = False, progress: bool = True, threads: int | None = None,
            uncertainty: bool = False, verbose: bool | None = None) -> dict[str, Path]:
    """Predict v1 label maps for the images with a trained model (a config, a model folder or model.json).

    Returns subject_id -> label map (``<out_dir>/<subject_id>.nii.gz``, on the image's grid). Subjects
    whose label map exists already are skipped unless ``overwrite``. ``device``: cuda | cpu | mps
    (default: the config's, else cuda when available); ``workers``: nnU-Net's pre/post-processing
    processes (default: the config's, else 2; 0 or 1: all in this process); ``threads``: torch threads (default: the config's
    torch_threads, else nnU-Net's choice). ``uncertainty``: write ``entropy.csv`` (per subject and predicted
    class: voxels, mean softmax entropy), one subject at a time in memory; ``save_probabilities`` also
    keeps nnU-Net's .npz softmax files (and computes the table from them). ``verbose``: nnU-Net's console
    output on the console (default: the config's ``verbose``, else false: in a Hydra stage run it goes to the
    run's ``nnunet.log``; see ``totalseg_train.console``).
    """
    terminable_forks()  # a prediction inside a cluster job (statistics model=)
    trained = read_model_manifest(model)
    untrained = trained.untrained_parts()
    if untrained:
        raise RuntimeError(f"{trained.experiment}: part model(s) {', '.join(untrained)} are not trained yet")
    cfg = model if isinstance(model, DictConfig) else None
    device_name = device or (str(cfg.device) if cfg is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = int(workers if workers is not None else (cfg.workers if cfg is not None else 2))
    threads = threads if threads is not None or cfg is None else cfg.torch_threads
    verbose = bool(verbose if verbose is not None else (cfg is not None and cfg.get("verbose", False)))
    files = collect_images(images)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    done = {subject_id_of(p): nifti_path(out_dir, subject_id_of(p)) for p in files}
    todo = [p for p in files if overwrite or not done[subject_id_of(p)].is_file()
            or ((save_probabilities or uncertainty) and not _has_entropy(out_dir, subject_id_of(p)))]
    if not todo:
        return done
    # nnU-Net reads its default process count once, at its first import: match it to ``workers`` if unset.
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, workers)))
    torch_dev = torch_device(device_name)
    set_torch_threads(torch_dev, threads)
    with tempfile.TemporaryDirectory(prefix=f"{TMP_MARK}predict-", dir=out_dir) as tmp:
        work = Path(tmp)
        tables = {}
        # The bar opens inside the capture, on the console that terminal() keeps.
        with captured(stage_log(verbose)), tqdm(total=len(todo) * len(trained.parts), unit="image", file=terminal(),
                                                desc=f"predicting ({trained.experiment})", disable=not progress) as bar:
            for part in trained.parts:
                log.info("predicting %d image(s) with the %s part model", len(todo), part.part)
                tables[part.part] = _predict_part(part, todo, work / part.part, trained.tile_step_size, torch_dev,
                                                  save_probabilities, uncertainty, workers, bar)
        entropy = []
        for image in todo:
            _, table = _merge_subject(trained, work, image, out_dir, save_probabilities, tables)
            if table is not None:
                entropy.append(table)
    if entropy:
        _update_entropy_table(out_dir, pd.concat(entropy, ignore_index=True))
    return done


def _has_entropy(out_dir: Path, subject_id: str) -> bool:
    table = out_dir / ENTROPY_TABLE
    return table.is_file() and subject_id in set(pd.read_csv(table, dtype={"subject_id": str}).subject_id)


def _update_entropy_table(out_dir: Path, new: pd.DataFrame) -> None:
    path = out_dir / ENTROPY_TABLE
    columns = ["subject_id", "part", "class_id", "class_name", "n_voxels", "mean_entropy"]
    if path.is_file():
        old = pd.read_csv(path, dtype={"subject_id": str})
        new = pd.concat([old[~old.subject_id.isin(new.subject_id)], new], ignore_index=True)
    write_table(new[columns].sort_values(["subject_id", "class_id"]), path)
