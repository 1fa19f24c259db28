"""The aging study on a phantom cohort with planted age effects: it must find them, and little else."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data_prep.phantom.age_effects import AgeEffects
from data_prep.phantom.study import generate_study
from totalseg_train.aging.correlations import COLUMNS
from totalseg_train.aging.study import run as run_aging
from totalseg_train.config import compose_config
from totalseg_train.statistics.stage import run as run_statistics

N_SUBJECTS = 160


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """160 whole-body phantom subjects at 8 mm: images, truth labels, subjects.csv, then their statistics."""
    workspace = tmp_path_factory.mktemp("aging_ws")
    study = compose_config("phantom_study", [f"paths.workspace={workspace}", f"n_subjects={N_SUBJECTS}", "workers=2"])
    generate_study(study, progress=False)
    stats = compose_config("statistics", [f"paths.workspace={workspace}", f"labels_dir={study.out}/labels",
                                          f"images_dir={study.out}/images", f"subjects_csv={study.out}/subjects.csv",
                                          "workers=2", "progress=false"])
    assert (run_statistics(stats).status == "measured").all()
    return workspace, study


def aging_config(workspace, *overrides):
    return compose_config("aging", [f"paths.workspace={workspace}", *overrides])


def test_recovers_every_planted_effect_and_flags_few_others(cohort):
    workspace, study = cohort
    result = run_aging(aging_config(workspace, "by_sex=true"))
    correlations = pd.read_csv(workspace / "reports" / "aging" / "correlations.csv")
    assert list(correlations.columns) == COLUMNS
    assert set(correlations.measure) == {"volume_ml", "mean_hu"} and len(correlations) == 2 * 104
    planted = {(name, measure): sign for name, measure, sign in AgeEffects.from_config(study).planted()}
    assert ("aorta", "volume_ml") in planted and ("spleen", "volume_ml") in planted
    key = list(zip(correlations.class_name, correlations.measure))
    is_planted = np.array([k in planted for k in key])
    found = correlations[is_planted].assign(sign=[planted[k] for k, p in zip(key, is_planted) if p])
    weak = found[~(found.significant & (found.rs * found.sign >= 0.5))]
    assert weak.empty, f"planted effects not recovered:\n{weak}"
    others = correlations[~is_planted]
    assert others.p.notna().sum() > 100
    assert others.significant.mean() <= 0.05, others[others.significant]
    paper = result["paper"].set_index("class_name")
    assert paper.loc["aorta", "paper_rs"] == pytest.approx(0.64) and paper.loc["aorta", "rs"] > 0.5
    assert paper.loc["autochthon_left", "paper_rs"] == pytest.approx(-0.74)
    by_sex = pd.read_csv(workspace / "reports" / "aging" / "correlations_by_sex.csv")
    assert set(by_sex.sex) == {"F", "M"} and (by_sex.groupby("sex").size() == 208).all()
    for figure in ("scatter_strongest.png", "rs_heatmap.png"):
        assert (workspace / "reports" / "aging" / figure).stat().st_size > 10_000


def test_subjects_without_age_are_counted_and_left_out(cohort, tmp_path):
    workspace, _ = cohort
    stats = pd.read_parquet(workspace / "reports" / "statistics" / "statistics.parquet")
    no_age = sorted(stats.subject_id.unique())[:15]
    stats.loc[stats.subject_id.isin(no_age), "age"] = np.nan
    path = tmp_path / "statistics.parquet"
    stats.to_parquet(path)
    run_aging(aging_config(tmp_path, f"statistics={path}"))
    summary = json.loads((tmp_path / "reports" / "aging" / "summary.json").read_text())
    assert summary["subjects"] == N_SUBJECTS and summary["subjects_without_age"] == 15
    assert summary["subjects_analysed"] == N_SUBJECTS - 15
    aorta = pd.read_csv(tmp_path / "reports" / "aging" / "correlations.csv").set_index(["class_name", "measure"])
    assert aorta.loc[("aorta", "volume_ml"), "n"] == N_SUBJECTS - 15
