"""Assemble every section of the paper report from the workspace and write it."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from totalseg_train import published
from totalseg_train.evaluate.aggregate import BootstrapSettings
from totalseg_train.report.aging import aging_section
from totalseg_train.report.comparison import comparison_section
from totalseg_train.report.dataset import dataset_section
from totalseg_train.report.document import Section, write_report
from totalseg_train.report.effort import effort_section
from totalseg_train.report.experiments import find_experiments
from totalseg_train.report.failures import failure_section
from totalseg_train.report.overall import overall_section, per_class_section
from totalseg_train.report.runtime import runtime_section
from totalseg_train.stage_lock import stage_lock

TITLE = "TotalSegmentator reproduced: the paper's tables from this workspace"


def _plain(node) -> object:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def build_sections(cfg: DictConfig) -> list[Section]:
    inputs, workspace, out = cfg.inputs, str(cfg.paths.workspace), Path(cfg.out)
    experiments, missing = find_experiments(Path(inputs.results), list(cfg.experiments), workspace)
    bootstrap = BootstrapSettings.from_config(cfg.bootstrap)
    paper_models = dict(_plain(cfg.paper.models))
    overall, per_class = overall_section(experiments, missing, bootstrap, paper_models)
    return [
        dataset_section(Path(inputs.subjects_csv), Path(inputs.series_table), Path(inputs.curation_summary),
                        Path(inputs.characteristics_csv),
                        Path(inputs.split_file), dict(_plain(cfg.dataset.paper_exclusions)), workspace),
        overall,
        per_class_section(experiments, per_class, int(cfg.per_class.worst)),
        comparison_section(experiments, str(cfg.comparison.a), str(cfg.comparison.b), _plain(cfg.comparison.classes),
                           list(cfg.comparison.metrics), workspace),
        runtime_section(Path(inputs.runtime_csv), paper_models, workspace),
        failure_section(experiments, float(cfg.failures.dice_below), dict(_plain(cfg.failures.paper_groups)),
                        int(cfg.failures.worst), int(cfg.failures.top), Path(inputs.qa_sheets), out, workspace),
        effort_section(Path(inputs.bootstrap_rounds), workspace),
        aging_section(Path(inputs.aging_dir), int(cfg.aging.shown), workspace),
    ]


def build_report(cfg: DictConfig) -> Path:
    """Write the report under ``cfg.out``; returns the path of its index.html. One run at a time per folder."""
    with stage_lock(cfg.out, "report"):
        return _build_report(cfg)


def _build_report(cfg: DictConfig) -> Path:
    intro = [f"Workspace: {cfg.paths.workspace}. Every table puts the paper's published value beside ours where "
             f"the paper has one (paper: {published.CITATION}; values and their sources in "
             "totalseg_train/data/paper_headline_v1.csv and paper_results_v1.csv). Each table is also a CSV "
             "in tables/, each figure a PNG in figures/."]
    return write_report(Path(cfg.out), TITLE, intro, build_sections(cfg))
