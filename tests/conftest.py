"""Shared fixtures: the shared real data and one small phantom cohort per test session."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from totalseg_train.config import compose_config

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CT_EXAMPLE = SHARED / "data" / "ct_example"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"tests need the shared data beside the project: {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory) -> Path:
    """A small phantom cohort (8 patients: every fixed role once) in a fresh workspace; returns raw/."""
    from data_prep.phantom.cohort import generate_cohort

    workspace = tmp_path_factory.mktemp("phantom_ws")
    cfg = compose_config("phantom", [f"paths.workspace={workspace}", "n_subjects=8", "seed=0"])
    generate_cohort(cfg, progress=False)
    return Path(cfg.out)


@pytest.fixture(scope="session")
def phantom_index(phantom_cohort) -> pd.DataFrame:
    return pd.read_csv(phantom_cohort / "truth" / "index.csv", keep_default_na=False)
