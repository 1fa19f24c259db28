"""python -m annotation_loop.start: register the curated subjects and hand out the first ones to draw.

The bootstrap begins as in the paper: the first subjects of the schedule (5) are annotated from
scratch. They go to correction with no prediction; ``ingest`` records them as manual annotations.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pandas as pd
from omegaconf import DictConfig

from annotation_loop.ledger import IN_CORRECTION, UNLABELED, Ledger
from totalseg_train.atomic import write_table
from totalseg_train.images import nifti_path


def register_curated(ledger: Ledger, subjects_csv: Path, seed: int) -> int:
    """Add curated subjects not yet in the ledger, queued in a seeded random order."""
    if not subjects_csv.exists():
        raise FileNotFoundError(f"{subjects_csv}: no curated subjects (run python -m data_prep.curate first)")
    ids = sorted(pd.read_csv(subjects_csv, dtype={"subject_id": str}).subject_id)
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    return ledger.register(ids, order)


def worklist_path(annotation_dir: Path, round_number: int) -> Path:
    return annotation_dir / "worklists" / f"round_{round_number:02d}.csv"


def start(cfg: DictConfig) -> list[str]:
    """Register subjects; if nobody has been handed out yet, hand out the first batch to draw."""
    ledger = Ledger(cfg.bootstrap.ledger)
    try:
        register_curated(ledger, Path(cfg.bootstrap.subjects_csv), int(cfg.bootstrap.seed))
        counts = ledger.counts()
        if counts[UNLABELED] < sum(counts.values()):
            return []  # already started
        first = [s.subject_id for s in ledger.subjects(UNLABELED)[: int(cfg.bootstrap.schedule[0])]]
        with ledger.transaction() as db:
            for subject_id in first:
                ledger.move(db, subject_id, IN_CORRECTION, round=0, source="manual")
        images = Path(cfg.bootstrap.images_dir)
        write_table(
            pd.DataFrame({"rank": range(1, len(first) + 1), "subject_id": first,
                          "task": "annotate from scratch", "image": [str(nifti_path(images, s)) for s in first]}),
            worklist_path(Path(cfg.paths.annotation), 0),
        )
        return first
    finally:
        ledger.close()


@hydra.main(config_path="../configs", config_name="bootstrap_start", version_base="1.3")
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
