"""The training run: export, split, plan, preprocess, train every part, predict the test split, score it.

Each step skips finished work, so a killed or repeated run picks up where it stopped; each part model
is an independent job (``part=<name>``), and whichever job finds every part trained predicts the test
split, merges the parts and writes the summary; a later job or run finds that done and leaves it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from totalseg_train.atomic import write_text
from totalseg_train.engine.labelled_subjects import load_cohort, read_subjects
from totalseg_train.engine.datasets import PartDataset, part_datasets, selected_datasets
from totalseg_train.engine.environment import configure_nnunet, nnunet_folders
from totalseg_train.engine.export import export_dataset, exported_subjects
from totalseg_train.engine.inference import predict
from totalseg_train.engine.manifest import PartModel, TrainedModel, read_model_manifest, model_dir, write_manifest
from totalseg_train.engine.planning import Plan, plan_and_preprocess
from totalseg_train.engine.selection import restrict_split, select_subjects
from totalseg_train.engine.split import Split, SplitSettings, load_or_create_split
from totalseg_train.engine.training import FINAL_CHECKPOINT, fold_folder, is_trained, model_folder, train_part
from totalseg_train.engine.wandb_log import add_to_nnunet_run
from totalseg_train.images import NIFTI_SUFFIX, nifti_path
from totalseg_train.stage_lock import stage_lock

log = logging.getLogger(__name__)
SUMMARY = "run_summary.json"
PREDICTIONS = "predictions"


def make_split(cfg: DictConfig, subject_ids: list[str] | None = None) -> Split:
    """The stored split of the cohort (subjects with a label, or the given ones), drawn on first use; with
    ``subjects.where`` only the selected subjects train and validate (``selection``), the test split stays."""
    cohort = load_cohort(cfg.subjects_csv, cfg.images_dir, cfg.labels_dir, subject_ids)
    split = load_or_create_split(cfg.split.file, cohort, SplitSettings.from_config(cfg.split))
    where = cfg.subjects.where
    if where:
        selected = select_subjects(read_subjects(cfg.subjects_csv), where, cfg.subjects_csv)
        split = restrict_split(split, cohort, selected, cfg.subjects.split_file, where)
    log.info("split %s: %s", cfg.split.file, split.counts())
    return split


def initial_checkpoint(cfg: DictConfig, part: str) -> Path | None:
    """The final checkpoint of the part in ``model.init_from`` (a trained model folder), if set."""
    if not cfg.model.get("init_from"):
        return None
    source = read_model_manifest(str(cfg.model.init_from))
    for p in source.parts:
        if p.part == part and is_trained(p.folder):
            return fold_folder(p.folder) / FINAL_CHECKPOINT
    raise FileNotFoundError(f"model.init_from={cfg.model.init_from}: no trained part model {part!r} to start from")


def prepare_part(dataset: PartDataset, split: Split, cfg: DictConfig, preprocess: bool = True) -> Plan:
    """Export the part's train/validation subjects, then plan (and preprocess) its dataset."""
    table = export_dataset(dataset, sorted(split.train + split.val), cfg.images_dir, cfg.labels_dir,
                           nnunet_folders(cfg)["nnUNet_raw"], workers=int(cfg.workers))
    return plan_and_preprocess(dataset, split, exported_subjects(table), cfg, preprocess=preprocess,
                               initial_checkpoint=initial_checkpoint(cfg, dataset.part))


def write_model_manifest(cfg: DictConfig) -> Path:
    parts = [PartModel(d.part, d.name, model_folder(d, cfg), tuple(d.global_ids())) for d in part_datasets(cfg)]
    write_manifest(model_dir(cfg), str(cfg.model.name), parts, float(cfg.model.tile_step_size),
                   int(cfg.model.windows_per_batch))
    return model_dir(cfg)


def _train(cfg: DictConfig, subject_ids: list[str] | None) -> Split:
    configure_nnunet(cfg)
    split = make_split(cfg, subject_ids)
    for dataset in selected_datasets(cfg):
        # One job per part: a second copy of the same part stops; the parts of a sweep run side by side.
        with stage_lock(model_dir(cfg), f"train-{dataset.part}"):
            plan = prepare_part(dataset, split, cfg)
            newly = not is_trained(model_folder(dataset, cfg))
            folder = train_part(plan, cfg)
        if newly and cfg.logger.name == "wandb":
            add_to_nnunet_run(fold_folder(folder), cfg, config={"totalseg": OmegaConf.to_container(cfg, resolve=True)})
    write_model_manifest(cfg)
    return split


def train_model(cfg: DictConfig, subject_ids: list[str] | None = None) -> Path:
    """Export, split, plan, preprocess and train every part (or the one named by ``part=``).

    ``subject_ids``: the subjects to use (default: every subject with a label file). Returns the model
    folder (``<paths.results>/<experiment>``) that ``predict`` takes.
    """
    _train(cfg, subject_ids)
    return model_dir(cfg)


def training_record(folder: Path) -> dict:
    """What nnU-Net logged for a trained part: epochs, last losses and pseudo Dice, validation Dice, time."""
    checkpoint = torch.load(fold_folder(folder) / FINAL_CHECKPOINT, map_location="cpu", weights_only=False)
    logged = checkpoint["logging"]
    record = {
        "epochs": int(checkpoint["current_epoch"]),
        "final_train_loss": float(logged["train_losses"][-1]),
        "final_val_loss": float(logged["val_losses"][-1]),
        "final_pseudo_dice": float(logged["mean_fg_dice"][-1]),
        "training_seconds": float(logged["epoch_end_timestamps"][-1] - logged["epoch_start_timestamps"][0]),
    }
    validation = fold_folder(folder) / "validation" / "summary.json"
    if validation.is_file():
        record["validation_dice"] = float(json.loads(validation.read_text())["foreground_mean"]["Dice"])
    return record


def predictions_outdated(predictions: Path, trained: TrainedModel) -> bool:
    """True when a label map in ``predictions`` is older than a part model (retrained or resumed since)."""
    files = list(predictions.glob(f"*{NIFTI_SUFFIX}")) if predictions.is_dir() else []
    if not files:
        return False
    return min(f.stat().st_mtime_ns for f in files) < trained.trained_ns()


def evaluate_test_split(cfg: DictConfig, predictions: Path, out_dir: Path, subjects: list[str],
                        class_ids: list[int] | None = None) -> dict | None:
    """The evaluation hook: score the test predictions against their labels, when evaluation is installed;
    ``class_ids``: the classes the model segments (a class subset such as narrow's 13 is scored on those)."""
    if importlib.util.find_spec("totalseg_train.evaluate") is None:
        log.warning("totalseg_train.evaluate is not available: the test predictions are not scored")
        return None
    from totalseg_train.engine.contrast_scores import write_scores_by_contrast
    from totalseg_train.evaluate import evaluate_folders
    from totalseg_train.evaluate.aggregate import BootstrapSettings
    from totalseg_train.evaluate.folders import SCORES_FILE

    tolerance = cfg.evaluation.tolerance_mm
    evaluation = evaluate_folders(cfg.labels_dir, predictions, out_dir,
                                  tolerance_mm=None if tolerance is None else float(tolerance),
                                  workers=int(cfg.workers), subjects=list(subjects), progress=False,
                                  class_ids=class_ids)
    # Native and contrast subjects apart: a model trained on both should not be worse on native scans.
    evaluation["by_contrast"] = write_scores_by_contrast(out_dir / SCORES_FILE, cfg.subjects_csv,
                                                         BootstrapSettings(**evaluation["bootstrap"]))
    return evaluation


def json_safe(value):
    """The value with NaN and infinite floats replaced by None (strict JSON has neither)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def numeric_leaves(tree: dict, prefix: str) -> dict[str, float]:
    """Flatten the numbers of a nested dictionary into ``prefix/key/subkey`` entries."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(numeric_leaves(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def run(cfg: DictConfig) -> dict:
    """The full command: train, predict the test split, merge, summarise, evaluate. Returns the summary."""
    split = _train(cfg, None)
    results = model_dir(cfg)
    # The last part jobs of a sweep may finish together: the later one waits, then finds the work done.
    with stage_lock(results, "summary", wait=True):
        return _predict_and_summarise(cfg, split, results)


def finished_summary(cfg: DictConfig, split: Split, results: Path, trained: TrainedModel) -> dict | None:
    """The stored summary when the final step is done for these weights, test images and labels and evaluation
    settings (the second of two part jobs finishing together, or the step run again as its own command)."""
    path = results / SUMMARY
    if trained.untrained_parts() or not path.is_file():
        return None
    inputs = [nifti_path(cfg.labels_dir, s) for s in split.test] + [nifti_path(cfg.images_dir, s) for s in split.test]
    newest = max([trained.trained_ns(), *(p.stat().st_mtime_ns for p in inputs if p.exists())])
    if path.stat().st_mtime_ns < newest:
        return None
    summary = json.loads(path.read_text())
    same = (summary.get("evaluation") is not None and summary["split"]["test_subjects"] == list(split.test)
            and summary["config"]["evaluation"] == OmegaConf.to_container(cfg.evaluation, resolve=True)
            and summary["config"]["labels_dir"] == str(cfg.labels_dir))
    return summary if same else None


def _predict_and_summarise(cfg: DictConfig, split: Split, results: Path) -> dict:
    trained = read_model_manifest(results)
    done = finished_summary(cfg, split, results, trained)
    if done is not None:
        log.info("the test split is predicted and scored for these part models already (%s)", results / SUMMARY)
        return done
    summary = {
        "experiment": str(cfg.model.name),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "split": {"file": str(cfg.split.file), **split.counts(), "test_subjects": list(split.test)},
        "parts": {p.part: {"dataset": p.dataset, "model_folder": str(p.folder), "trained": is_trained(p.folder)}
                  for p in trained.parts},
        "predictions": None,
        "evaluation": None,
    }
    for part in trained.parts:
        if is_trained(part.folder):
            summary["parts"][part.part].update(training_record(part.folder))
    waiting = trained.untrained_parts()
    if waiting:
        log.info("parts %s are not trained yet: the test split is predicted once every part is", waiting)
    elif split.test:
        predictions = results / PREDICTIONS
        predict(cfg, [nifti_path(cfg.images_dir, s) for s in split.test], predictions,
                overwrite=predictions_outdated(predictions, trained))
        summary["predictions"] = {"dir": str(predictions), "n": len(split.test)}
        summary["evaluation"] = evaluate_test_split(cfg, predictions, results, list(split.test), trained.class_ids())
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    summary = json_safe(summary)
    write_text(results / SUMMARY, json.dumps(summary, indent=1, default=str) + "\n")
    if cfg.logger.name == "wandb" and summary["evaluation"]:
        test = numeric_leaves(summary["evaluation"], "test")
        for part in trained.parts:
            add_to_nnunet_run(fold_folder(part.folder), cfg, summary=test)
    return summary
