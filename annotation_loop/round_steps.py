"""A round's calls into the training engine and the QA renderer, with the round's own folders."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from annotation_loop.qa import render_subjects
from totalseg_train.atomic import write_table
from totalseg_train.config import compose_config
from totalseg_train.engine.inference import ENTROPY_TABLE, predict
from totalseg_train.engine.pipeline import train_model
from totalseg_train.images import subject_id_of


def train_config(cfg: DictConfig, round_dir: Path, experiment: str, init_from: str | None = None) -> DictConfig:
    """The training config of one round: its own nnU-Net folders, labels and split, no test split, no
    final validation; ``init_from``: a model folder whose weights start the training (for
    ``bootstrap.warm_start_epochs`` epochs, if set)."""
    return compose_config("train", [
        f"+experiment={experiment}",
        f"paths.workspace={cfg.paths.workspace}",
        f"paths.nnunet={round_dir}/nnunet",
        f"paths.results={round_dir}/results",
        f"images_dir={cfg.bootstrap.images_dir}",
        f"subjects_csv={cfg.bootstrap.subjects_csv}",
        f"labels_dir={round_dir}/labels",
        "split.holdout_test=false",
        # The round's real validation is the annotators' correction of its predictions.
        "model.final_validation=false",
        f"verbose={cfg.verbose}",
        *([f"model.init_from={init_from}"] if init_from else []),
        *([f"model.epochs={cfg.bootstrap.warm_start_epochs}"] if init_from and cfg.bootstrap.warm_start_epochs else []),
        *cfg.bootstrap.train_overrides,
    ])


def train(train_cfg: DictConfig, subject_ids: list[str]) -> str:
    """Train on ``subject_ids``; returns the model folder."""
    return str(train_model(train_cfg, subject_ids))


def predict_batch(train_cfg: DictConfig, images: list[Path], out_dir: Path, uncertainty_csv: Path) -> pd.DataFrame:
    """Predict the batch with its softmax entropy; write subject_id, entropy (voxel-weighted mean)."""
    predict(train_cfg, images, out_dir, uncertainty=True)
    return write_uncertainty(out_dir / ENTROPY_TABLE, [subject_id_of(p) for p in images], uncertainty_csv)


def write_uncertainty(entropy_csv: Path, subject_ids: list[str], uncertainty_csv: Path,
                      replaced: dict[str, list[int]] | None = None) -> pd.DataFrame:
    """Write each subject's entropy (the voxel-weighted mean of its predicted classes' mean entropy) from the
    engine's per-class table. ``replaced``: per subject, classes whose voxels another model (the heart model)
    gave; they are left out, since the round model's doubt about them says nothing of the work left."""
    per_class = pd.read_csv(entropy_csv, dtype={"subject_id": str})
    per_class = per_class[per_class.subject_id.isin(subject_ids)]
    for subject_id, class_ids in (replaced or {}).items():
        per_class = per_class[~((per_class.subject_id == subject_id) & per_class.class_id.isin(class_ids))]
    weighted = per_class.assign(w=per_class.mean_entropy * per_class.n_voxels).groupby("subject_id")
    table = (weighted.w.sum() / weighted.n_voxels.sum()).rename("entropy").reset_index()
    missing = sorted(set(subject_ids) - set(table.subject_id))
    table = pd.concat([table, pd.DataFrame({"subject_id": missing, "entropy": 0.0})], ignore_index=True)
    write_table(table, uncertainty_csv)
    return table


def render_qa(cfg: DictConfig, predicted_dir: Path, qa_dir: Path, subject_ids: list[str]) -> None:
    qa_cfg = compose_config("qa", [f"paths.workspace={cfg.paths.workspace}", f"labels_dir={predicted_dir}",
                                   f"out={qa_dir}", f"subjects_csv={cfg.bootstrap.subjects_csv}",
                                   f"images_dir={cfg.bootstrap.images_dir}"])
    render_subjects(predicted_dir, qa_dir, qa_cfg, subject_ids)
