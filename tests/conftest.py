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


@pytest.fixture(scope="session")
def coarse_cohort():
    """Factory ``make(workspace, n_subjects)``: a phantom cohort drawn at 6 mm in-plane and 5 mm slices (few voxels:
    quick to train on and to predict), curated by the real curation stage, its truth labels exported."""
    import subprocess
    import sys

    from data_prep.phantom.cohort import generate_cohort
    from data_prep.phantom.truth_labels import export_truth_labels

    def make(workspace: Path, n_subjects: int) -> Path:
        cfg = compose_config("phantom", [f"paths.workspace={workspace}", f"n_subjects={n_subjects}", "seed=0",
                                         "pixel_spacing_mm=6.0", "slice_thickness_mm.values=[5.0]",
                                         "slice_thickness_mm.weights=[1.0]"])
        generate_cohort(cfg, progress=False)
        run = subprocess.run([sys.executable, "-m", "data_prep.curate", f"paths.workspace={workspace}", "progress=false"],
                             capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 0, f"curation failed:\n{run.stderr[-4000:]}"
        export_truth_labels(workspace / "private" / "pseudonym_key.csv", workspace / "raw" / "truth",
                            workspace / "curated" / "images", workspace / "truth_labels")
        return workspace

    return make


@pytest.fixture(scope="session")
def curated_workspace(phantom_cohort) -> Path:
    """The phantom cohort curated by ``python -m data_prep.curate`` (a real run, Hydra logs included) and its
    truth labels exported; returns the workspace (raw/, curated/, private/, reports/, truth_labels/, logs/)."""
    import subprocess
    import sys

    from data_prep.phantom.truth_labels import export_truth_labels

    workspace = phantom_cohort.parent
    run = subprocess.run([sys.executable, "-m", "data_prep.curate", f"paths.workspace={workspace}", "progress=false"],
                         capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, f"curation failed:\n{run.stderr[-4000:]}"
    export_truth_labels(workspace / "private" / "pseudonym_key.csv", phantom_cohort / "truth",
                        workspace / "curated" / "images", workspace / "truth_labels")
    return workspace
