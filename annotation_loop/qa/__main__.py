"""python -m annotation_loop.qa labels_dir=DIR out=DIR: QA sheets, cohort grids and QA flags."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from annotation_loop.qa.render_cohort import render_subjects
from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.shards import Shard


@hydra.main(config_path=CONFIG_PATH, config_name="qa", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg, "labels_dir"):
        raise SystemExit("labels_dir is required: python -m annotation_loop.qa labels_dir=DIR "
                         "(a folder of <subject_id>.nii.gz label maps)")
    subjects = list(cfg.subjects) if cfg.subjects is not None else None
    try:
        summary = render_subjects(cfg.labels_dir, cfg.out, cfg, subjects)
    except FileNotFoundError as exc:
        raise SystemExit(f"error: {exc}") from exc
    flagged = int((summary.flags.n_flags > 0).sum())
    shard = Shard.from_config(cfg.shard)
    if not summary.grids and not shard.whole:
        print(f"QA shard {shard.index} of {shard.count}: {len(summary.flags)} subjects from {cfg.labels_dir}, "
              f"{len(summary.rendered)} sheets rendered now; the last shard of the sweep merges the tables "
              f"into {cfg.out}")
        return
    print(f"QA of {len(summary.flags)} subjects from {cfg.labels_dir}")
    kept = len(summary.renders) - len(summary.rendered) - len(summary.rewritten)
    print(f"  sheets rendered now: {len(summary.rendered)} (up to date: {kept})")
    if summary.rewritten:
        print(f"  sheets given the whole cohort's flags from their shard's frames: {len(summary.rewritten)}")
    print(f"  subjects with QA flags: {flagged}; flags table: {cfg.out}/flags.csv")
    for error in summary.errors:
        print(f"  error: {error}")
    print(f"  sheets: {cfg.out}/subjects/<subject_id>.png")
    for grid in summary.grids:
        print(f"  grid:   {grid}")


if __name__ == "__main__":
    main()
