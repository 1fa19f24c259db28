"""python -m annotation_loop.start: register the curated subjects and hand out the first ones to draw.

The bootstrap begins as in the paper: the first subjects of the schedule (5) are annotated from
scratch. They go to correction with no prediction; ``ingest`` records them as manual annotations.
Where the heart model has predicted a subject (``bootstrap.heart_predictions``), its annotator starts
from a label map holding the heart sub-parts (``annotation/start/<subject_id>.nii.gz``, the worklist's
``start_from``), and the effort is measured against that map.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from annotation_loop.heart_prior import heart_predictions, write_start_map
from annotation_loop.label_store import LabelStore
from annotation_loop.ledger import IN_CORRECTION, UNLABELED, Ledger
from totalseg_train.atomic import write_table
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.images import nifti_path
from totalseg_train.stage_lock import stage_lock


def register_curated(ledger: Ledger, subjects_csv: Path, seed: int) -> int:
    """Add curated subjects not yet in the ledger, queued in a seeded random order."""
    if not subjects_csv.exists():
        raise FileNotFoundError(f"{subjects_csv}: no curated subjects (run python -m data_prep.curate first)")
    ids = sorted(pd.read_csv(subjects_csv, dtype={"subject_id": str}).subject_id)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return ledger.register(ids, order)


START_WITH_HEART = "annotate, starting from the heart model's sub-parts (start_from)"


def worklists_dir(annotation_dir: Path) -> Path:
    return annotation_dir / "worklists"


def worklist_path(annotation_dir: Path, round_number: int) -> Path:
    return worklists_dir(annotation_dir) / f"round_{round_number:02d}.csv"


def start(cfg: DictConfig) -> list[str]:
    """Register subjects; if nobody has been handed out yet, hand out the first batch to draw."""
    with stage_lock(cfg.paths.annotation, "start"):
        return _start(cfg)


def _start(cfg: DictConfig) -> list[str]:
    ledger = Ledger(cfg.bootstrap.ledger)
    try:
        register_curated(ledger, Path(cfg.bootstrap.subjects_csv), int(cfg.bootstrap.seed))
        counts = ledger.counts()
        if counts[UNLABELED] < sum(counts.values()):
            return []  # already started
        first = [s.subject_id for s in ledger.subjects(UNLABELED)[: int(cfg.bootstrap.schedule[0])]]
        images, store = Path(cfg.bootstrap.images_dir), LabelStore(cfg.paths.annotation)
        # Start maps first, then the ledger: a kill in between hands out the same subjects again on a re-run.
        hearts = heart_predictions(cfg)
        given = {s: hearts[s] for s in first
                 if s in hearts and write_start_map(hearts[s], nifti_path(images, s), store.start_map(s))}
        with ledger.transaction() as db:
            for subject_id in first:
                ledger.move(db, subject_id, IN_CORRECTION, round=0, source="manual")
                if subject_id in given:
                    ledger.record_heart_prior(db, subject_id, 0, given[subject_id].model,
                                              str(store.start_map(subject_id)))
        write_table(
            pd.DataFrame({"rank": range(1, len(first) + 1), "subject_id": first,
                          "task": [START_WITH_HEART if s in given else "annotate from scratch" for s in first],
                          "image": [str(nifti_path(images, s)) for s in first],
                          "start_from": [str(store.start_map(s)) if s in given else "" for s in first]}),
            worklist_path(Path(cfg.paths.annotation), 0),
        )
        return first
    finally:
        ledger.close()


@hydra.main(config_path=CONFIG_PATH, config_name="bootstrap_start", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    first = start(cfg)
    if first:
        print(f"annotate these {len(first)} subjects from scratch, then run "
              f"python -m annotation_loop.ingest corrected_dir=<folder of <subject_id>.nii.gz>:")
        print("  " + " ".join(first))
        print(f"worklist: {worklist_path(Path(cfg.paths.annotation), 0)}")
    else:
        print("bootstrap already started; new curated subjects (if any) were queued")


if __name__ == "__main__":
    main()
