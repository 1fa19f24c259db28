"""python -m data_prep.heart_transfer.apply model=<results>/heart: heart sub-parts for every curated subject.

The trained heart model (``+experiment=heart`` or ``heart_tiny``) predicts the six heart sub-part classes
of every subject in ``subjects_csv`` through the engine's ``predict``, into ``out`` (``${paths.heart}/
predicted``), where the annotation loop picks them up (``bootstrap.heart_predictions``): annotators
start from them, and each round's predictions take their heart classes from them. ``index.csv`` records
which model predicted each subject (``totalseg_train.heart_predictions``).

Resumable: a subject already predicted by the same model (same folder, same training) is skipped; a
retrained model predicts everyone again. Subjects are predicted in chunks and the index is written
after each, so a killed run loses at most one chunk. Subjects no longer curated (consent withdrawn,
excluded) lose their prediction.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from totalseg_train import classes
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.engine.labelled_subjects import read_subjects
from totalseg_train.engine.inference import predict
from totalseg_train.engine.manifest import TrainedModel, read_model_manifest
from totalseg_train.heart_predictions import INDEX_FILE, heart_class_ids, read_index, write_index
from totalseg_train.images import nifti_path
from totalseg_train.stage_lock import stage_lock

log = logging.getLogger(__name__)


class NotAHeartModel(ValueError):
    """The model folder holds no trained heart model; the message names the folder and the problem."""


@dataclass
class ApplyResult:
    predicted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    missing_images: list[str] = field(default_factory=list)
    index: Path | None = None


def load_heart_model(folder: str | Path) -> TrainedModel:
    """The trained model in ``folder``, or NotAHeartModel unless it predicts exactly the six heart sub-parts."""
    try:
        model = read_model_manifest(folder)
    except FileNotFoundError as err:
        raise NotAHeartModel(str(err)) from None
    if model.class_ids() != heart_class_ids():
        names = [classes.by_id(i).name for i in model.class_ids()]
        shown = ", ".join(names[:8]) + (f" ... ({len(names)} classes)" if len(names) > 8 else "")
        raise NotAHeartModel(
            f"{model.directory}: the {model.experiment} model predicts {shown}, not exactly the six heart sub-parts "
            f"({', '.join(classes.by_id(i).name for i in heart_class_ids())}); train one with +experiment=heart")
    untrained = model.untrained_parts()
    if untrained:
        raise NotAHeartModel(f"{model.directory}: part model(s) {', '.join(untrained)} are not trained yet")
    return model


def trained_stamp(model: TrainedModel) -> str:
    return datetime.fromtimestamp(model.trained_ns() / 1e9, timezone.utc).isoformat(timespec="microseconds")


def apply_heart_model(cfg: DictConfig) -> ApplyResult:
    """Predict every curated subject not yet predicted by this model; returns what was done."""
    with stage_lock(cfg.out, "heart-apply"):
        return _apply_heart_model(cfg)


def _apply_heart_model(cfg: DictConfig) -> ApplyResult:
    model = load_heart_model(cfg.model)
    model_name, stamp = str(model.directory.resolve()), trained_stamp(model)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    subjects = list(read_subjects(cfg.subjects_csv).subject_id)
    index = read_index(out)
    result = ApplyResult()

    gone = sorted(set(index.subject_id) - set(subjects))
    for subject_id in gone:  # no longer curated: its data must go too
        nifti_path(out, subject_id).unlink(missing_ok=True)
    index = index[~index.subject_id.isin(gone)]
    result.removed = gone

    predicted_by = {row.subject_id: (row.model, row.model_trained, out / row.file) for row in index.itertuples()}
    todo = []
    for subject_id in subjects:
        image = nifti_path(cfg.images_dir, subject_id)
        if not image.is_file():
            log.error("%s: image missing; subject %s is not predicted", image, subject_id)
            result.missing_images.append(subject_id)
            continue
        model_of, trained_of, file = predicted_by.get(subject_id, (None, None, None))
        # Done: by this model, and after the image was last curated (a re-converted series has a new grid).
        if (model_of, trained_of) == (model_name, stamp) and file.is_file() \
                and file.stat().st_mtime_ns >= image.stat().st_mtime_ns:
            result.skipped.append(subject_id)
        else:
            todo.append(subject_id)

    chunk = max(1, int(cfg.chunk))
    for start in range(0, len(todo), chunk):
        batch = todo[start:start + chunk]
        log.info("heart model %s: subjects %d-%d of %d", model_name, start + 1, start + len(batch), len(todo))
        # overwrite: a file of another model (or an unindexed one from a killed run) is predicted again.
        written = predict(model.directory, [nifti_path(cfg.images_dir, s) for s in batch], out, device=str(cfg.device),
                          workers=int(cfg.workers), threads=cfg.torch_threads, overwrite=True, progress=bool(cfg.progress),
                          verbose=bool(cfg.verbose))
        rows = pd.DataFrame({"subject_id": batch, "model": model_name, "model_trained": stamp,
                             "file": [written[s].name for s in batch]})
        index = pd.concat([index[~index.subject_id.isin(batch)], rows], ignore_index=True)
        write_index(index, out)
        result.predicted += batch
    result.index = out / INDEX_FILE
    if gone or not result.index.is_file():  # else already written, or unchanged: a rerun leaves it alone
        write_index(index, out)
    return result


@hydra.main(config_path=CONFIG_PATH, config_name="heart_apply", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        result = apply_heart_model(cfg)
    except NotAHeartModel as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"heart sub-parts of {len(result.predicted)} subjects predicted, {len(result.skipped)} already predicted "
          f"by this model; {cfg.out} (index: {result.index})")
    if result.removed:
        print(f"  removed the predictions of {len(result.removed)} subjects no longer curated")
    if result.missing_images:
        print(f"  no image for {len(result.missing_images)} subjects: {', '.join(result.missing_images)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
