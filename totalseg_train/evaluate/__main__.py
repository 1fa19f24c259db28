"""python -m totalseg_train.evaluate gt_dir=DIR pred_dir=DIR [out_dir=DIR] [tolerance_mm=3] [workers=2]"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from totalseg_train.cli_errors import exits_cleanly
from totalseg_train.config import CONFIG_PATH
from totalseg_train.evaluate.aggregate import BootstrapSettings
from totalseg_train.evaluate.folders import SCORES_FILE, SUMMARY_FILE, evaluate_folders
from totalseg_train.shards import Shard

log = logging.getLogger("totalseg_train.evaluate")


def _format(entry: dict) -> str:
    parts = []
    for metric in ("dice", "nsd"):
        m = entry[metric]
        if m["mean"] is None:
            parts.append(f"{metric} n/a")
        else:
            parts.append(f"{metric} {m['mean']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]")
    return f"{', '.join(parts)} ({entry['n_pairs']} pairs)"


@hydra.main(config_path=CONFIG_PATH, config_name="evaluate", version_base="1.3")
@exits_cleanly
def main(cfg: DictConfig) -> None:
    summary = evaluate_folders(
        cfg.gt_dir,
        cfg.pred_dir,
        cfg.out_dir,
        tolerance_mm=cfg.tolerance_mm,
        workers=cfg.workers,
        subjects=list(cfg.subjects) if cfg.subjects is not None else None,
        resample=cfg.resample,
        bootstrap=BootstrapSettings.from_config(cfg.bootstrap),
        shard=Shard.from_config(cfg.shard),
    )
    if "shard" in summary:
        shard, counts = summary["shard"], summary["subjects"]
        log.info("shard %d of %d: %d subjects scored into %s/shards; the last shard of the sweep merges the tables",
                 shard["index"], shard["count"], counts["scored"], cfg.out_dir)
        if counts["failed"]:
            raise SystemExit(f"{len(counts['failed'])} subject(s) could not be evaluated: "
                             + "; ".join(counts["failed"].values()))
        return
    confidence = round(cfg.bootstrap.confidence * 100)
    log.info("micro-average over all subject-class pairs (%d %% CI): %s", confidence, _format(summary["overall"]))
    for category, entry in summary["per_category"].items():
        log.info("  %-9s %s", category, _format(entry))
    fp = summary["false_positive_classes"]
    log.info("false-positive classes (predicted, absent from the ground truth): %d in %d subject(s)",
             fp["n_pairs"], fp["n_subjects"])
    log.info("wrote %s/%s and %s", cfg.out_dir, SCORES_FILE, SUMMARY_FILE)
    failed = summary["subjects"]["failed"]
    if failed:
        raise SystemExit(f"{len(failed)} subject(s) could not be evaluated: " + "; ".join(failed.values()))


if __name__ == "__main__":
    main()
