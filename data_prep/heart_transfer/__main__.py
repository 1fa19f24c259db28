"""python -m data_prep.heart_transfer labels_dir=DIR: contrast heart labels onto the native scans of the same exams.

See configs/heart_transfer.yaml for every setting (``--cfg job`` prints them resolved).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from data_prep.heart_transfer.stage import ERROR, FLAGGED, NO_LABELS, TRANSFERRED, run
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.shards import Shard

log = logging.getLogger("heart_transfer")


@hydra.main(config_path=CONFIG_PATH, config_name="heart_transfer", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    try:
        report = run(cfg)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    counts = report.status.value_counts()
    done = report[report.status == TRANSFERRED]
    print(f"heart transfer: {len(report)} pairs; {len(done)} transferred ({int(done.reused.sum())} up to date), "
          f"{counts.get(FLAGGED, 0)} flagged by QC and held back, {counts.get(NO_LABELS, 0)} without contrast labels, "
          f"{counts.get(ERROR, 0)} failed")
    print(f"  labels for the heart model: {Path(cfg.out) / 'labels'} (sources: labels/index.csv); "
          f"held back for review: {Path(cfg.out) / 'flagged'}")
    print(f"  QC per pair: {cfg.report}; sheets: {Path(cfg.qa_dir) / 'subjects'} "
          f"(python -m annotation_loop.review qa_dir={cfg.qa_dir})")
    if len(report) and done.empty and Shard.from_config(cfg.get("shard")).whole:  # a shard may hold flagged pairs only
        print("error: no pair could be transferred; see the reasons in the report", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
