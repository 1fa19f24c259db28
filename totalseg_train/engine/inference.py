"""Predict CT images with a trained experiment: v1 label maps on each input's grid.

Every part model predicts with nnU-Net's predictor (no mirroring: left and right are separate classes),
on nnU-Net's preprocessing of the image to the model's spacing. As TotalSegmentator does, the label map
is taken at the model's spacing and brought back to the image's grid (nearest neighbour): nnU-Net's own
export resamples the logits of every class instead (105 channels, about 30 % of a prediction's time). The
part-local labels are mapped to v1 ids and merged into one label map per subject, written when complete.
With ``uncertainty`` a per-class entropy table (``entropy.csv``) is written for uncertainty ranking,
computed from the softmax at the model's spacing, in memory.
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


def _predict_part(trained: TrainedModel, part: PartModel, images: list[Path], work: Path, device: torch.device,
                  uncertainty: bool, workers: int, bar: tqdm) -> dict[str, pd.DataFrame]:
    """nnU-Net's label maps of the part in ``work``; with ``uncertainty`` also each subject's entropy table.
    ``bar`` advances by one per image."""
    predictor = part_predictor(part, device, trained.tile_step_size, trained.windows_per_batch)
    work.mkdir(parents=True, exist_ok=True)
    writer = predictor.plans_manager.image_reader_writer_class()
    tables = {}
    for item in _preprocessed(predictor, images, work, workers):
        logits = predictor.predict_logits_from_preprocessed_data(item["data"]).cpu()
        labels, probabilities = labels_at_model_spacing(predictor.label_manager, logits, uncertainty)
        del logits
        properties = item["data_properties"]
        writer.write_seg(labels_on_image_grid(labels, properties, predictor.plans_manager,
                                              predictor.configuration_manager), item["ofile"] + NIFTI_SUFFIX,
                         properties)
        if uncertainty:
            tables[Path(item["ofile"]).name] = entropy_by_class(probabilities, labels, part.to_global())
        bar.update(1)
    return tables


def part_predictor(part: PartModel, device: torch.device, tile_step_size: float, windows_per_batch: int = 1):
    """nnU-Net's predictor of a trained part model (final checkpoint of fold 0, no mirroring); with
    ``windows_per_batch`` > 1 the subclass that sends that many sliding windows through the network at a time."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from totalseg_train.engine.sliding_window import BatchedWindowsPredictor

    # No bar of nnU-Net's own (sliding-window steps of each image): ours counts images, one bar per stage.
    settings = dict(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=False,
                    perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                    verbose_preprocessing=False, allow_tqdm=False)
    predictor = (BatchedWindowsPredictor(windows_per_batch=windows_per_batch, **settings) if windows_per_batch > 1
                 else nnUNetPredictor(**settings))
    with scoped_environment({"nnUNet_extTrainer": os.environ.get("nnUNet_extTrainer") or str(TRAINER_DIR)}):
        predictor.initialize_from_trained_model_folder(str(part.folder), use_folds=(FOLD,),
                                                       checkpoint_name=FINAL_CHECKPOINT)
    return predictor


def _preprocessed(predictor, images: list[Path], work: Path, workers: int):
    """nnU-Net's preprocessing of each image (its dict: data, data_properties, ofile), in ``workers`` background
    processes, or in this process for ``workers`` <= 1 (no worker start-up, which dominates for a few images)."""
    from nnunetv2.inference.data_iterators import preprocessing_iterator_fromfiles

    inputs, outputs = [[str(p)] for p in images], [str(work / subject_id_of(p)) for p in images]
    if workers > 1 and len(images) > 1:
        yield from preprocessing_iterator_fromfiles(inputs, None, outputs, predictor.plans_manager,
                                                    predictor.dataset_json, predictor.configuration_manager, workers)
        return
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    for one_input, output in zip(inputs, outputs):
        data, _, properties = preprocessor.run_case(one_input, None, predictor.plans_manager,
                                                    predictor.configuration_manager, predictor.dataset_json)
        yield {"data": torch.from_numpy(data).to(dtype=torch.float32, memory_format=torch.contiguous_format),
               "data_properties": properties, "ofile": output}


def labels_at_model_spacing(label_manager, logits: torch.Tensor,
                            with_probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Part-local label map (and, if asked, the softmax: classes on axis 0) at the model's spacing."""
    if not with_probabilities:
        return np.asarray(label_manager.convert_logits_to_segmentation(logits), dtype=np.uint8), None
    probabilities = label_manager.apply_inference_nonlin(logits)
    labels = np.asarray(label_manager.convert_probabilities_to_segmentation(probabilities), dtype=np.uint8)
    return labels, np.asarray(probabilities, dtype=np.float32)


def labels_on_image_grid(labels: np.ndarray, properties: dict, plans_manager, configuration_manager) -> np.ndarray:
    """A label map at the model's spacing brought back to the image's array (nnU-Net's axis order undone):
    resampled nearest neighbour to the cropped region's shape with nnU-Net's resampling, put into the
    uncropped image."""
    from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    image_spacing = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    cropped_shape = properties["shape_after_cropping_and_before_resampling"]
    model_spacing = (configuration_manager.spacing if len(configuration_manager.spacing) == len(cropped_shape)
                     else [image_spacing[0], *configuration_manager.spacing])
    resampled = resample_data_or_seg_to_shape(labels[None], cropped_shape, model_spacing, image_spacing,
                                              is_seg=True, order=0, order_z=0)[0]
    full = np.zeros(properties["shape_before_cropping"], dtype=np.uint8)
    full = insert_crop_into_image(full, resampled.astype(np.uint8), properties["bbox_used_for_cropping"])
    return np.asarray(full).transpose(plans_manager.transpose_backward)


def _parts_for(model: TrainedModel, class_ids: list[int] | None) -> tuple[tuple[PartModel, ...], np.ndarray | None]:
    """The part models that predict any of ``class_ids`` (all without), and the ids to keep (None: all)."""
    if class_ids is None:
        return model.parts, None
    missing = sorted(set(class_ids) - set(model.class_ids()))
    if missing:
        raise ValueError(f"{model.experiment} does not predict {', '.join(classes.by_id(i).name for i in missing)}")
    return tuple(p for p in model.parts if set(p.v1_class_ids) & set(class_ids)), np.array(sorted(set(class_ids)))


def _merge_subject(parts: tuple[PartModel, ...], kept: np.ndarray | None, work: Path, image: Path, out_dir: Path,
                   entropy_tables: dict[str, dict[str, pd.DataFrame]]) -> tuple[Path, pd.DataFrame | None]:
    """Merge the parts' label maps (only the ``kept`` classes, if given); the entropy table from the parts'
    tables (``entropy_tables[part][sid]``)."""
    sid = subject_id_of(image)
    loaded = [(read_image(nifti_path(work / p.part, sid)), p) for p in parts]
    reference = loaded[0][0]
    expected = Geometry.of_file(image)
    if not Geometry.of_image(reference).matches(expected):
        raise RuntimeError(f"{sid}: prediction grid {Geometry.of_image(reference).describe()} differs from the "
                           f"image's {expected.describe()}")
    merged = merge_part_labels([(sitk.GetArrayFromImage(im), p.to_global()) for im, p in loaded])
    if kept is not None:
        merged[~np.isin(merged, kept)] = 0
    label = sitk.GetImageFromArray(merged)
    label.CopyInformation(reference)
    target = nifti_path(out_dir, sid)
    entropy = None
    if all(sid in entropy_tables.get(p.part, {}) for p in parts):
        entropy = pd.concat([entropy_tables[p.part][sid].assign(subject_id=sid, part=p.part) for p in parts],
                            ignore_index=True)
        if kept is not None:
            entropy = entropy[entropy.class_id.isin(kept)]
    write_image(label, target)
    return target, entropy


def predict(model: DictConfig | str | Path, images: list[str | Path] | str | Path, out_dir: str | Path,
            device: str | None = None, workers: int | None = None,
            overwrite: bool = False, progress: bool = True, threads: int | None = None,
            uncertainty: bool = False, verbose: bool | None = None,
            class_ids: list[int] | None = None) -> dict[str, Path]:
    """Predict v1 label maps for the images with a trained model (a config, a model folder or model.json).

    Returns subject_id -> label map (``<out_dir>/<subject_id>.nii.gz``, on the image's grid). Subjects
    whose label map exists already are skipped unless ``overwrite``. ``device``: cuda | cpu | mps
    (default: the config's, else cuda when available); ``workers``: nnU-Net's pre/post-processing
    processes (default: the config's, else 2; 0 or 1: all in this process); ``threads``: torch threads (default: the config's
    torch_threads, else nnU-Net's choice). ``uncertainty``: write ``entropy.csv`` (per subject and predicted
    class: voxels at the model's spacing, mean softmax entropy), one subject at a time in memory. ``verbose``: nnU-Net's console
    output on the console (default: the config's ``verbose``, else false: in a Hydra stage run it goes to the
    run's ``nnunet.log``; see ``totalseg_train.console``). ``class_ids``: keep only these v1 classes; only the
    part models that hold one of them predict (ValueError for a class the model does not predict).
    """
    terminable_forks()  # a prediction inside a cluster job (statistics model=)
    trained = read_model_manifest(model)
    trained.require_trained()
    parts, kept = _parts_for(trained, class_ids)
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
            or (uncertainty and not _has_entropy(out_dir, subject_id_of(p)))]
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
        with captured(stage_log(verbose)), tqdm(total=len(todo) * len(parts), unit="image", file=terminal(),
                                                desc=f"predicting ({trained.experiment})", disable=not progress) as bar:
            for part in parts:
                log.info("predicting %d image(s) with the %s part model", len(todo), part.part)
                tables[part.part] = _predict_part(trained, part, todo, work / part.part, torch_dev, uncertainty,
                                                  workers, bar)
        entropy = []
        for image in todo:
            _, table = _merge_subject(parts, kept, work, image, out_dir, tables)
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
