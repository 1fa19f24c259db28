"""The aging study over a statistics table: correlations, the paper's values beside ours, figures.

Writes ``<out>/correlations.csv`` (class_name, measure, n, rs, p, p_corrected, significant),
``correlations_by_sex.csv`` when ``by_sex``, ``paper_comparison.csv``, ``summary.json`` (subjects,
subjects without age, structures left out as cut) and ``scatter_strongest.png`` / ``rs_heatmap.png``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from totalseg_train.aging.correlations import AgingSettings, correlate, correlate_by_sex, usable_rows
from totalseg_train.aging.figures import heatmap_figure, scatter_figure, strongest
from totalseg_train.aging.paper import beside_paper
from totalseg_train.atomic import write_table, write_text
from totalseg_train.stage_lock import stage_lock

log = logging.getLogger(__name__)


def settings_of(cfg: DictConfig) -> AgingSettings:
    return AgingSettings(tuple(cfg.measures), float(cfg.threshold), int(cfg.min_subjects), bool(cfg.complete_only))


def run(cfg: DictConfig) -> dict:
    """The study on ``cfg.statistics``; returns the summary. One run at a time per output folder."""
    with stage_lock(cfg.out, "aging"):
        return _run(cfg)


def _run(cfg: DictConfig) -> dict:
    path = Path(cfg.statistics)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no statistics table; run python -m totalseg_train.statistics first")
    stats = pd.read_parquet(path)
    missing = {"subject_id", "class_name", "age", "sex", "complete", *cfg.measures} - set(stats.columns)
    if missing:
        raise ValueError(f"{path}: lacks the column(s) {sorted(missing)}")
    settings = settings_of(cfg)
    rows, counts = usable_rows(stats, settings)
    if counts.without_age:
        log.warning("%d of %d subjects have no age: left out of the aging study", counts.without_age, counts.subjects)
    out = Path(cfg.out)
    correlations = correlate(rows, settings)
    write_table(correlations, out / "correlations.csv")
    if cfg.by_sex:
        write_table(correlate_by_sex(rows, settings), out / "correlations_by_sex.csv")
    paper = beside_paper(correlations)
    write_table(paper, out / "paper_comparison.csv")
    top = strongest(correlations, int(cfg.figures.strongest))
    scatter_figure(rows, top, out / "scatter_strongest.png", float(cfg.figures.trend_bandwidth_years))
    heatmap_figure(correlations, out / "rs_heatmap.png")
    summary = {"statistics": str(path), "subjects": counts.subjects, "subjects_without_age": counts.without_age,
               "subjects_analysed": counts.subjects - counts.without_age,
               "rows_cut_by_scan_edge": counts.rows_incomplete, "complete_only": settings.complete_only,
               "tests": int(correlations.p.notna().sum()), "threshold": settings.threshold,
               "significant": int(correlations.significant.sum())}
    write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return {**summary, "correlations": correlations, "paper": paper}
