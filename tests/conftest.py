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


def heart_labels_from_truth(workspace: Path) -> list[str]:
    """``${paths.heart}/labels`` as ``python -m data_prep.heart_transfer`` writes it when ``labels_dir`` holds the
    pairs' contrast subjects, from the phantom's exact truth (a perfect transfer): for both subjects of every
    contrast/native pair, the six heart sub-part classes. Returns the subjects."""
    import numpy as np
    import SimpleITK as sitk

    from totalseg_train.heart_predictions import heart_class_ids
    from totalseg_train.images import nifti_path, write_image
    from totalseg_train.label_maps import read_label_map

    subjects = pd.read_csv(workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    contrast = subjects[(subjects.paired_subject_id != "") & (subjects.contrast_phase != "native")]
    written = []
    for subject_id in sorted([*contrast.subject_id, *contrast.paired_subject_id]):
        truth = read_label_map(nifti_path(workspace / "truth_labels", subject_id))
        heart = sitk.GetImageFromArray(np.where(np.isin(truth.array, heart_class_ids()), truth.array, 0).astype(np.uint8))
        heart.CopyInformation(truth.image)
        write_image(heart, nifti_path(workspace / "heart" / "labels", subject_id))
        written.append(subject_id)
    return written


@pytest.fixture(scope="session")
def heart_model(tmp_path_factory, coarse_cohort) -> dict:
    """``heart_tiny`` trained once for every heart test, as a user runs it (``python -m totalseg_train
    +experiment=heart_tiny``), on 30 phantom patients at the demo's grid (7 contrast/native pairs) with heart
    labels from ``heart_labels_from_truth``; no final validation (the test split is scored). Returns the
    workspace, the heart cohort, the command's output and the fixture's seconds."""
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    workspace = coarse_cohort(tmp_path_factory.mktemp("heart_ws"), 30)
    cohort = heart_labels_from_truth(workspace)
    run = subprocess.run([sys.executable, "-m", "totalseg_train", "+experiment=heart_tiny", f"paths.workspace={workspace}",
                          "device=cpu", "workers=1", "data_workers=0", "torch_threads=2", "model.seed=0",
                          "model.final_validation=false"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"ws": workspace, "cohort": cohort, "stdout": run.stdout, "seconds": time.perf_counter() - started}


@pytest.fixture(scope="session")
def apply_heart():
    """``apply_heart(workspace, *overrides)``: ``python -m data_prep.heart_transfer.apply`` with the heart_tiny model
    of ``workspace`` on the CPU; returns the finished process."""
    import subprocess
    import sys

    def run(workspace: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "data_prep.heart_transfer.apply", f"paths.workspace={workspace}",
                               f"model={workspace / 'results' / 'heart_tiny'}", "device=cpu", "workers=1",
                               "torch_threads=2", "progress=false", *extra], capture_output=True, text=True, cwd=REPO)

    return run


@pytest.fixture(scope="session")
def heart_applied(heart_model, apply_heart) -> dict:
    """The heart model applied to a table of four curated subjects: the test split's pair and two training
    subjects (apply takes any subjects table; the cohort's 33 subjects, a 597-slice whole-body scan among them,
    would take minutes on a CPU). Returns the table's path and subjects, the output folder and the output."""
    import json

    workspace = heart_model["ws"]
    split = json.loads((workspace / "nnunet" / "split_heart.json").read_text())
    chosen = sorted(sorted(split["test"]) + sorted(split["train"])[:2])
    subjects = pd.read_csv(workspace / "curated" / "subjects.csv", dtype=str, keep_default_na=False)
    table = workspace / "apply_subjects.csv"
    subjects[subjects.subject_id.isin(chosen)].to_csv(table, index=False)
    run = apply_heart(workspace, f"subjects_csv={table}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return {"ws": workspace, "table": table, "subjects": chosen, "out": workspace / "heart" / "predicted",
            "stdout": run.stdout}
